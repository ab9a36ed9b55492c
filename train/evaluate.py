"""Evaluation during training: clip-level errors and AUC, frame metrics on streaming
sequences, detection thresholds, and the bandwidth-shortcut check."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edge_detect.detect import ClassDetection
from edge_detect.features import log_mel
from edge_detect.operating import CURVE_THRESHOLDS, replay_events, with_threshold
from train.config import TrainConfig
from train.models import CNNClassifier, Network, StreamingLSTM, probabilities
from train.sequences import IGNORE, ClipAudio, collate, crop_frames
from train.splits import Dataset

__all__ = [
    "auc",
    "band_check",
    "causal_mean",
    "clip_scores",
    "detection_defaults",
    "evaluate_clips",
    "evaluate_stream",
    "per_class",
    "predict",
    "stream_scores",
]

SMOOTHING_MS = ClassDetection().smoothing_ms
"""Moving average applied to frame scores (the runtime's default smoothing)."""
LOW_FALSE_POSITIVE = 0.01
"""Share of the other sequences allowed to reach a class's threshold in ``miss_at_low_fp``."""
EVAL_BATCH = 64
"""Sequences scored together."""
FALSE_ALARM_WEIGHT = 2.0
"""Threshold choice maximises detected - FALSE_ALARM_WEIGHT * false-alarm share of sequences:
in a stream a false alarm costs more than a late or missed event of a rare class."""


def auc(scores: npt.NDArray[Any], positive: npt.NDArray[np.bool_]) -> float:
    """ROC-AUC by ranks (ties averaged); NaN when one side is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def per_class(
    true: npt.NDArray[np.int64], pred: npt.NDArray[np.int64], labels: Sequence[str]
) -> dict[str, Any]:
    """Confusion matrix, per-class error and overall error of clip predictions."""
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    support = confusion.sum(1)
    error = {
        label: (1.0 - confusion[i, i] / support[i]) if support[i] else float("nan")
        for i, label in enumerate(labels)
    }
    valid = [e for e in error.values() if not math.isnan(e)]
    return {
        "per_class_error": error,
        "mean_error": float(np.mean(valid)) if valid else float("nan"),
        "confusion": confusion.tolist(),
        "support": support.tolist(),
    }


@torch.no_grad()
def evaluate_clips(
    model: Network, items: Sequence[ClipAudio], config: TrainConfig, labels: Sequence[str]
) -> tuple[dict[str, Any], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Each clip alone from a zero state; clip score = mean frame probability over active frames
    (the CNN: its score of the whole clip, padded to at least one training crop).

    Returns metrics, clip embeddings (N, E) (mean over active frames) and targets (N,).
    """
    p_all, embeddings, y = clip_scores(model, items, config)
    background = labels.index(config.data.background_label)
    metrics = per_class(y, predict(p_all, model.config.output, background), labels)
    metrics["auc"] = {label: auc(p_all[:, i], y == i) for i, label in enumerate(labels)}
    return metrics, embeddings, y


@torch.no_grad()
def clip_scores(
    model: Network, items: Sequence[ClipAudio], config: TrainConfig
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Clip probabilities (N, C), clip embeddings (N, E) and targets (N,) (see evaluate_clips)."""
    model.eval()
    probs, embeddings, targets = [], [], []
    for item in items:
        feats = log_mel(item.audio, config.features)
        if len(feats) == 0:
            feats = log_mel(
                np.pad(item.audio, (0, config.features.window_samples)), config.features
            )
        x = torch.from_numpy(feats)[None]
        if isinstance(model, CNNClassifier):
            minimum = crop_frames(config)
            if len(feats) < minimum:  # as in training: the clip at the start of silence
                silence = log_mel(np.zeros(config.features.window_samples), config.features)
                x = torch.cat(
                    [x, torch.from_numpy(silence[:1])[None].expand(1, minimum - len(feats), -1)], 1
                )
            clip_emb = model.embed(x)  # (1, E)
            probs.append(probabilities(model.classifier(clip_emb), model.config.output)[0].numpy())
            embeddings.append(clip_emb[0].numpy())
            targets.append(item.target)
            continue
        emb, _, _ = model.embed(x)
        p = probabilities(model.classifier(emb), model.config.output)[0]  # (T, C)
        active = torch.from_numpy(np.resize(item.active, len(feats)))
        if not active.any():
            active[:] = True
        probs.append(p[active].mean(0).numpy())
        embeddings.append(emb[0][active].mean(0).numpy())
        targets.append(item.target)
    return np.stack(probs), np.stack(embeddings), np.asarray(targets, dtype=np.int64)


def predict(
    probs: npt.NDArray[np.floating[Any]], output: str, background_index: int
) -> npt.NDArray[np.int64]:
    """The class of each row of probabilities (N, C): the most probable one for a softmax; for
    one-vs-rest (sigmoid) scores, the most probable event class where it reaches 0.5, else
    background (the background column is one probability among others, not the rest)."""
    if output != "sigmoid":
        return np.asarray(probs.argmax(1), dtype=np.int64)
    events = np.asarray(probs, dtype=np.float64).copy()
    events[:, background_index] = -np.inf
    best = events.argmax(1)
    return np.where(events.max(1) >= 0.5, best, background_index).astype(np.int64)


def causal_mean(scores: npt.NDArray[np.float32], frames: int) -> npt.NDArray[np.float64]:
    """Trailing moving average of ``frames`` over axis 0 of (T, C) scores, over the frames seen
    so far at the start: the runtime's smoothing (:class:`edge_detect.detect.ClassDetector`)."""
    x = np.asarray(scores, dtype=np.float64)
    total = np.cumsum(x, axis=0)
    total[frames:] = total[frames:] - total[:-frames]
    seen = np.minimum(np.arange(1, len(x) + 1), frames)[:, None]
    return total / seen


@torch.no_grad()
def stream_scores(
    model: StreamingLSTM,
    sequences: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]],
) -> list[npt.NDArray[np.float32]]:
    """Frame probabilities (T, C) of every sequence, each from a zero state."""
    model.eval()
    out = []
    for start in range(0, len(sequences), EVAL_BATCH):
        chunk = sequences[start : start + EVAL_BATCH]
        x, _ = collate(chunk)
        logits, _, _ = model(x)
        p = probabilities(logits, model.config.output).numpy()  # (B, T, C)
        out += [p[b, : len(feats)] for b, (feats, _) in enumerate(chunk)]
    return out


