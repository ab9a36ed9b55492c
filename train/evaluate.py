"""Evaluation during training: clip-level errors and AUC, frame metrics on streaming
sequences, detection thresholds, and the bandwidth-shortcut check."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from edge_detect.detect import ClassDetection
from edge_detect.features import log_mel
from train.config import TrainConfig
from train.models import CNNClassifier, Network, StreamingLSTM, probabilities
from train.sequences import IGNORE, ClipAudio, collate, crop_frames
from train.splits import Dataset

__all__ = [
    "auc",
    "band_check",
    "clip_scores",
    "evaluate_clips",
    "evaluate_stream",
    "per_class",
]

SMOOTHING_MS = 100.0
"""Moving average applied to frame scores when choosing detection thresholds (as the runtime)."""
MIN_THRESHOLD = 0.3
"""Lowest detection threshold a checkpoint proposes."""
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
    metrics = per_class(y, p_all.argmax(1), labels)
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


@torch.no_grad()
def evaluate_stream(
    model: StreamingLSTM,
    sequences: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]],
    event_class: Sequence[int],
    labels: Sequence[str],
    background_index: int,
    config: TrainConfig,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Frame-level metrics on background-event-background sequences, and detection defaults.

    A class's threshold maximises (share of the class's sequences detected) -
    FALSE_ALARM_WEIGHT * (share of other sequences with a false detection), on the maximum of
    the smoothed frame score of each sequence.
    """
    model.eval()
    smooth = max(1, round(SMOOTHING_MS / config.features.hop_ms))
    frame_true, frame_pred, peaks = [], [], []
    for start in range(0, len(sequences), 64):
        x, y = collate(sequences[start : start + 64])
        logits, _, _ = model(x)
        p = probabilities(logits, model.config.output)  # (B, T, C)
        kernel = torch.ones(1, 1, smooth) / smooth
        for b, (feats, _) in enumerate(sequences[start : start + 64]):
            pb = p[b, : len(feats)].T[:, None, :]  # (C, 1, T)
            smoothed = F.conv1d(F.pad(pb, (smooth - 1, 0), mode="replicate"), kernel)[:, 0]
            peaks.append(smoothed.max(1).values.numpy())
        mask = y != IGNORE
        frame_true.append(y[mask].numpy())
        frame_pred.append(p[mask].argmax(-1).numpy())
    metrics = per_class(np.concatenate(frame_true), np.concatenate(frame_pred), labels)
    peak = np.stack(peaks)  # (S, C)
    owner = np.asarray(event_class)
    detection: dict[str, dict[str, Any]] = {}
    for c, label in enumerate(labels):
        if c == background_index:
            detection[label] = ClassDetection(enabled=False).to_dict()
            continue
        positive = owner == c
        best, best_t = -math.inf, MIN_THRESHOLD
        for t in np.unique(np.concatenate([peak[:, c], [MIN_THRESHOLD]])):
            if t < MIN_THRESHOLD:
                continue
            tpr = float((peak[positive, c] >= t).mean()) if positive.any() else 0.0
            fpr = float((peak[~positive, c] >= t).mean()) if (~positive).any() else 0.0
            if tpr - FALSE_ALARM_WEIGHT * fpr > best:
                best, best_t = tpr - FALSE_ALARM_WEIGHT * fpr, float(t)
        threshold = round(min(best_t, 0.95), 3)
        detection[label] = ClassDetection(
            threshold_on=threshold,
            threshold_off=round(0.6 * threshold, 3),
            smoothing_ms=SMOOTHING_MS,
        ).to_dict()
        metrics.setdefault("sequence_detection", {})[label] = {
            "threshold": threshold,
            "detected": float((peak[positive, c] >= threshold).mean()) if positive.any() else None,
            "false_alarm_sequences": float((peak[~positive, c] >= threshold).mean()),
            "auc": auc(peak[:, c], positive),
        }
    return metrics, detection


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
