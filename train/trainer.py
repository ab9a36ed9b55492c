"""Training: one readable loop, validation every epoch, early stopping, checkpoints, resume.

The data (:mod:`train.splits`), the streaming sequences and their augmentation
(:mod:`train.sequences`), the evaluation (:mod:`train.evaluate`), the plots (:mod:`train.plots`)
and the embedding stage of the cluster method (:mod:`train.cluster_stage`) live in their own
modules; this one runs the epochs.

Methods: one stage (stage 0) for the baselines, a frame-level loss on the logits; two for
'cluster':

1. the embedding stage: :class:`train.losses.ClusterCentroidLoss` on frame embeddings, weighted
   so that every class counts equally; one centroid per class until ``optim.split_epochs``, then
   each class is split into K_c clusters by k-means on the warmed encoder; warm re-fits every
   ``optim.refresh_epochs``. It ends at ``optim.embed_epochs`` or when the validation
   nearest-class-mean error (fresh class means, :func:`train.cluster_stage.fresh_mean_error`)
   has not improved for ``optim.patience`` epochs, and the *best* stage-1 epoch is kept;
2. the classifier stage, started from that epoch: a cosine head initialised from the normalised
   centroids (``optim.cluster_head = "centroid"``), trained with the encoder fine-tuned and the
   centroid loss kept as an auxiliary term.

Every stage stops early after ``optim.patience`` epochs without a better validation score; all
stages together run at most ``optim.epochs`` (the same budget for every method).

The CNN (``model.kind = "cnn"``) is clip-level: the same loop, losses, checkpoints, metrics and
plots, but each example is one fixed-length crop of a clip with one label, and evaluation scores
the whole clip. It has no frame scores, so no streaming metrics or detection thresholds.

Every random draw of epoch ``e`` comes from generators seeded by ``(seed, e)``, so a resumed run
gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edge_detect.errors import DatasetError
from train.background_bank import sequence_builder, validation_negatives
from train.checkpoint import save_checkpoint
from train.cluster_stage import (
    drain,
    embeddings_for_fit,
    fresh_mean_error,
    mean_sample,
    sample_frames,
)
from train.config import TrainConfig
from train.distributed import agree, broadcast_state, distributed, same_centroids
from train.evaluate import (
    band_check,
    clip_scores,
    detection_defaults,
    evaluate_clips,
    evaluate_stream,
    predict,
)
from train.losses import (
    ClusterCentroidLoss,
    PooledEvents,
    check_finite,
    class_balanced_weights,
    classification_loss,
    inverse_frequency_weights,
)
from train.mining import mining_round, ramp_hard_negatives
from train.models import CentroidHead, CNNClassifier, Network, build_model
from train.plots import embedding_plot, training_plots
from train.run_state import (
    BEST_NAME,
    LAST_NAME,
    RunResult,
    RunState,
    copy_state,
    json_default,
    lr_factor,
    payload,
    resume_state,
    save_last,
)
from train.sequences import (
    IGNORE,
    collate,
    collate_crops,
    feature_stats,
    spec_augment,
)
from train.splits import Dataset, load_dataset

__all__ = ["BEST_NAME", "LAST_NAME", "RunResult", "train"]

log = logging.getLogger(__name__)

VAL_SEQUENCE_SEED = 12345
LONG_BACKGROUND = -1
"""Index of a long event-free sequence in an epoch's order (clips have indices >= 0)."""
FEATURE_STATS_SEQUENCES = 300
"""Training sequences whose features give the model's per-band normalisation statistics."""


def _optimiser(model: Network, config: TrainConfig, stage: int) -> torch.optim.Optimizer:
    opt = config.optim
    encoder = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    head = list(model.classifier.parameters())
    if stage == 0:
        groups = [{"params": encoder + head, "lr": opt.lr, "scale": 1.0}]
    elif stage == 1:
        groups = [{"params": encoder, "lr": opt.lr, "scale": 1.0}]
    else:
        groups = [
            {"params": encoder, "lr": opt.lr * opt.encoder_lr_scale, "scale": opt.encoder_lr_scale},
            {"params": head, "lr": opt.lr, "scale": 1.0},
        ]
    return torch.optim.AdamW(groups, lr=opt.lr, weight_decay=opt.weight_decay)


