"""The embedding stage of the cluster-centroid method: which embeddings the loss sees, the warm
split, and the diagnostic that chooses the best stage-1 epoch.

Kept apart from the loop (``train/trainer.py``) because none of it concerns the baselines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from train.config import TrainConfig
from train.evaluate import clip_scores, per_class
from train.losses import ClusterCentroidLoss
from train.models import CNNClassifier, Network
from train.sequences import ClipAudio, SequenceBuilder, collate, collate_crops

__all__ = [
    "RESERVOIR_PER_CLASS",
    "SPLIT_CLIPS_PER_CLASS",
    "drain",
    "embeddings_for_fit",
    "fresh_mean_error",
    "mean_sample",
    "sample_frames",
]

RESERVOIR_PER_CLASS = 3000
"""Recent frame embeddings kept per class for the warm re-fits (bounded memory)."""
SPLIT_CLIPS_PER_CLASS = 400
"""Clips per class whose embeddings the split's k-means sees (all of them in smaller sets)."""
MEAN_CLIPS_PER_CLASS = 48
"""Training clips per class whose embeddings give the fresh class means of the diagnostic."""


def sample_frames(
    emb: torch.Tensor,
    targets: torch.Tensor,
    owners: Sequence[int],
    per_sequence: int,
    rng: np.random.Generator,
    pool: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_sequence`` frames per sequence whose target is the sequence's own class
    (the event class, or background for a background sequence): embeddings (N, E), targets (N,)."""
    rows, cols = [], []
    for b, own in enumerate(owners):
        frames = torch.nonzero(targets[b] == own).flatten().numpy()
        if len(frames) == 0:
            continue
        pick = rng.choice(frames, size=min(per_sequence, len(frames)), replace=False)
        rows += [b] * len(pick)
        cols += pick.tolist()
    r, c = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
    if pool:  # one embedding per sequence: the mean of its sampled frames
        sequences = r.unique()
        pooled = torch.stack([emb[r[r == b], c[r == b]].mean(0) for b in sequences.tolist()])
        return pooled, targets[sequences, c[torch.searchsorted(r, sequences)]]
    return emb[r, c], targets[r, c]


def drain(reservoir: dict[int, list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The reservoir's latest :data:`RESERVOIR_PER_CLASS` embeddings per class, and targets."""
    zs, ts = [], []
    for c, parts in reservoir.items():
        z = torch.cat(parts)[-RESERVOIR_PER_CLASS:]
        zs.append(z)
        ts.append(torch.full((len(z),), c, dtype=torch.long))
    return torch.cat(zs), torch.cat(ts)


@torch.no_grad()
def embeddings_for_fit(
    model: Network, builder: SequenceBuilder, config: TrainConfig, seed: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame embeddings of the current encoder over up to :data:`SPLIT_CLIPS_PER_CLASS` training
    clips of every class (all clips of smaller classes), as training sees them: what the split's
    k-means runs on."""
    opt = config.optim
    rng = np.random.default_rng([*seed, 7])
    by_class: dict[int, list[int]] = {}
    for i, item in enumerate(builder.clips):
        by_class.setdefault(item.target, []).append(i)
    picks = [
        int(i)
        for members in by_class.values()
        for i in rng.choice(members, size=min(len(members), SPLIT_CLIPS_PER_CLASS), replace=False)
    ]
    was_training = model.training
    model.eval()
    zs, ts = [], []
    for start in range(0, len(picks), opt.batch_size):
        chunk = picks[start : start + opt.batch_size]
        if isinstance(model, CNNClassifier):
            x, y = collate_crops([builder.crop(i, rng) for i in chunk])
            zs.append(model.embed(x))
            ts.append(y)
            continue
        x, y = collate([builder.build(i, rng) for i in chunk])
        emb, _, _ = model.embed(x)
        owners = [builder.clips[i].target for i in chunk]
        z, t = sample_frames(emb, y, owners, opt.embedding_frames, rng, opt.pool_embeddings)
        zs.append(z)
        ts.append(t)
    model.train(was_training)
    return torch.cat(zs), torch.cat(ts)


def mean_sample(items: Sequence[ClipAudio], seed: int) -> list[ClipAudio]:
    """A fixed sample of up to :data:`MEAN_CLIPS_PER_CLASS` training clips per class."""
    rng = np.random.default_rng([seed, 11])
    by_class: dict[int, list[ClipAudio]] = {}
    for item in items:
        by_class.setdefault(item.target, []).append(item)
    out: list[ClipAudio] = []
    for target in sorted(by_class):
        members = by_class[target]
        take = rng.choice(len(members), size=min(len(members), MEAN_CLIPS_PER_CLASS), replace=False)
        out += [members[int(i)] for i in sorted(take)]
    return out


def fresh_mean_error(
    model: Network,
    sample: Sequence[ClipAudio],
    val_embeddings: np.ndarray,
    val_targets: np.ndarray,
    config: TrainConfig,
    labels: Sequence[str],
    cluster_loss: ClusterCentroidLoss | None = None,
) -> dict[str, float]:
    """Validation nearest-class-mean error with class means of the *current* encoder.

    The class means come from a fixed sample of training clips embedded now (clip embedding =
    mean over active frames, as for the validation clips), so the diagnostic does not lag like
    the running centroids (which follow an encoder that moved during the epoch). With
    ``cluster_loss``, also the error of its running centroids, for comparison.
    """
    _, train_emb, train_y = clip_scores(model, sample, config)
    z = F.normalize(torch.from_numpy(train_emb), dim=1)
    y = torch.from_numpy(train_y)
    means = torch.stack(
        [
            F.normalize(z[y == c].mean(0), dim=0) if (y == c).any() else torch.zeros(z.shape[1])
            for c in range(len(labels))
        ]
    )
    val = F.normalize(torch.from_numpy(val_embeddings), dim=1)
    predicted = (val @ means.T).argmax(1).numpy()
    out = {"val_nearest_mean_error": per_class(val_targets, predicted, labels)["mean_error"]}
    if cluster_loss is not None:
        running = cluster_loss.predict(torch.from_numpy(val_embeddings)).numpy()
        out["val_nearest_centroid_error"] = per_class(val_targets, running, labels)["mean_error"]
    return out
