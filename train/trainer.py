"""Streaming training of the LSTM: one readable loop, checkpoints every epoch, resume.

The deployed model runs on an endless stream with carried state, so it is trained on sequences
that join background, an event and background again, with a target per frame::

    [ background (0.5-2 s) ][ event clip crop (<= 3 s) ][ background (0.5-2 s) ]
      target: background      event class on active frames   background
                              (ignored on quiet frames)

Clip labels are weak (no onsets), so an event frame counts as the event only when its energy is
within ``augment.active_db`` of the clip's loudest frame. Augmentation: gain per segment,
background mixed under the event at a random event-to-background ratio (over active frames),
random crops (time shifts) and a random low-pass of the whole sequence whatever its class.

Methods: one stage for the baselines (frame-level loss on the logits); two for 'cluster'
(embedding stage with :class:`train.losses.ClusterCentroidLoss` on frame embeddings, then the
classifier with encoder fine-tuning and the centroid loss kept as an auxiliary term).

The CNN (``model.kind = "cnn"``) is clip-level: the same loop, losses, checkpoints, metrics and
plots, but each example is one fixed-length crop of ``augment.event_max_s`` of a clip (random
position, padded with silence where the clip is shorter; same gain, mixing and low-pass) with one
label, and evaluation scores the whole clip (padded to at least one crop). It has no frame
scores, so it gets no streaming metrics and no detection thresholds, and it is never exported.

Every random draw of epoch ``e`` comes from generators seeded by ``(seed, e)``, so a resumed run
gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from edge_detect.detect import ClassDetection
from edge_detect.errors import CheckpointError, DatasetError
from edge_detect.features import FeatureConfig, log_mel
from train.cache import FeatureCache
from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import TrainConfig
from train.datasets import Clip, filter_clips, load_manifest, split_by_group
from train.losses import ClusterCentroidLoss, check_finite, classification_loss
from train.models import CNNClassifier, Network, StreamingLSTM, build_model

__all__ = [
    "IGNORE",
    "RunResult",
    "SequenceBuilder",
    "clip_scores",
    "evaluate_clips",
    "load_dataset",
    "split_clips",
    "train",
]

log = logging.getLogger(__name__)


IGNORE = -100
"""Frame target that no loss sees (quiet frames inside a weakly labelled event, padding)."""
FADE_MS = 10.0
"""Fade at every segment boundary, so joins do not click (a click would be a free cue)."""
LOWPASS_TAPER_HZ = 400.0
"""Width of the cosine roll-off of the random low-pass."""
RESERVOIR_PER_CLASS = 3000
"""Recent frame embeddings kept per class for re-clustering (bounded memory)."""
SMOOTHING_MS = 100.0
"""Moving average applied to frame scores when choosing detection thresholds (as the runtime)."""
MIN_THRESHOLD = 0.3
"""Lowest detection threshold a checkpoint proposes."""
FALSE_ALARM_WEIGHT = 2.0
"""Threshold choice maximises detected - FALSE_ALARM_WEIGHT * false-alarm share of sequences:
in a stream a false alarm costs more than a late or missed event of a rare class."""
LAST_NAME, BEST_NAME = "checkpoint_last.pt", "checkpoint.pt"
VAL_SEQUENCE_SEED = 12345


# ---------------------------------------------------------------- data


@dataclass
class ClipAudio:
    """One clip in memory: waveform, class index and per-frame activity."""

    clip: Clip
    target: int
    audio: npt.NDArray[np.float32]  # (samples,)
    active: npt.NDArray[np.bool_]  # (frames,), framing of the feature config
    frame_power: npt.NDArray[np.float64]  # (frames,), mean square per frame


def frame_activity(
    audio: npt.NDArray[np.float32], config: FeatureConfig, active_db: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Frames within ``active_db`` of the loudest, on the front end's framing; and frame power."""
    win, hop = config.window_samples, config.hop_samples
    if len(audio) < win:
        audio = np.pad(audio, (0, win - len(audio)))
    n = config.num_frames(len(audio))
    frames = np.lib.stride_tricks.sliding_window_view(audio.astype(np.float64), win)[::hop][:n]
    power = (frames**2).mean(axis=1)  # (frames,)
    level_db = 10.0 * np.log10(power + 1e-12)
    return level_db >= level_db.max() - active_db, power


def _lowpass(audio: npt.NDArray[np.float32], cutoff_hz: float, rate: int) -> npt.NDArray[Any]:
    spectrum = np.fft.rfft(audio)
    freqs = np.fft.rfftfreq(len(audio), 1.0 / rate)
    gain = np.clip((cutoff_hz + LOWPASS_TAPER_HZ - freqs) / LOWPASS_TAPER_HZ, 0.0, 1.0)
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)  # cosine roll-off from 1 to 0
    return np.fft.irfft(spectrum * gain, n=len(audio)).astype(np.float32)