class _EmbedAndClassify(torch.nn.Module):
    """One forward that returns embeddings and logits, so DistributedDataParallel sees every
    parameter used by the loss (its gradient hooks need the wrapper's forward)."""

    def __init__(self, model: Network) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM: (B, T, E) and (B, T, C); CNN: (B, E) and (B, C)."""
        if isinstance(self.model, CNNClassifier):
            emb = self.model.embed(x)
        else:
            emb, _, _ = self.model.embed(x)
        return emb, self.model.classifier(self.model.dropout(emb))


def _setup(config: TrainConfig, data: Dataset, rank: int, world: int, run_dir: Path) -> RunState:
    """Sequences, model, losses and the first stage of a run."""
    opt = config.optim
    bg = data.background_index
    train_items, val_items = data.parts["train"], data.parts["val"]
    if not val_items:
        raise DatasetError("the validation split is empty; raise data.val_fraction")
    train_backgrounds = [c for c in train_items if c.target == bg]
    val_backgrounds = [c for c in val_items if c.target == bg] or train_backgrounds
    # background clips, or the shipped background features when a folder has none
    builder = sequence_builder(config, train_items, train_backgrounds, bg, part="train")
    val_builder = sequence_builder(config, val_items, val_backgrounds, bg, part="val")
    val_rng = np.random.default_rng(VAL_SEQUENCE_SEED)
    val_sequences = [val_builder.build(i, val_rng, augment=False) for i in range(len(val_items))]
    val_owner = [item.target for item in val_items]
    negatives = validation_negatives(val_builder, val_rng)  # shipped background: none else
    val_sequences, val_owner = val_sequences + negatives, val_owner + [bg] * len(negatives)
    counts = data.counts("train")
    log.info("training clips per class: %s", dict(zip(data.labels, counts, strict=True)))

    torch.manual_seed(opt.seed)
    cluster_loss = None
    model_config = config.model
    if opt.method == "cluster":
        cluster_loss = ClusterCentroidLoss(
            counts,
            config.model.embedding_dim,
            temperature=opt.temperature,
            margin=opt.margin,
            decay=opt.centroid_decay,
            labels=data.labels,
            seed=opt.seed,
            split=opt.split,
        )
        if opt.cluster_head == "centroid":
            model_config = dataclasses.replace(
                model_config, head="centroid", head_clusters=list(cluster_loss.k_per_class)
            )
    model = build_model(model_config)
    clip_level = isinstance(model, CNNClassifier)
    mean, std, frame_counts = feature_stats(
        builder, min(FEATURE_STATS_SEQUENCES, len(train_items)), opt.seed, len(data.labels)
    )
    model.norm.set_stats(mean, std)
    log.info("labelled training frames per class (sample): %s", frame_counts)
    # frame-level losses see frames, so their class weights and priors come from frame counts;
    # the CNN's see clips: every event clip and background_per_epoch background clips an epoch
    seen = list(counts)
    if opt.background_per_epoch:
        seen[bg] = min(seen[bg], opt.background_per_epoch)
    frame_loss = classification_loss(
        opt.classifier_loss if opt.method == "cluster" else opt.method,
        seen if clip_level else frame_counts,
        focal_gamma=opt.focal_gamma,
        logit_tau=opt.logit_tau,
        output=model_config.output,
        hard_negatives=(
            (bg, opt.hard_negative_fraction, opt.hard_negative_weight)
            if opt.hard_negative_weight > 0
            else None
        ),
        weight_power=opt.class_weight_power,
    )
    if opt.event_top_frames and not clip_level:
        frame_loss = PooledEvents(
            len(data.labels),
            bg,
            top_frames=opt.event_top_frames,
            weight=(
                inverse_frequency_weights(frame_counts, opt.class_weight_power)
                if (opt.classifier_loss if opt.method == "cluster" else opt.method) == "weighted_ce"
                else None
            ),
            hard_fraction=opt.hard_negative_fraction,
            hard_weight=opt.hard_negative_weight,
        )
    net: torch.nn.Module = _EmbedAndClassify(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    loop = RunState(
        config=config,
        data=data,
        model=model,
        net=net,
        builder=builder,
        val_sequences=val_sequences,
        val_owner=val_owner,
        frame_loss=frame_loss,
        cluster_loss=cluster_loss,
        mean_clips=mean_sample(train_items, opt.seed) if cluster_loss is not None else [],
        rank=rank,
        world=world,
        run_dir=run_dir,
        stage=1 if cluster_loss is not None else 0,
    )
    loop.optimiser = _optimiser(model, config, loop.stage)
    return loop


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    out_dir: Path | None = None,
    time_limit_s: float | None = None,
) -> RunResult:
    """Train, validate every epoch, write checkpoints, metrics.json and plots into the run folder.

    Parameters
    ----------
    resume : continue from ``<run>/checkpoint_last.pt`` (the config must match, except
        ``optim.epochs``).
    time_limit_s : stop after the epoch that passes this wall time (the best epoch is kept).
    """
    opt = config.optim
    torch.set_num_threads(opt.num_threads)
    rank, world = distributed()
    run_dir = out_dir or config.resolve(opt.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = load_dataset(config, progress=progress)
    loop = _setup(config, data, rank, world, run_dir)
    start_epoch = 0
    if resume:
        start_epoch = _resume(loop, run_dir)
    elif loop.cluster_loss is not None:  # one centroid per class at the class means
        loop.cluster_loss.fit(*embeddings_for_fit(loop.model, loop.builder, config, (opt.seed,)))
        same_centroids(loop.cluster_loss, world)
        if opt.split and opt.split_epochs == 0:  # split the untrained encoder (the old way)
            loop.cluster_loss.split(
                *embeddings_for_fit(loop.model, loop.builder, config, (opt.seed, 1))
            )
            same_centroids(loop.cluster_loss, world)

    epoch = start_epoch
    for epoch in range(start_epoch, opt.epochs):
        # decided at the start of an epoch, from saved state, so a resumed run decides the same
        if loop.stage == 1 and agree(rank == 0 and _embedding_stage_over(loop, epoch), world):
            _start_classifier_stage(loop, epoch)
        mining_round(loop, epoch)
        ramp_hard_negatives(loop, epoch)
        losses = _train_epoch(loop, epoch, progress)
        _maintain_clusters(loop, epoch)
        stop = agree(time_limit_s is not None and time.monotonic() - started > time_limit_s, world)
        if rank == 0:
            record = _validate(loop, epoch, losses, time.monotonic() - started)
            _track_best(loop, record)
            save_last(loop, run_dir, epoch)
        patience_over = rank == 0 and loop.stage != 1 and _out_of_patience(loop)
        if stop:
            log.warning("time limit of %.0f s reached after epoch %d", time_limit_s, epoch + 1)
        if stop or agree(patience_over, world):
            break
    return _finish(loop, run_dir, epoch, started)


def _train_epoch(loop: RunState, epoch: int, progress: bool) -> list[float]:
    """One epoch of the current stage; the per-batch losses."""
    opt = loop.config.optim
    assert loop.optimiser is not None
    items = loop.data.parts["train"]
    bg = loop.data.background_index
    background_clips = [i for i, c in enumerate(items) if c.target == bg]
    event_clips = [i for i, c in enumerate(items) if c.target != bg]
    rng = np.random.default_rng([opt.seed, epoch])
    torch.manual_seed(opt.seed * 100_003 + epoch)
    per_epoch_bg = min(opt.background_per_epoch or len(background_clips), len(background_clips))
    weights = loop.background_weights
    chosen = rng.choice(
        background_clips,
        size=per_epoch_bg,
        replace=False,
        p=None if weights is None else weights / weights.sum(),
    )
    order = event_clips + [int(i) for i in chosen]
    order = [order[i] for i in rng.permutation(len(order))]
    # every rank takes every world-th sequence; equal counts keep the ranks in step
    order = order[: len(order) // loop.world * loop.world][loop.rank :: loop.world]
    batches = [order[a : a + opt.batch_size] for a in range(0, len(order), opt.batch_size)]
    if loop.stream_model is not None:  # long event-free sequences, in batches of their own
        long_batch = loop.long_batch_size()
        count = loop.config.augment.background_seq_per_epoch // loop.world
        longs = [LONG_BACKGROUND] * (count // long_batch * long_batch)
        batches += [longs[a : a + long_batch] for a in range(0, len(longs), long_batch)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
    rng = np.random.default_rng([opt.seed, epoch, loop.rank])  # augmentation differs per rank
    loop.model.train()
    clip_level = isinstance(loop.model, CNNClassifier)
    cluster_loss = loop.cluster_loss
    if cluster_loss is not None:
        cluster_loss.train()
    stage_steps = loop.budget() * loop.batches_per_epoch()
    warmup = max(1, min(opt.warmup_steps, stage_steps // 4))
    losses: list[float] = []
    bar = _bar(batches, progress, f"epoch {epoch + 1}/{opt.epochs}")
    for b_index, chunk in enumerate(bar):
        if clip_level:
            x, y = collate_crops([loop.builder.crop(i, rng) for i in chunk])
        else:
            x, y = collate([_sequence(loop, i, rng) for i in chunk])
            spec_augment(x, loop.model.norm.mean, loop.config, rng)
        in_stage = (epoch - loop.stage_start) * loop.batches_per_epoch() + b_index
        factor = lr_factor(in_stage, stage_steps, warmup)
        for group in loop.optimiser.param_groups:
            group["lr"] = opt.lr * group["scale"] * factor
        emb, logits = loop.net(x)  # (B, T, E), (B, T, C); the CNN: (B, E), (B, C)
        where = f"{b_index} of epoch {epoch + 1}"
        check_finite(emb, "an embedding", step=loop.step, batch=where)
        mask = y != IGNORE
        if loop.stage != 1 and getattr(loop.frame_loss, "sequence_level", False):
            loss = loop.frame_loss(logits, y)  # whole sequences (PooledEvents)
        elif loop.stage != 1:
            loss = loop.frame_loss(logits[mask], y[mask])
        else:  # the classifier waits; zero keeps its parameters in DDP's graph
            loss = 0.0 * logits.sum()
        if cluster_loss is not None and (loop.stage == 1 or opt.aux_weight > 0):
            owners = [items[i].target if i != LONG_BACKGROUND else bg for i in chunk]
            z, t = (
                (emb, y)
                if clip_level
                else sample_frames(emb, y, owners, opt.embedding_frames, rng, opt.pool_embeddings)
            )
            balance = (
                class_balanced_weights(t, len(loop.data.labels)) if opt.balance_classes else None
            )
            weight = 1.0 if loop.stage == 1 else opt.aux_weight
            loss = loss + weight * cluster_loss(z, t, balance, step=loop.step, batch=b_index)
            for c in t.unique().tolist():
                loop.reservoir.setdefault(c, []).append(z[t == c].detach())
        check_finite(loss, "the loss", step=loop.step, batch=where)
        loop.optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), opt.grad_clip)
        loop.optimiser.step()
        losses.append(loss.item())
        loop.step += 1
        if progress and hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return losses


def _sequence(
    loop: RunState, index: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Training sequence ``index`` of the epoch: around a clip, or a long event-free one."""
    if index == LONG_BACKGROUND:
        return loop.builder.build_background(rng, loop.config.augment.background_seq_s)
    return loop.builder.build(index, rng)