def evaluate_stream(
    model: StreamingLSTM,
    sequences: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]],
    event_class: Sequence[int],
    labels: Sequence[str],
    background_index: int,
    config: TrainConfig,
) -> tuple[dict[str, Any], list[npt.NDArray[np.float32]]]:
    """Frame-level metrics on background-event-background sequences, and how well each class
    is found when false detections must stay rare; also the sequences' scores.

    Per event class: the peak of its smoothed score (runtime smoothing, ``SMOOTHING_MS``) on
    every sequence; the threshold that only ``LOW_FALSE_POSITIVE`` of the *other* sequences
    reach; and the share of the class's own sequences that stay below it
    (``miss_at_low_fp``, with its mean over classes): what a detector that must not cry wolf
    finds, the validation score of ``optim.select_by = "low_fp"``. Also the peaks' ROC-AUC.
    """
    scores = stream_scores(model, sequences)
    targets = np.concatenate([t for _, t in sequences])
    output = model.config.output
    predicted = np.concatenate([predict(p, output, background_index) for p in scores])
    keep = targets != IGNORE
    metrics = per_class(targets[keep], predicted[keep], labels)
    smooth = max(1, round(SMOOTHING_MS / config.features.hop_ms))
    peak = np.stack([causal_mean(p, smooth).max(0) for p in scores])  # (S, C)
    owner = np.asarray(event_class)
    low_fp: dict[str, float] = {}
    for c, label in enumerate(labels):
        if c == background_index:
            continue
        positive = owner == c
        if not positive.any() or positive.all():
            continue
        threshold = float(np.quantile(peak[~positive, c], 1.0 - LOW_FALSE_POSITIVE))
        low_fp[label] = float((peak[positive, c] <= threshold).mean())
        metrics.setdefault("sequence_detection", {})[label] = {
            "threshold_at_low_fp": round(threshold, 4),
            "miss_at_low_fp": round(low_fp[label], 4),
            "auc": auc(peak[:, c], positive),
        }
    metrics["miss_at_low_fp"] = float(np.mean(list(low_fp.values()))) if low_fp else math.nan
    return metrics, scores


def detection_defaults(
    scores: Sequence[npt.NDArray[np.float32]],
    event_class: Sequence[int],
    labels: Sequence[str],
    background_index: int,
    hop_ms: float,
) -> dict[str, dict[str, Any]]:
    """Detection settings per class to ship with a checkpoint (``edge-detect calibrate`` later
    chooses them for a false-alarm target on a validation stream).

    The runtime's own state machine is replayed on every sequence's scores
    (:func:`edge_detect.operating.replay_events`): each class keeps the default
    :class:`~edge_detect.detect.ClassDetection` and the ``threshold_on`` of
    :data:`~edge_detect.operating.CURVE_THRESHOLDS` that maximises (share of its sequences with
    an event) - ``FALSE_ALARM_WEIGHT`` x (share of the other sequences with one), in a stream a
    false alarm costing more than a late or missed event (of several equally good thresholds,
    the middle one).
    """
    owner = np.asarray(event_class)
    out: dict[str, dict[str, Any]] = {}
    for c, label in enumerate(labels):
        if c == background_index:
            out[label] = ClassDetection(enabled=False).to_dict()
            continue
        positive = owner == c
        gains = []
        for threshold in CURVE_THRESHOLDS:
            setting = with_threshold(ClassDetection(), threshold)
            fired = np.array([bool(replay_events(p[:, c], label, setting, hop_ms)) for p in scores])
            tpr = float(fired[positive].mean()) if positive.any() else 0.0
            fpr = float(fired[~positive].mean()) if (~positive).any() else 0.0
            gains.append(tpr - FALSE_ALARM_WEIGHT * fpr)
        # the middle of the best thresholds: a plateau's edge is where the next clip tips over
        best = [t for t, gain in zip(CURVE_THRESHOLDS, gains, strict=True) if gain == max(gains)]
        out[label] = with_threshold(ClassDetection(), best[len(best) // 2]).to_dict()
    return out


def band_check(model: Network, data: Dataset, config: TrainConfig) -> dict[str, Any]:
    """Recall of held-out cries by bandwidth: 8 kHz phone recordings vs full-band ones.

    The corpus marks band-limited sources in its ``notes`` ("no content above 4 kHz").
    """
    items = [c for part in ("val", "test") for c in data.parts[part]]
    cry = [c for c in items if data.labels[c.target] == "baby_cry"]
    out: dict[str, Any] = {}
    for name, keep in (
        ("band_limited", lambda c: "4 kHz" in c.clip.extra.get("notes", "")),
        ("full_band", lambda c: "4 kHz" not in c.clip.extra.get("notes", "")),
    ):
        chosen = [c for c in cry if keep(c)]
        if chosen:
            metrics, _, _ = evaluate_clips(model, chosen, config, data.labels)
            out[name] = {
                "clips": len(chosen),
                "recall": 1.0 - metrics["per_class_error"]["baby_cry"],
            }
    return out
