"""Streaming training sequences: clips in memory, augmentation and batches.

The deployed model runs on an endless stream with carried state, so it is trained on sequences
that join background, an event and background again, with a target per frame::

    [ background (0.5-2 s) ][ event clip crop (<= 3 s) ][ background (0.5-2 s) ]
      target: background      event class on active frames   background
                              (ignored on quiet frames)

Clip labels are weak (no onsets), so an event frame counts as the event only when its energy is
within ``augment.active_db`` of the clip's loudest frame. Augmentation: gain per segment,
background mixed under the event at a random event-to-background ratio (over active frames),
random crops (time shifts) and a random low-pass of the whole sequence whatever its class.

The CNN gets clip-level crops instead (:meth:`SequenceBuilder.crop`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from edge_detect.errors import DatasetError
from edge_detect.features import FeatureConfig, log_mel
from train.config import TrainConfig
from train.datasets import Clip

__all__ = [
    "IGNORE",
    "ClipAudio",
    "SequenceBuilder",
    "collate",
    "collate_crops",
    "crop_frames",
    "feature_stats",
    "frame_activity",
    "room_impulse",
    "spec_augment",
]

IGNORE = -100
"""Frame target that no loss sees (quiet frames inside a weakly labelled event, padding)."""
FADE_MS = 10.0
"""Fade at every segment boundary, so joins do not click (a click would be a free cue)."""
LOWPASS_TAPER_HZ = 400.0
"""Width of the cosine roll-off of the random low-pass."""
EQ_LOW_HZ = 100.0
"""Frequency below which the random microphone colouring is flat."""
EQ_BUMPS = 3
"""Broad peaks or dips of the random microphone colouring."""
REVERB_MAX_TAIL_S = 1.5
"""Longest synthetic impulse response, in s (longer tails change nothing a model can hear)."""
REVERB_DIRECT_DB = (0.0, 12.0)
"""Range of the direct path's energy over the reverberant tail's, in dB (near to far)."""


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


def _lowpass_gain(freqs: npt.NDArray[Any], cutoff_hz: float) -> npt.NDArray[Any]:
    gain = np.clip((cutoff_hz + LOWPASS_TAPER_HZ - freqs) / LOWPASS_TAPER_HZ, 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * gain)  # cosine roll-off from 1 to 0


def _lowpass(audio: npt.NDArray[np.float32], cutoff_hz: float, rate: int) -> npt.NDArray[Any]:
    spectrum = np.fft.rfft(audio)
    freqs = np.fft.rfftfreq(len(audio), 1.0 / rate)
    return np.fft.irfft(spectrum * _lowpass_gain(freqs, cutoff_hz), n=len(audio)).astype(np.float32)


def _eq_gain(freqs: npt.NDArray[Any], max_db: float, rng: np.random.Generator) -> npt.NDArray[Any]:
    """A smooth random gain over frequency: a tilt on a log-frequency axis plus EQ_BUMPS broad
    bumps, within +-max_db dB (a microphone and its housing colour the sound like this)."""
    octave = np.log2(np.maximum(freqs, EQ_LOW_HZ) / EQ_LOW_HZ)  # 0 at EQ_LOW_HZ
    span = max(float(octave[-1]), 1e-6)
    db = rng.uniform(-1.0, 1.0) * max_db * (octave / span - 0.5)
    for _ in range(EQ_BUMPS):
        centre, width = rng.uniform(0.0, span), rng.uniform(0.5, 2.0)
        db = db + rng.uniform(-1.0, 1.0) * max_db * np.exp(-0.5 * ((octave - centre) / width) ** 2)
    return 10.0 ** (np.clip(db, -max_db, max_db) / 20.0)


def room_impulse(
    rt60_s: float, rate: int, rng: np.random.Generator, direct_db: float
) -> npt.NDArray[np.float32]:
    """A synthetic room impulse response: a direct path and exponentially decaying noise that
    falls 60 dB in ``rt60_s``, the tail ``direct_db`` below the direct path in energy; unit
    energy overall (so reverberation does not change the level)."""
    length = max(2, round(min(rt60_s, REVERB_MAX_TAIL_S) * rate))
    t = np.arange(length) / rate
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60_s)  # ln(1000): 60 dB
    tail[0] = 0.0
    tail *= math.sqrt(10.0 ** (-direct_db / 10.0) / max(float(np.sum(tail**2)), 1e-12))
    tail[0] = 1.0
    return (tail / math.sqrt(float(np.sum(tail**2)))).astype(np.float32)


def _convolve(audio: npt.NDArray[np.float32], ir: npt.NDArray[np.float32]) -> npt.NDArray[Any]:
    n = len(audio) + len(ir) - 1
    size = 1 << (n - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(audio, size) * np.fft.rfft(ir, size), size)[: len(audio)]
    return out.astype(np.float32)


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
        self._background_p: npt.NDArray[np.float64] | None = None

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

    def set_background_weights(self, weights: npt.NDArray[np.float64] | None) -> None:
        """How often each background clip is drawn (e.g. hard negatives weighted up by mining,
        :mod:`train.mining`); None: uniformly."""
        if weights is None:
            self._background_p = None
            return
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.backgrounds),) or not np.all(w >= 0) or w.sum() <= 0:
            raise DatasetError(
                f"background weights must be {len(self.backgrounds)} non-negative numbers, "
                f"not all 0; got shape {w.shape}"
            )
        self._background_p = w / w.sum()

    def _pick_background(self, rng: np.random.Generator) -> ClipAudio:
        if self._background_p is None:
            return self.backgrounds[int(rng.integers(len(self.backgrounds)))]
        return self.backgrounds[int(rng.choice(len(self.backgrounds), p=self._background_p))]

    def _background(self, samples: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """``samples`` of background (rounded down to whole hops), joining clips as needed."""
        need = max(self.hop, samples // self.hop * self.hop)
        parts, have = [], 0
        while have < need:
            item = self._pick_background(rng)
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
        if augment:
            audio = self.room_and_microphone(audio, rng)
        audio = np.clip(audio, -1.0, 1.0)
        features = log_mel(audio, self.config.features)  # (T, F)
        starts = np.arange(len(features)) * self.hop
        targets = np.full(len(features), self.background_index, dtype=np.int64)
        inside = (starts >= len(before)) & (starts < len(before) + n_event_frames * self.hop)
        if not is_background:
            j = (starts[inside] - len(before)) // self.hop
            targets[inside] = np.where(active[j], item.target, IGNORE)
        return features, targets

    def room_and_microphone(
        self, audio: npt.NDArray[np.float32], rng: np.random.Generator
    ) -> npt.NDArray[np.float32]:
        """A whole sequence as another room and microphone would hear it: reverberation
        (``augment.reverb_prob``), then one spectral shaping of a random low-pass
        (``lowpass_prob``) and a random colouring (``eq_prob``)."""
        aug = self.config.augment
        if rng.random() < aug.reverb_prob:
            rt60 = rng.uniform(aug.reverb_rt60_min_s, aug.reverb_rt60_max_s)
            ir = room_impulse(rt60, self.rate, rng, rng.uniform(*REVERB_DIRECT_DB))
            audio = _convolve(audio, ir)
        lowpass = rng.random() < aug.lowpass_prob
        cutoff = rng.uniform(aug.lowpass_min_hz, aug.lowpass_max_hz) if lowpass else self.rate
        colour = rng.random() < aug.eq_prob
        if cutoff >= self.rate / 2 and not colour:
            return audio
        spectrum = np.fft.rfft(audio)
        freqs = np.fft.rfftfreq(len(audio), 1.0 / self.rate)
        gain = _lowpass_gain(freqs, cutoff) if cutoff < self.rate / 2 else np.ones(len(freqs))
        if colour:
            gain = gain * _eq_gain(freqs, aug.eq_db, rng)
        return np.fft.irfft(spectrum * gain, n=len(audio)).astype(np.float32)

    def build_background(
        self, rng: np.random.Generator, seconds: float
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """A long event-free sequence: ``seconds`` of background clips joined (each at its own
        gain), as a stretch of a stream with nothing to alert on; features (T, F) and targets
        (T,), all background."""
        audio = self.room_and_microphone(self._background(self._seconds(seconds), rng), rng)
        features = log_mel(np.clip(audio, -1.0, 1.0), self.config.features)
        return features, np.full(len(features), self.background_index, dtype=np.int64)

    def crop_frames(self) -> int:
        """Frames of one clip-level crop (``augment.event_max_s``; at least 8 for the CNN)."""
        return crop_frames(self.config)

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
        if augment:
            audio = self.room_and_microphone(audio, rng)
        features = log_mel(np.clip(audio, -1.0, 1.0), self.config.features)
        return features[: self.crop_frames()], item.target


def collate_crops(items: Sequence[tuple[npt.NDArray[np.float32], int]]) -> tuple[Any, Any]:
    """Equal-length crops: features (B, T, F) and clip targets (B,)."""
    x = torch.from_numpy(np.stack([f for f, _ in items]))
    return x, torch.tensor([t for _, t in items], dtype=torch.long)


def collate(
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


def crop_frames(config: TrainConfig) -> int:
    """Frames of one clip-level crop (``augment.event_max_s``; at least 8 for the CNN)."""
    feat = config.features
    samples = int(config.augment.event_max_s * feat.sample_rate_hz) // feat.hop_samples
    return max(8, feat.num_frames(max(feat.window_samples, samples * feat.hop_samples)))


def spec_augment(
    x: torch.Tensor, fill: torch.Tensor, config: TrainConfig, rng: np.random.Generator
) -> None:
    """SpecAugment in place on features (B, T, F): ``augment.freq_masks`` bands and
    ``augment.time_masks`` stretches per sequence set to the training mean (``fill`` (F,)),
    which the model's normaliser maps to zero."""
    aug = config.augment
    batch, frames, bands = x.shape
    longest = max(1, round(aug.time_mask_ms / config.features.hop_ms))
    for b in range(batch):
        for _ in range(aug.freq_masks):
            width = int(rng.integers(1, aug.freq_mask_bands + 1))
            first = int(rng.integers(0, max(1, bands - width + 1)))
            x[b, :, first : first + width] = fill[first : first + width]
        for _ in range(aug.time_masks):
            width = int(rng.integers(1, longest + 1))
            first = int(rng.integers(0, max(1, frames - width + 1)))
            x[b, first : first + width, :] = fill


def feature_stats(
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