def _maintain_clusters(loop: RunState, epoch: int) -> None:
    """The split once the encoder is warm, warm re-fits every ``refresh_epochs``."""
    cluster_loss, opt = loop.cluster_loss, loop.config.optim
    reservoir = loop.reservoir
    if cluster_loss is None:
        return
    if loop.stage == 1 and opt.split and not bool(cluster_loss.is_split):
        if epoch + 1 >= min(opt.split_epochs, opt.embed_epochs):
            z, t = embeddings_for_fit(loop.model, loop.builder, loop.config, (opt.seed, epoch))
            cluster_loss.split(z, t)
            same_centroids(cluster_loss, loop.world)
            log.info(
                "epoch %d: classes split into %s clusters", epoch + 1, cluster_loss.k_per_class
            )
            loop.split_epoch = epoch + 1
            loop.best_embedding = {"score": math.inf}  # only split epochs compete from here
            loop.bad_epochs = 0
    elif (epoch + 1) % opt.refresh_epochs == 0 and reservoir:
        cluster_loss.fit(*drain(reservoir))
        same_centroids(cluster_loss, loop.world)
    reservoir.clear()


def _validate(loop: RunState, epoch: int, losses: list[float], elapsed_s: float) -> dict[str, Any]:
    """Validation metrics of the epoch, and the score the stage is judged by (lower is better)."""
    config, labels = loop.config, loop.data.labels
    val_items = loop.data.parts["val"]
    clip_metrics, clip_emb, clip_y = evaluate_clips(loop.model, val_items, config, labels)
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "stage": loop.stage,
        "train_loss": float(np.mean(losses)) if losses else math.nan,
        "val_clip_error": clip_metrics["mean_error"],
        "val_clip_per_class_error": clip_metrics["per_class_error"],
    }
    score = clip_metrics["mean_error"]
    if loop.stream_model is not None:
        stream_metrics, _ = evaluate_stream(
            loop.stream_model,
            loop.val_sequences,
            loop.val_owner,
            labels,
            loop.data.background_index,
            config,
        )
        score = 0.5 * (clip_metrics["mean_error"] + stream_metrics["mean_error"])
        if config.optim.select_by == "low_fp":
            score = stream_metrics["miss_at_low_fp"]
        record["val_frame_error"] = stream_metrics["mean_error"]
        record["val_miss_at_low_fp"] = stream_metrics["miss_at_low_fp"]
    if loop.cluster_loss is not None:
        record.update(
            fresh_mean_error(
                loop.model, loop.mean_clips, clip_emb, clip_y, config, labels, loop.cluster_loss
            )
        )
        if loop.stage == 1:  # the embedding stage is judged by its own readout
            score = record["val_nearest_mean_error"]
    record["val_score"] = score
    record["split"] = loop.split_epoch == epoch + 1
    if loop.mined is not None and loop.mined["epoch"] == epoch:
        record["mining"] = loop.mined
    record["elapsed_s"] = round(elapsed_s, 1)
    loop.history.append(record)
    log.info(
        "epoch %d: %s", epoch + 1, {k: v for k, v in record.items() if not isinstance(v, dict)}
    )
    opt = config.optim
    # the embedding stage is drawn every epoch: its evolution, before and after the split
    if (
        loop.stage == 1
        or epoch == 0
        or (epoch + 1) % opt.plot_every == 0
        or epoch + 1 == opt.epochs
    ):
        clusters = (
            loop.cluster_loss.assign(torch.from_numpy(clip_emb), torch.from_numpy(clip_y)).numpy()
            if loop.cluster_loss is not None
            else None
        )
        embedding_plot(
            loop.run_dir / f"embedding_epoch{epoch + 1:03d}.png",
            clip_emb,
            clip_y,
            clusters,
            labels,
            f"val clips, epoch {epoch + 1} (stage {loop.stage})",
        )
    return record