class SequenceBuilder:
    """Builds streaming training sequences (features and frame targets) from clips in memory."""

    def __init__(
        self,
        config: TrainConfig,
        clips: Sequence[ClipAudio],
        backgrounds: Sequence[ClipAudio],
        background_index: int,
    ) -> None:
        if not backgrounds:
            raise DatasetError("streaming training needs background clips; none were loaded")
        self.config, self.clips, self.backgrounds = config, clips, backgrounds
        self.background_index = background_index
        feat = config.features
        self.rate, self.hop, self.win = feat.sample_rate_hz, feat.hop_samples, feat.window_samples
        self.fade = np.linspace(0.0, 1.0, round(FADE_MS * self.rate / 1000.0), dtype=np.float32)

    def _crop(self, item: ClipAudio, max_s: float, rng: np.random.Generator) -> tuple[Any, int]:
        """A random crop of at most ``max_s`` starting on a frame boundary: (audio, first frame)."""
        max_len = max(self.win, int(max_s * self.rate) // self.hop * self.hop)
        audio = item.audio
        if len(audio) < self.win:
            audio = np.pad(audio, (0, self.win - len(audio)))
        first = 0
        if len(audio) > max_len:
            first = int(rng.integers(0, (len(audio) - max_len) // self.hop + 1))
            audio = audio[first * self.hop : first * self.hop + max_len]
        # whole frames: pad the tail up to a multiple of the hop
        return np.pad(audio, (0, -len(audio) % self.hop)).astype(np.float32), first

    def _faded(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        n = min(len(self.fade), len(audio) // 2)
        if n:
            audio[:n] *= self.fade[:n]
            audio[len(audio) - n :] *= self.fade[:n][::-1]
        return audio

    def _background(self, samples: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """``samples`` of background (rounded down to whole hops), joining clips as needed."""
        need = max(self.hop, samples // self.hop * self.hop)
        parts, have = [], 0
        while have < need:
            item = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            audio, _ = self._crop(item, (need - have + 0.5) / self.rate, rng)
            parts.append(self._faded(audio * self._gain(rng)))
            have += len(audio)
        return np.concatenate(parts)[:need]

    def _seconds(self, seconds: float) -> int:
        return round(seconds * self.rate)

    def _gain(self, rng: np.random.Generator) -> float:
        db = self.config.augment.gain_db
        return float(10.0 ** (rng.uniform(-db, db) / 20.0))

    def build(
        self, index: int, rng: np.random.Generator, *, augment: bool = True
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Sequence around clip ``index``: features (T, F) float32 and targets (T,) int64."""
        aug = self.config.augment
        item = self.clips[index]
        event, first = self._crop(item, aug.event_max_s, rng)
        n_event_frames = len(event) // self.hop
        active = item.active[first : first + n_event_frames]
        active = np.pad(active, (0, n_event_frames - len(active)))
        power = item.frame_power[first : first + n_event_frames]
        power = np.pad(power, (0, n_event_frames - len(power)))
        is_background = item.target == self.background_index
        gain = self._gain(rng) if augment else 1.0
        event *= gain
        if not is_background and rng.random() < aug.mix_prob:
            bed = self._background(len(event), rng)
            event_power = (float(power[active].mean()) if active.any() else 1e-12) * gain**2
            bed_power = float(np.mean(bed**2)) + 1e-12
            snr_db = rng.uniform(aug.snr_db_min, aug.snr_db_max)
            event = event + bed * math.sqrt(event_power / (bed_power * 10.0 ** (snr_db / 10.0)))
        before = self._background(
            self._seconds(rng.uniform(aug.context_min_s, aug.context_max_s)), rng
        )
        after = self._background(
            self._seconds(rng.uniform(aug.context_min_s, aug.context_max_s)), rng
        )
        audio = np.concatenate([before, self._faded(event.astype(np.float32)), after])
        if augment and rng.random() < aug.lowpass_prob:
            cutoff = rng.uniform(aug.lowpass_min_hz, aug.lowpass_max_hz)
            if cutoff < self.rate / 2:
                audio = _lowpass(audio, cutoff, self.rate)
        audio = np.clip(audio, -1.0, 1.0)
        features = log_mel(audio, self.config.features)  # (T, F)
        starts = np.arange(len(features)) * self.hop
        targets = np.full(len(features), self.background_index, dtype=np.int64)
        inside = (starts >= len(before)) & (starts < len(before) + n_event_frames * self.hop)
        if not is_background:
            j = (starts[inside] - len(before)) // self.hop
            targets[inside] = np.where(active[j], item.target, IGNORE)
        return features, targets

    def crop_frames(self) -> int:
        """Frames of one clip-level crop (``augment.event_max_s``; at least 8 for the CNN)."""
        return _crop_frames(self.config)

    def crop(
        self, index: int, rng: np.random.Generator, *, augment: bool = True
    ) -> tuple[npt.NDArray[np.float32], int]:
        """Clip-level example for the CNN: features (crop_frames(), F) of a random crop of clip
        ``index`` (placed at a random offset in silence when shorter), and its class."""
        aug = self.config.augment
        item = self.clips[index]
        event, _ = self._crop(item, aug.event_max_s, rng)
        length = max(len(event), (self.crop_frames() - 1) * self.hop + self.win)
        if augment:
            gain = self._gain(rng)
            event = event * gain
            if item.target != self.background_index and rng.random() < aug.mix_prob:
                bed = self._background(len(event), rng)[: len(event)]
                bed = np.pad(bed, (0, len(event) - len(bed)))
                active = item.frame_power[item.active] if item.active.any() else [1e-12]
                event_power = float(np.mean(active)) * gain**2
                bed_power = float(np.mean(bed**2)) + 1e-12
                snr_db = rng.uniform(aug.snr_db_min, aug.snr_db_max)
                event = event + bed * math.sqrt(event_power / (bed_power * 10.0 ** (snr_db / 10.0)))
        offset = int(rng.integers(0, length - len(event) + 1)) if augment else 0
        audio = np.zeros(length, dtype=np.float32)
        audio[offset : offset + len(event)] = event
        if augment and rng.random() < aug.lowpass_prob:
            cutoff = rng.uniform(aug.lowpass_min_hz, aug.lowpass_max_hz)
            if cutoff < self.rate / 2:
                audio = _lowpass(audio, cutoff, self.rate)
        features = log_mel(np.clip(audio, -1.0, 1.0), self.config.features)
        return features[: self.crop_frames()], item.target


def _collate_crops(items: Sequence[tuple[npt.NDArray[np.float32], int]]) -> tuple[Any, Any]:
    """Equal-length crops: features (B, T, F) and clip targets (B,)."""
    x = torch.from_numpy(np.stack([f for f, _ in items]))
    return x, torch.tensor([t for _, t in items], dtype=torch.long)


def _collate(
    items: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest: features (B, T, F) and targets (B, T) with IGNORE on padding."""
    longest = max(len(f) for f, _ in items)
    n_mels = items[0][0].shape[1]
    x = torch.zeros(len(items), longest, n_mels)
    y = torch.full((len(items), longest), IGNORE, dtype=torch.long)
    for b, (feats, targets) in enumerate(items):
        x[b, : len(feats)] = torch.from_numpy(feats)
        y[b, : len(targets)] = torch.from_numpy(targets)
    # padding frames repeat the last real frame so the normaliser sees no -inf-like values
    for b, (feats, _) in enumerate(items):
        if len(feats) < longest:
            x[b, len(feats) :] = x[b, len(feats) - 1]
    return x, y


# ---------------------------------------------------------------- loading


@dataclass
class Dataset:
    """The split, loaded: training, validation and test clips in memory."""

    labels: list[str]
    background_index: int
    parts: dict[str, list[ClipAudio]]
    provenance: dict[str, Any]

    def counts(self, part: str) -> list[int]:
        counts = Counter(item.target for item in self.parts[part])
        return [counts.get(i, 0) for i in range(len(self.labels))]


def split_clips(config: TrainConfig) -> tuple[dict[str, list[Clip]], int]:
    """Manifest -> filtered clips -> split by group -> the training subset: the clips of each
    part (``train``, ``val``, ``test``) as training uses them, and how many clips the license
    filter left out. ``edge-detect data split`` writes these parts as CSVs."""
    data = config.data
    manifest = config.resolve(data.manifest)
    clips = load_manifest(manifest, labels=data.labels)
    excluded = [t.lower() for t in data.exclude_licenses]
    kept = filter_clips(
        clips, keep=lambda c: not any(t in (c.license or "").lower() for t in excluded)
    )
    if not kept:
        raise DatasetError(f"{manifest}: every clip was excluded by license {excluded}")
    split = split_by_group(
        kept,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.split_seed,
    )
    if split.shared_groups():
        raise DatasetError(f"split leaks groups across parts: {sorted(split.shared_groups())[:5]}")
    parts_clips = split.parts()
    if data.max_clips_per_class:
        rng = random.Random(data.split_seed)
        limited = []
        for label in data.labels:
            of_label = [c for c in parts_clips["train"] if c.label == label]
            rng.shuffle(of_label)
            limited += of_label[: data.max_clips_per_class]
        parts_clips["train"] = limited
    if data.train_ratio:
        parts_clips["train"] = _ratio_subset(
            parts_clips["train"], data.labels, data.train_ratio, data.subset_seed
        )
    return parts_clips, len(clips) - len(kept)


def load_dataset(config: TrainConfig, *, progress: bool = False) -> Dataset:
    """Manifest -> filtered clips -> split by group (:func:`split_clips`) -> audio in memory."""
    data = config.data
    manifest = config.resolve(data.manifest)
    parts_clips, excluded_clips = split_clips(config)
    cache = FeatureCache(
        config.resolve(data.cache_dir) if data.cache_dir else None, config.features
    )
    index = {label: i for i, label in enumerate(data.labels)}
    parts: dict[str, list[ClipAudio]] = {}
    for name, part in parts_clips.items():
        loaded = cache.load_many(part, what="audio", progress=progress)
        parts[name] = [
            ClipAudio(
                clip,
                index[clip.label],
                audio,
                *frame_activity(audio, config.features, config.augment.active_db),
            )
            for clip, audio in zip(loaded.clips, loaded.features, strict=True)
        ]
    train_counts = Counter(item.target for item in parts["train"])
    for label in data.labels:  # no background clips: the shipped background serves
        if train_counts.get(index[label], 0) == 0 and label != data.background_label:
            raise DatasetError(
                f"class {label!r} has no training clips in {manifest} after filtering; "
                "check data.labels and data.exclude_licenses"
            )
    provenance = {
        "manifest": str(manifest),
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "excluded_licenses": list(data.exclude_licenses),
        "excluded_clips": excluded_clips,
        "sources": sorted({c.clip.source or "?" for p in parts.values() for c in p}),
        "licenses": sorted({c.clip.license or "?" for p in parts.values() for c in p}),
        "clip_counts": {
            name: {
                label: sum(1 for c in part if c.target == i) for i, label in enumerate(data.labels)
            }
            for name, part in parts.items()
        },
        "groups": {name: len({c.clip.group for c in part}) for name, part in parts.items()},
    }
    return Dataset(list(data.labels), index[data.background_label], parts, provenance)


def _ratio_subset(
    clips: Sequence[Clip], labels: Sequence[str], ratio: Sequence[int], seed: int
) -> list[Clip]:
    """The largest subset with exactly ``ratio`` clips per class (random clips, by ``seed``)."""
    by_label = {label: [c for c in clips if c.label == label] for label in labels}
    unit = min(len(by_label[label]) // r for label, r in zip(labels, ratio, strict=True))
    if unit == 0:
        raise DatasetError(
            f"the training split cannot give the ratio {list(ratio)} of {list(labels)}: it has "
            f"{[len(by_label[label]) for label in labels]} clips"
        )
    rng = random.Random(seed)
    chosen = {
        id(c)
        for label, r in zip(labels, ratio, strict=True)
        for c in rng.sample(by_label[label], unit * r)
    }
    return [c for c in clips if id(c) in chosen]


# ---------------------------------------------------------------- evaluation


def _auc(scores: npt.NDArray[Any], positive: npt.NDArray[np.bool_]) -> float:
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


def _per_class(
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
    metrics = _per_class(y, p_all.argmax(1), labels)
    metrics["auc"] = {label: _auc(p_all[:, i], y == i) for i, label in enumerate(labels)}
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
            minimum = _crop_frames(config)
            if len(feats) < minimum:  # as in training: the clip at the start of silence
                silence = log_mel(np.zeros(config.features.window_samples), config.features)
                x = torch.cat(
                    [x, torch.from_numpy(silence[:1])[None].expand(1, minimum - len(feats), -1)], 1
                )
            clip_emb = model.embed(x)  # (1, E)
            probs.append(torch.softmax(model.classifier(clip_emb), dim=-1)[0].numpy())
            embeddings.append(clip_emb[0].numpy())
            targets.append(item.target)
            continue
        emb, _, _ = model.embed(x)
        p = torch.softmax(model.classifier(emb), dim=-1)[0]  # (T, C)
        active = torch.from_numpy(np.resize(item.active, len(feats)))
        if not active.any():
            active[:] = True
        probs.append(p[active].mean(0).numpy())
        embeddings.append(emb[0][active].mean(0).numpy())
        targets.append(item.target)
    return np.stack(probs), np.stack(embeddings), np.asarray(targets, dtype=np.int64)


def _crop_frames(config: TrainConfig) -> int:
    feat = config.features
    samples = int(config.augment.event_max_s * feat.sample_rate_hz) // feat.hop_samples
    return max(8, feat.num_frames(max(feat.window_samples, samples * feat.hop_samples)))


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
        x, y = _collate(sequences[start : start + 64])
        logits, _, _ = model(x)
        p = torch.softmax(logits, dim=-1)  # (B, T, C)
        kernel = torch.ones(1, 1, smooth) / smooth
        for b, (feats, _) in enumerate(sequences[start : start + 64]):
            pb = p[b, : len(feats)].T[:, None, :]  # (C, 1, T)
            smoothed = F.conv1d(F.pad(pb, (smooth - 1, 0), mode="replicate"), kernel)[:, 0]
            peaks.append(smoothed.max(1).values.numpy())
        mask = y != IGNORE
        frame_true.append(y[mask].numpy())
        frame_pred.append(p[mask].argmax(-1).numpy())
    metrics = _per_class(np.concatenate(frame_true), np.concatenate(frame_pred), labels)
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
            "auc": _auc(peak[:, c], positive),
        }
    return metrics, detection


# ---------------------------------------------------------------- plots


def _plots(
    run_dir: Path, history: list[dict[str, Any]], labels: Sequence[str], confusions: dict[str, Any]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(epochs, [h["train_loss"] for h in history], label="train loss")
    ax[0].set_xlabel("epoch")
    ax[0].set_title("training loss")
    ax[0].legend()
    ax[1].plot(epochs, [h["val_clip_error"] for h in history], label="val clip error")
    if all("val_frame_error" in h for h in history):  # the CNN has no frame scores
        ax[1].plot(epochs, [h["val_frame_error"] for h in history], label="val frame error")
    ax[1].set_xlabel("epoch")
    ax[1].set_title("validation mean per-class error")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(run_dir / "loss_curves.png", dpi=100)
    plt.close(fig)
    for name, confusion in confusions.items():
        matrix = np.asarray(confusion)
        fig, axis = plt.subplots(figsize=(5, 4.5))
        axis.imshow(
            matrix / np.maximum(matrix.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1
        )
        for i in range(len(labels)):
            for j in range(len(labels)):
                axis.text(j, i, str(matrix[i, j]), ha="center", va="center")
        axis.set_xticks(range(len(labels)), labels, rotation=30)
        axis.set_yticks(range(len(labels)), labels)
        axis.set_xlabel("predicted")
        axis.set_ylabel("true")
        axis.set_title(f"{name} clips")
        fig.tight_layout()
        fig.savefig(run_dir / f"confusion_{name}.png", dpi=100)
        plt.close(fig)


def _embedding_plot(
    path: Path,
    embeddings: npt.NDArray[np.float32],
    targets: Any,
    clusters: Any,
    labels: Sequence[str],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    z = z - z.mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)  # PCA
    xy = z @ vt[:2].T
    panels = 2 if clusters is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5), squeeze=False)
    for i, label in enumerate(labels):
        sel = targets == i
        axes[0, 0].scatter(xy[sel, 0], xy[sel, 1], s=8, label=label)
    axes[0, 0].legend(fontsize=7)
    axes[0, 0].set_title(f"{title}: by class")
    if clusters is not None:
        axes[0, 1].scatter(xy[:, 0], xy[:, 1], s=8, c=clusters, cmap="tab20")
        axes[0, 1].set_title(f"{title}: by cluster")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- training


@dataclass
class RunResult:
    """Where a run wrote its results, and its headline numbers."""

    run_dir: Path
    checkpoint: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    test_clips: list[dict[str, Any]] = field(default_factory=list)
    """Per test clip: group, target, predicted class and probabilities (for bootstraps)."""


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5%."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _optimiser(model: Network, config: TrainConfig, stage: int) -> torch.optim.Optimizer:
    opt = config.optim
    encoder = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    head = list(model.classifier.parameters())
    if opt.method != "cluster":
        groups = [{"params": encoder + head, "lr": opt.lr, "scale": 1.0}]
    elif stage == 1:
        groups = [{"params": encoder, "lr": opt.lr, "scale": 1.0}]
    else:
        groups = [
            {"params": encoder, "lr": opt.lr * opt.encoder_lr_scale, "scale": opt.encoder_lr_scale},
            {"params": head, "lr": opt.lr, "scale": 1.0},
        ]
    return torch.optim.AdamW(groups, lr=opt.lr, weight_decay=opt.weight_decay)


def _feature_stats(
    builder: SequenceBuilder, n: int, seed: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Per-band mean and std of the features of ``n`` training sequences, and their frame
    targets per class (background dominates frames, whatever the clip counts)."""
    rng = np.random.default_rng([seed, 999])
    built = [builder.build(int(i), rng) for i in rng.integers(len(builder.clips), size=n)]
    feats = np.concatenate([f for f, _ in built])
    targets = np.concatenate([t for _, t in built])
    frame_counts = [max(1, int((targets == c).sum())) for c in range(num_classes)]
    return torch.from_numpy(feats.mean(0)), torch.from_numpy(feats.std(0)), frame_counts


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


def _distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun (gloo on CPU)."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return torch.distributed.get_rank(), world


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
    # background clips, or the shipped background features when a folder has none
    from train.background_bank import sequence_builder, validation_negatives

    opt = config.optim
    torch.set_num_threads(opt.num_threads)
    rank, world = _distributed()
    run_dir = out_dir or config.resolve(opt.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = load_dataset(config, progress=progress)
    labels, bg = data.labels, data.background_index
    train_items, val_items = data.parts["train"], data.parts["val"]
    if not val_items:
        raise DatasetError("the validation split is empty; raise data.val_fraction")
    train_backgrounds = [c for c in train_items if c.target == bg]
    val_backgrounds = [c for c in val_items if c.target == bg] or train_backgrounds
    builder = sequence_builder(config, train_items, train_backgrounds, bg, part="train")
    val_builder = sequence_builder(config, val_items, val_backgrounds, bg, part="val")
    val_rng = np.random.default_rng(VAL_SEQUENCE_SEED)
    val_sequences = [val_builder.build(i, val_rng, augment=False) for i in range(len(val_items))]
    val_owner = [item.target for item in val_items]
    negatives = validation_negatives(val_builder, val_rng)  # shipped background: none else
    val_sequences, val_owner = val_sequences + negatives, val_owner + [bg] * len(negatives)
    counts = data.counts("train")
    log.info("training clips per class: %s", dict(zip(labels, counts, strict=True)))

    torch.manual_seed(opt.seed)
    model = build_model(config.model)
    stream_model = model if isinstance(model, StreamingLSTM) else None  # None: the clip-level CNN
    clip_level = stream_model is None
    mean, std, frame_counts = _feature_stats(
        builder, min(300, len(train_items)), opt.seed, len(labels)
    )
    model.norm.set_stats(mean, std)
    log.info("labelled training frames per class (sample): %s", frame_counts)
    cluster_loss = (
        ClusterCentroidLoss(
            counts,
            config.model.embedding_dim,
            temperature=opt.temperature,
            margin=opt.margin,
            decay=opt.centroid_decay,
            labels=labels,
            seed=opt.seed,
        )
        if opt.method == "cluster"
        else None
    )
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
    )
    net: torch.nn.Module = _EmbedAndClassify(model)
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net)
    stage = 1 if opt.method == "cluster" else 0
    optimiser = _optimiser(model, config, stage)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": math.inf}
    start_epoch, step = 0, 0
    if resume:
        state = _resume_state(run_dir / LAST_NAME, config)
        model.load_state_dict(state["model_state"])
        stage = state["resume"]["stage"]
        optimiser = _optimiser(model, config, stage)
        optimiser.load_state_dict(state["resume"]["optimizer_state"])
        if cluster_loss is not None:
            cluster_loss.load_state_dict(state["resume"]["cluster_loss"])
            cluster_loss.fits = state["resume"]["cluster_fits"]
        history, best = state["resume"]["history"], state["resume"]["best"]
        start_epoch, step = state["resume"]["epoch"], state["resume"]["step"]
        log.info("resuming %s after epoch %d", run_dir, start_epoch)

    background_clips = [i for i, c in enumerate(train_items) if c.target == bg]
    event_clips = [i for i, c in enumerate(train_items) if c.target != bg]
    per_epoch_bg = opt.background_per_epoch or len(background_clips)
    per_rank = (len(event_clips) + min(per_epoch_bg, len(background_clips))) // world
    batches_per_epoch = math.ceil(per_rank / opt.batch_size)
    reservoir: dict[int, list[torch.Tensor]] = {}
    if cluster_loss is not None and not resume:
        cluster_loss.fit(*_warm_embeddings(model, builder, opt, batches=4))
        _same_centroids(cluster_loss, world)

    epoch = start_epoch
    for epoch in range(start_epoch, opt.epochs):
        if opt.method == "cluster" and stage == 1 and epoch >= opt.embed_epochs:
            stage = 2
            optimiser = _optimiser(model, config, stage)
        stage_start = opt.embed_epochs if stage == 2 else 0
        stage_epochs = (
            (opt.epochs - opt.embed_epochs)
            if stage == 2
            else (opt.embed_epochs if stage == 1 else opt.epochs)
        )
        rng = np.random.default_rng([opt.seed, epoch])
        torch.manual_seed(opt.seed * 100_003 + epoch)
        order = event_clips + list(rng.permutation(background_clips)[:per_epoch_bg])
        order = [order[i] for i in rng.permutation(len(order))]
        # every rank takes every world-th sequence; equal counts keep the ranks in step
        order = order[: len(order) // world * world][rank::world]
        rng = np.random.default_rng([opt.seed, epoch, rank])  # augmentation differs per rank
        model.train()
        if cluster_loss is not None:
            cluster_loss.train()
        losses = []
        batches = range(0, len(order), opt.batch_size)
        bar = _bar(batches, progress, f"epoch {epoch + 1}/{opt.epochs}")
        for b_index, start in enumerate(bar):
            chunk = order[start : start + opt.batch_size]
            if clip_level:
                x, y = _collate_crops([builder.crop(i, rng) for i in chunk])
            else:
                x, y = _collate([builder.build(i, rng) for i in chunk])
            in_stage = (epoch - stage_start) * batches_per_epoch + b_index
            factor = _lr_factor(in_stage, stage_epochs * batches_per_epoch, batches_per_epoch)
            for group in optimiser.param_groups:
                group["lr"] = opt.lr * group["scale"] * factor
            emb, logits = net(x)  # (B, T, E), (B, T, C); the CNN: (B, E), (B, C)
            check_finite(emb, "an embedding", step=step, batch=f"{b_index} of epoch {epoch + 1}")
            mask = y != IGNORE
            if stage != 1:
                loss = frame_loss(logits[mask], y[mask])
            else:  # the classifier waits; zero keeps its parameters in DDP's graph
                loss = 0.0 * logits.sum()
            if cluster_loss is not None:
                owners = [train_items[i].target for i in chunk]
                z, t = (
                    (emb, y)
                    if clip_level
                    else _sample_frames(
                        emb, y, owners, opt.embedding_frames, rng, opt.pool_embeddings
                    )
                )
                weight = 1.0 if stage == 1 else opt.aux_weight
                loss = loss + weight * cluster_loss(z, t, step=step, batch=b_index)
                for c in t.unique().tolist():
                    reservoir.setdefault(c, []).append(z[t == c].detach())
            check_finite(loss, "the loss", step=step, batch=f"{b_index} of epoch {epoch + 1}")
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
            optimiser.step()
            losses.append(loss.item())
            step += 1
            if progress and hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if cluster_loss is not None and (epoch + 1) % opt.refresh_epochs == 0 and reservoir:
            z_all, t_all = _drain(reservoir)
            cluster_loss.fit(z_all, t_all)
            _same_centroids(cluster_loss, world)
        reservoir.clear()
        stop = time_limit_s is not None and time.monotonic() - started > time_limit_s
        if world > 1:  # rank 0 validates and writes; the others only train
            flag = torch.tensor([int(stop)])
            torch.distributed.broadcast(flag, 0)
            stop = bool(flag.item())
            if rank != 0:
                if stop:
                    break
                continue

        clip_metrics, clip_emb, clip_y = evaluate_clips(model, val_items, config, labels)
        record = {
            "epoch": epoch + 1,
            "stage": stage,
            "train_loss": float(np.mean(losses)),
            "val_clip_error": clip_metrics["mean_error"],
            "val_clip_per_class_error": clip_metrics["per_class_error"],
        }
        score = clip_metrics["mean_error"]
        if stream_model is not None:
            stream_metrics, _ = evaluate_stream(
                stream_model, val_sequences, val_owner, labels, bg, config
            )
            score = 0.5 * (clip_metrics["mean_error"] + stream_metrics["mean_error"])
            record["val_frame_error"] = stream_metrics["mean_error"]
        record["val_score"] = score
        record["elapsed_s"] = round(time.monotonic() - started, 1)
        if cluster_loss is not None:
            predicted = cluster_loss.predict(torch.from_numpy(clip_emb)).numpy()
            record["val_nearest_centroid_error"] = _per_class(clip_y, predicted, labels)[
                "mean_error"
            ]
        history.append(record)
        log.info(
            "epoch %d: %s", epoch + 1, {k: v for k, v in record.items() if not isinstance(v, dict)}
        )
        # a classifier stage is required for 'cluster' before an epoch can be the best
        if score < best["score"] and stage != 1:
            best = {
                "score": score,
                "epoch": epoch + 1,
                "model_state": {k: v.clone() for k, v in model.state_dict().items()},
            }
        if epoch == 0 or (epoch + 1) % opt.plot_every == 0 or epoch + 1 == opt.epochs:
            clusters = (
                cluster_loss.assign(torch.from_numpy(clip_emb), torch.from_numpy(clip_y)).numpy()
                if cluster_loss is not None
                else None
            )
            _embedding_plot(
                run_dir / f"embedding_epoch{epoch + 1:03d}.png",
                clip_emb,
                clip_y,
                clusters,
                labels,
                f"val clips, epoch {epoch + 1}",
            )
        save_checkpoint(
            run_dir / LAST_NAME,
            _payload(
                config,
                data,
                model.state_dict(),
                resume={
                    "epoch": epoch + 1,
                    "step": step,
                    "stage": stage,
                    "optimizer_state": optimiser.state_dict(),
                    "cluster_loss": cluster_loss.state_dict() if cluster_loss is not None else None,
                    "cluster_fits": cluster_loss.fits if cluster_loss is not None else 0,
                    "history": history,
                    "best": best,
                },
            ),
        )
        if stop:
            log.warning("time limit of %.0f s reached after epoch %d", time_limit_s, epoch + 1)
            break

    if world > 1:  # each rank's final weights and centroids, to check that they agree
        torch.save(
            {
                "model_state": model.state_dict(),
                "cluster_loss": cluster_loss.state_dict() if cluster_loss is not None else None,
            },
            run_dir / f"rank{rank}_final.pt",
        )
        if rank != 0:
            return RunResult(run_dir, run_dir / BEST_NAME)
    if "model_state" not in best:  # e.g. time ran out during the embedding stage
        best = {"score": math.inf, "epoch": epoch + 1, "model_state": model.state_dict()}
    model.load_state_dict(best["model_state"])
    clip_val, _, _ = evaluate_clips(model, val_items, config, labels)
    metrics: dict[str, Any] = {
        "method": opt.method,
        "model": config.model.kind,
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "val": {"clip": clip_val},
        "band_check": _band_check(model, data, config),
    }
    extra: dict[str, Any] = {}
    if stream_model is not None:  # detection thresholds come from the frame scores of the stream
        stream_val, extra["detection"] = evaluate_stream(
            stream_model, val_sequences, val_owner, labels, bg, config
        )
        metrics["val"]["stream"] = stream_val
    test_items = data.parts["test"]
    test_clips: list[dict[str, Any]] = []
    if test_items and clip_level:
        clip_test, _, _ = evaluate_clips(model, test_items, config, labels)
        metrics["test"] = {"clip": clip_test}
    elif test_items and stream_model is not None:
        test_bgs = [c for c in test_items if c.target == bg] or val_backgrounds
        test_builder = sequence_builder(config, test_items, test_bgs, bg, part="val")
        test_rng = np.random.default_rng(VAL_SEQUENCE_SEED + 1)
        test_sequences = [
            test_builder.build(i, test_rng, augment=False) for i in range(len(test_items))
        ]
        clip_test, _, _ = evaluate_clips(model, test_items, config, labels)
        stream_test, _ = evaluate_stream(
            stream_model, test_sequences, [c.target for c in test_items], labels, bg, config
        )
        metrics["test"] = {"clip": clip_test, "stream": stream_test}
    if test_items:
        test_probs, _, _ = clip_scores(model, test_items, config)
        test_clips = [
            {
                "group": item.clip.group,
                "source": item.clip.source,
                "target": item.target,
                "pred": int(p.argmax()),
                "probs": [round(float(v), 5) for v in p],
            }
            for item, p in zip(test_items, test_probs, strict=True)
        ]
    metrics["wall_time_s"] = round(time.monotonic() - started, 1)
    checkpoint = run_dir / BEST_NAME
    sha = save_checkpoint(
        checkpoint, _payload(config, data, model.state_dict(), metrics=metrics, **extra)
    )
    metrics["checkpoint_sha256"] = sha
    (run_dir / "metrics.json").write_text(
        json.dumps(
            {"history": history, **metrics, "data": data.provenance, "config": config.to_dict()},
            indent=2,
            default=_json_default,
        )
        + "\n",
        encoding="utf-8",
    )
    confusions = {"val": clip_val["confusion"]}
    if "test" in metrics:
        confusions["test"] = metrics["test"]["clip"]["confusion"]
    _plots(run_dir, history, labels, confusions)
    log.info(
        "best epoch %d; val clip per-class error %s; checkpoint %s",
        best["epoch"],
        clip_val["per_class_error"],
        checkpoint,
    )
    return RunResult(run_dir, checkpoint, metrics, test_clips)


def _same_centroids(loss: ClusterCentroidLoss, world: int) -> None:
    """After a k-means fit on rank-local embeddings, every rank takes rank 0's clusters."""
    if world > 1:
        torch.distributed.broadcast(loss.sums, 0)
        torch.distributed.broadcast(loss.counts, 0)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def _band_check(model: Network, data: Dataset, config: TrainConfig) -> dict[str, Any]:
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


def _payload(config: TrainConfig, data: Dataset, state: dict[str, Any], **extra: Any) -> dict:
    return {
        "labels": data.labels,
        "model_config": config.model.to_dict(),
        "feature_config": config.features.to_dict(),
        "train_config": config.to_dict(),
        "model_state": state,
        "data": data.provenance,
        **extra,
    }


def _resume_state(path: Path, config: TrainConfig) -> dict[str, Any]:
    state = load_checkpoint(path)
    if "resume" not in state:
        raise CheckpointError(f"{path} holds no resume state; start without --resume")
    saved = dict(state["train_config"])
    current = config.to_dict()
    saved["optim"] = {**saved["optim"], "epochs": current["optim"]["epochs"]}
    if saved != current:
        diff = sorted(
            f"{section}.{key}"
            for section in current
            for key in current[section]
            if saved.get(section, {}).get(key) != current[section][key]
        )
        raise CheckpointError(
            f"cannot resume {path}: the config differs in {diff}; only optim.epochs may change. "
            "Use the run's own config or start a new run folder"
        )
    return state


def _sample_frames(
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


def _drain(reservoir: dict[int, list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    zs, ts = [], []
    for c, parts in reservoir.items():
        z = torch.cat(parts)[-RESERVOIR_PER_CLASS:]
        zs.append(z)
        ts.append(torch.full((len(z),), c, dtype=torch.long))
    return torch.cat(zs), torch.cat(ts)


@torch.no_grad()
def _warm_embeddings(
    model: Network, builder: SequenceBuilder, opt: Any, batches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame embeddings of a few batches, for the first k-means (every class included)."""
    rng = np.random.default_rng([opt.seed, 7])
    by_class: dict[int, list[int]] = {}
    for i, item in enumerate(builder.clips):
        by_class.setdefault(item.target, []).append(i)
    picks = [
        i
        for members in by_class.values()
        for i in rng.choice(members, size=min(len(members), batches * 8), replace=False)
    ]
    zs, ts = [], []
    model.eval()
    for start in range(0, len(picks), opt.batch_size):
        chunk = [int(i) for i in picks[start : start + opt.batch_size]]
        if isinstance(model, CNNClassifier):
            x, y = _collate_crops([builder.crop(i, rng) for i in chunk])
            zs.append(model.embed(x))
            ts.append(y)
            continue
        x, y = _collate([builder.build(i, rng) for i in chunk])
        emb, _, _ = model.embed(x)
        owners = [builder.clips[i].target for i in chunk]
        z, t = _sample_frames(emb, y, owners, opt.embedding_frames, rng, opt.pool_embeddings)
        zs.append(z)
        ts.append(t)
    return torch.cat(zs), torch.cat(ts)


def _bar(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