def _track_best(loop: RunState, record: dict[str, Any]) -> None:
    """Keep the stage's best epoch; count the epochs since it."""
    score = record["val_score"]
    if loop.stage == 1:
        split_pending = (
            loop.config.optim.split
            and loop.cluster_loss is not None
            and not bool(loop.cluster_loss.is_split)
        )
        if split_pending:  # before the split nothing competes for the best stage-1 epoch
            return
        if score < loop.best_embedding["score"]:
            assert loop.cluster_loss is not None
            loop.best_embedding = {
                "score": score,
                "epoch": record["epoch"],
                "model_state": copy_state(loop.model.state_dict()),
                "cluster_state": copy_state(loop.cluster_loss.state_dict()),
            }
            loop.bad_epochs = 0
        else:
            loop.bad_epochs += 1
        return
    if score < loop.best["score"]:
        loop.best = {
            "score": score,
            "epoch": record["epoch"],
            "model_state": copy_state(loop.model.state_dict()),
        }
        loop.bad_epochs = 0
    else:
        loop.bad_epochs += 1


def _out_of_patience(loop: RunState) -> bool:
    """Has the current stage gone ``optim.patience`` epochs without a better score?"""
    patience = loop.config.optim.patience
    return bool(patience) and loop.bad_epochs >= patience


def _embedding_stage_over(loop: RunState, epoch: int) -> bool:
    """Rank 0's view at the start of ``epoch``: has the embedding stage used its budget or run
    out of patience (counted from the split)?"""
    return epoch >= loop.config.optim.embed_epochs or _out_of_patience(loop)


def _start_classifier_stage(loop: RunState, epoch: int) -> None:
    """Stage 2 from the best stage-1 epoch: its weights and centroids, the head from them."""
    cluster_loss, opt = loop.cluster_loss, loop.config.optim
    assert cluster_loss is not None
    if loop.rank == 0 and "model_state" in loop.best_embedding:
        loop.model.load_state_dict(loop.best_embedding["model_state"])
        cluster_loss.load_state_dict(loop.best_embedding["cluster_state"])
        log.info(
            "classifier stage from embedding epoch %d (val nearest-mean error %.3f)",
            loop.best_embedding["epoch"],
            loop.best_embedding["score"],
        )
    broadcast_state(loop.model, cluster_loss, loop.world)
    if opt.split and not bool(cluster_loss.is_split):  # the stage ended before the split
        z, t = embeddings_for_fit(loop.model, loop.builder, loop.config, (opt.seed, epoch))
        cluster_loss.split(z, t)
        same_centroids(cluster_loss, loop.world)
    if isinstance(loop.model.classifier, CentroidHead):
        loop.model.classifier.init_from(*cluster_loss.directions(), opt.temperature)
    loop.stage, loop.stage_start, loop.bad_epochs = 2, epoch, 0
    loop.optimiser = _optimiser(loop.model, loop.config, 2)


def _resume(loop: RunState, run_dir: Path) -> int:
    """Restore the loop from ``checkpoint_last.pt``; the first epoch still to run."""
    state = resume_state(run_dir / LAST_NAME, loop.config)
    saved = state["resume"]
    loop.model.load_state_dict(state["model_state"])
    loop.stage, loop.stage_start = saved["stage"], saved["stage_start"]
    loop.optimiser = _optimiser(loop.model, loop.config, loop.stage)
    loop.optimiser.load_state_dict(saved["optimizer_state"])
    if loop.cluster_loss is not None:
        loop.cluster_loss.load_state_dict(saved["cluster_loss"])
        loop.cluster_loss.fits = saved["cluster_fits"]
    loop.history, loop.best = saved["history"], saved["best"]
    loop.best_embedding, loop.bad_epochs = saved["best_embedding"], saved["bad_epochs"]
    loop.split_epoch = saved["split_epoch"]
    loop.background_weights = saved["background_weights"]
    loop.builder.set_background_weights(loop.background_weights)
    loop.step = saved["step"]
    log.info("resuming %s after epoch %d", run_dir, saved["epoch"])
    return int(saved["epoch"])


def _finish(loop: RunState, run_dir: Path, epoch: int, started: float) -> RunResult:
    """The best epoch's model: final metrics, test metrics, checkpoint, metrics.json, plots."""
    config, data = loop.config, loop.data
    labels, bg = data.labels, data.background_index
    if loop.world > 1:  # each rank's final weights and centroids, to check that they agree
        cluster_state = loop.cluster_loss.state_dict() if loop.cluster_loss is not None else None
        torch.save(
            {"model_state": loop.model.state_dict(), "cluster_loss": cluster_state},
            run_dir / f"rank{loop.rank}_final.pt",
        )
        if loop.rank != 0:
            return RunResult(run_dir, run_dir / BEST_NAME)
    best = loop.best
    if "model_state" not in best:  # e.g. time ran out during the embedding stage
        best = {"score": math.inf, "epoch": epoch + 1, "model_state": loop.model.state_dict()}
    loop.model.load_state_dict(best["model_state"])
    val_items = data.parts["val"]
    clip_val, _, _ = evaluate_clips(loop.model, val_items, config, labels)
    metrics: dict[str, Any] = {
        "method": config.optim.method,
        "model": config.model.kind,
        "best_epoch": best["epoch"],
        "epochs_run": len(loop.history),
        "val": {"clip": clip_val},
        "band_check": band_check(loop.model, data, config),
    }
    if "epoch" in loop.best_embedding:
        metrics["best_embedding_epoch"] = loop.best_embedding["epoch"]
    if loop.split_epoch:
        metrics["split_epoch"] = loop.split_epoch
    extra: dict[str, Any] = {}
    stream_model = loop.stream_model
    if stream_model is not None:  # detection thresholds come from the frame scores of the stream
        owners = loop.val_owner
        stream_val, val_scores = evaluate_stream(
            stream_model, loop.val_sequences, owners, labels, bg, config
        )
        extra["detection"] = detection_defaults(
            val_scores, owners, labels, bg, config.features.hop_ms
        )
        metrics["val"]["stream"] = stream_val
    test_items = data.parts["test"]
    test_clips: list[dict[str, Any]] = []
    if test_items:
        metrics["test"] = _test_metrics(loop)
        test_probs, _, _ = clip_scores(loop.model, test_items, config)
        test_clips = [
            {
                "group": item.clip.group,
                "source": item.clip.source,
                "target": item.target,
                "pred": int(predict(p[None], config.model.output, bg)[0]),
                "probs": [round(float(v), 5) for v in p],
            }
            for item, p in zip(test_items, test_probs, strict=True)
        ]
    metrics["wall_time_s"] = round(time.monotonic() - started, 1)
    checkpoint = run_dir / BEST_NAME
    sha = save_checkpoint(
        checkpoint, payload(loop, loop.model.state_dict(), metrics=metrics, **extra)
    )
    metrics["checkpoint_sha256"] = sha
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "history": loop.history,
                **metrics,
                "data": data.provenance,
                "config": config.to_dict(),
            },
            indent=2,
            default=json_default,
        )
        + "\n",
        encoding="utf-8",
    )
    confusions = {"val": clip_val["confusion"]}
    if "test" in metrics:
        confusions["test"] = metrics["test"]["clip"]["confusion"]
    training_plots(run_dir, loop.history, labels, confusions)
    log.info(
        "best epoch %d; val clip per-class error %s; checkpoint %s",
        best["epoch"],
        clip_val["per_class_error"],
        checkpoint,
    )
    return RunResult(run_dir, checkpoint, metrics, test_clips)


def _test_metrics(loop: RunState) -> dict[str, Any]:
    """Clip metrics on the test split, and frame metrics on its streaming sequences (LSTM)."""
    config, data = loop.config, loop.data
    labels, bg = data.labels, data.background_index
    test_items = data.parts["test"]
    clip_test, _, _ = evaluate_clips(loop.model, test_items, config, labels)
    out: dict[str, Any] = {"clip": clip_test}
    if loop.stream_model is not None:
        val_backgrounds = [c for c in data.parts["val"] if c.target == bg]
        test_bgs = [c for c in test_items if c.target == bg] or val_backgrounds
        test_builder = sequence_builder(config, test_items, test_bgs, bg, part="val")
        test_rng = np.random.default_rng(VAL_SEQUENCE_SEED + 1)
        test_sequences = [
            test_builder.build(i, test_rng, augment=False) for i in range(len(test_items))
        ]
        out["stream"], _ = evaluate_stream(
            loop.stream_model, test_sequences, [c.target for c in test_items], labels, bg, config
        )
    return out


def _bar(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
