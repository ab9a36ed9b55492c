"""Shipped background: precomputed log-mel features of licence-clean recordings, for training
a model on a folder that has no background recordings of its own.

A model learns "no event" from what it hears between events. A user who teaches it one sound
may have no recordings of anything else, and the corpus may not be copied into the project. So
the project ships *features*, not audio (as openWakeWord ships negative features): log-mel frames
of speech in many languages, music and household noise, quantised to 8 bits
(``train/assets/background_bank.npz``, built by ``train/assets/make_background_bank.py`` from the
licence-clean rows of the corpus; sources and licences in ``train/assets/BACKGROUND_BANK.md``).

:class:`BankSequenceBuilder` then builds the same background-event-background training sequences
as :class:`train.sequences.SequenceBuilder`, but in the mel-power domain: the event's mel power (its
audio through the shared front end) is added to a bed of background mel power drawn from the bank
(``P = P_event + k * P_bed``, exact for the expected power of independent sounds), at the same
random gain, event-to-background ratio (measured in-band, over the event's active frames) and
low-pass (a per-band gain) as the audio path. :func:`sequence_builder` picks it when a part of the
split has no background clips.

The bank holds features for one front end (the default preset's); another feature configuration
is refused with a message.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.errors import DatasetError
from edge_detect.features import FeatureConfig, log_mel, mel_filterbank
from train.config import TrainConfig

__all__ = [
    "BANK_PATH",
    "BackgroundBank",
    "BankSequenceBuilder",
    "dequantise",
    "load_bank",
    "quantise",
    "sequence_builder",
    "validation_negatives",
]

log = logging.getLogger(__name__)

BANK_PATH = Path(__file__).resolve().parent / "assets" / "background_bank.npz"
"""The shipped bank."""
QUANT_LOW = -18.5
"""Lowest log-mel value stored (log of the default floor 1e-8 is -18.42)."""
QUANT_HIGH = 9.5
"""Highest log-mel value stored (a full-scale sine is about log(1e4) = 9.2)."""
QUANT_LEVELS = 255
"""8-bit codes: steps of (QUANT_HIGH - QUANT_LOW) / 255 = 0.11 (0.48 dB of power)."""
IGNORE = -100
"""Frame target no loss sees; the value of :data:`train.sequences.IGNORE` (checked by a test)."""
LOWPASS_TAPER_HZ = 400.0
"""Width of the cosine roll-off of the random low-pass, as in the audio path."""


def quantise(features: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.uint8]:
    """Log-mel values -> 8-bit codes (clipped to [QUANT_LOW, QUANT_HIGH])."""
    scaled = (np.asarray(features, dtype=np.float64) - QUANT_LOW) / (QUANT_HIGH - QUANT_LOW)
    return np.clip(np.round(scaled * QUANT_LEVELS), 0, QUANT_LEVELS).astype(np.uint8)


def dequantise(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """8-bit codes -> log-mel values."""
    step = (QUANT_HIGH - QUANT_LOW) / QUANT_LEVELS
    return (QUANT_LOW + codes.astype(np.float32) * step).astype(np.float32)


@dataclass(frozen=True)
class BackgroundBank:
    """Background segments as mel power, each a whole recording (or a piece of one)."""

    segments: list[npt.NDArray[np.float32]]
    """Mel power per segment, (frames, n_mels) float32."""
    sources: list[str]
    """Source recording (group) of each segment."""
    feature_config: FeatureConfig

    @property
    def minutes(self) -> float:
        """Audio time the bank covers, in minutes."""
        frames = sum(len(segment) for segment in self.segments)
        return frames / self.feature_config.frames_per_second / 60.0


def load_bank(feature_config: FeatureConfig, part: str, path: Path = BANK_PATH) -> BackgroundBank:
    """The segments of one part (``"train"`` or ``"val"``: distinct recordings) of the bank.

    Raises
    ------
    DatasetError
        The file is missing or unreadable, or was made for another feature configuration.
    """
    stored = _read_bank(path)
    if stored["feature_config"] != feature_config:
        raise DatasetError(
            f"the shipped background {path.name} holds features for {stored['feature_config']}, "
            f"but this run uses {feature_config}; give the folder a background/ sub-folder of "
            "your own recordings, or use the default preset's [features]"
        )
    if part not in ("train", "val"):
        raise ValueError(f"part must be 'train' or 'val', got {part!r}")
    wanted = 1 if part == "val" else 0
    chosen = [i for i, flag in enumerate(stored["is_val"]) if flag == wanted]
    return BackgroundBank(
        [stored["segments"][i] for i in chosen],
        [stored["sources"][i] for i in chosen],
        feature_config,
    )


@lru_cache(maxsize=2)
def _read_bank(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(
            f"the shipped background features {path} are missing; restore them from git, or "
            "give the folder a background/ sub-folder of your own recordings"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            codes, starts = data["features"], data["starts"]
            is_val, sources = data["is_val"], data["sources"]
            config = FeatureConfig.from_dict(json.loads(str(data["feature_config"])))
    except (OSError, KeyError, ValueError) as exc:
        raise DatasetError(f"{path} is not a readable background bank: {exc}") from None
    power = np.exp(dequantise(codes))  # (frames, n_mels)
    segments = [power[starts[i] : starts[i + 1]] for i in range(len(starts) - 1)]
    return {
        "segments": segments,
        "is_val": [bool(v) for v in is_val],
        "sources": [str(s) for s in sources],
        "feature_config": config,
    }


def _band_centres_hz(config: FeatureConfig) -> npt.NDArray[np.float64]:
    """Centre of mass of each mel filter, in Hz (where a low-pass gain is read for the band)."""
    weights = mel_filterbank(config).T  # (n_mels, n_fft // 2 + 1)
    freqs = np.linspace(0.0, config.sample_rate_hz / 2, weights.shape[1])
    return (weights @ freqs) / np.maximum(weights.sum(axis=1), 1e-12)


class BankSequenceBuilder:
    """Training sequences whose background comes from a :class:`BackgroundBank`.

    Same interface and sequence layout as :class:`train.sequences.SequenceBuilder` (``build``,
    ``clips``): ``before (context) | event crop | after (context)``, targets background outside
    the event and the event's class on its active frames (IGNORE on its quiet ones). The bed runs
    under the whole sequence; the event is added on top of it (with probability
    ``augment.mix_prob``, else it replaces the bed for its span, as an event segment does in the
    audio path).
    """

    def __init__(
        self,
        config: TrainConfig,
        clips: Sequence[Any],
        bank: BackgroundBank,
        background_index: int,
    ) -> None:
        if not bank.segments:
            raise DatasetError("the shipped background part is empty")
        self.config, self.clips, self.bank = config, clips, bank
        self.background_index = background_index
        feat = config.features
        self.rate, self.hop, self.win = feat.sample_rate_hz, feat.hop_samples, feat.window_samples
        self.fps = feat.frames_per_second
        self.centres_hz = _band_centres_hz(feat)

    def _crop(self, item: Any, max_s: float, rng: np.random.Generator) -> tuple[Any, int]:
        """A random crop of whole hops of at most ``max_s``: (audio, first frame)."""
        max_len = max(self.hop, int(max_s * self.rate) // self.hop * self.hop)
        audio = item.audio
        first = 0
        if len(audio) > max_len:
            first = int(rng.integers(0, (len(audio) - max_len) // self.hop + 1))
            audio = audio[first * self.hop : first * self.hop + max_len]
        return np.pad(audio, (0, -len(audio) % self.hop)).astype(np.float32), first

    def _gain_db(self, rng: np.random.Generator) -> float:
        db = self.config.augment.gain_db
        return float(rng.uniform(-db, db))

    def _bed(self, frames: int, rng: np.random.Generator) -> npt.NDArray[np.float32]:
        """``frames`` of background mel power: random crops of random segments, each at a
        random gain, joined."""
        parts, have = [], 0
        while have < frames:
            segment = self.bank.segments[int(rng.integers(len(self.bank.segments)))]
            take = min(frames - have, len(segment))
            start = int(rng.integers(0, len(segment) - take + 1))
            gain = 10.0 ** (self._gain_db(rng) / 10.0)  # a power gain
            parts.append(segment[start : start + take] * np.float32(gain))
            have += take
        return np.concatenate(parts)

    def _context_frames(self, rng: np.random.Generator) -> int:
        aug = self.config.augment
        return max(1, round(rng.uniform(aug.context_min_s, aug.context_max_s) * self.fps))

    def build(
        self, index: int, rng: np.random.Generator, *, augment: bool = True
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Sequence around clip ``index``: features (T, F) float32 and targets (T,) int64."""
        aug, feat = self.config.augment, self.config.features
        item = self.clips[index]
        event, first = self._crop(item, aug.event_max_s, rng)
        n_event = len(event) // self.hop
        # pad so that the event gives one frame per hop, as inside a longer sequence
        padded = np.pad(event, (0, self.win - self.hop))
        event_power = np.exp(log_mel(padded, feat)[:n_event])  # (n_event, F)
        if augment:
            event_power *= np.float32(10.0 ** (self._gain_db(rng) / 10.0))
        active = item.active[first : first + n_event]
        active = np.pad(active, (0, n_event - len(active)))
        before, after = self._context_frames(rng), self._context_frames(rng)
        power = self._bed(before + n_event + after, rng)  # (T, F)
        span = slice(before, before + n_event)
        is_background = item.target == self.background_index
        if not is_background and rng.random() < aug.mix_prob:
            level = event_power[active].sum(axis=1).mean() if active.any() else 1e-12
            bed_level = float(power[span].sum(axis=1).mean()) + 1e-12
            snr_db = rng.uniform(aug.snr_db_min, aug.snr_db_max)
            scale = float(level) / (bed_level * 10.0 ** (snr_db / 10.0))
            power[span] = event_power + power[span] * np.float32(scale)
        else:
            power[span] = event_power
        if augment and rng.random() < aug.lowpass_prob:
            cutoff = rng.uniform(aug.lowpass_min_hz, aug.lowpass_max_hz)
            if cutoff < self.rate / 2:
                gain = np.clip(
                    (cutoff + LOWPASS_TAPER_HZ - self.centres_hz) / LOWPASS_TAPER_HZ, 0, 1
                )
                gain = 0.5 - 0.5 * np.cos(np.pi * gain)  # the audio path's amplitude roll-off
                power *= (gain**2).astype(np.float32)
        features = np.log(np.maximum(power, feat.log_floor)).astype(np.float32)
        targets = np.full(len(features), self.background_index, dtype=np.int64)
        if not is_background:
            targets[span] = np.where(active, item.target, IGNORE)
        return features, targets

    def background_sequence(
        self, frames: int, rng: np.random.Generator
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """A sequence of shipped background alone: features (frames, F), all targets background."""
        power = self._bed(frames, rng)
        features = np.log(np.maximum(power, self.config.features.log_floor)).astype(np.float32)
        return features, np.full(frames, self.background_index, dtype=np.int64)

    def build_background(
        self, rng: np.random.Generator, seconds: float
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """A long event-free sequence of ``seconds`` (the trainer's long background sequences)."""
        return self.background_sequence(max(1, round(seconds * self.fps)), rng)

    def crop(self, index: int, rng: np.random.Generator, *, augment: bool = True) -> Any:
        """Refused: the bank holds features, and the clip-level CNN needs audio."""
        raise DatasetError(
            "the shipped background serves the streaming LSTM only; the clip-level CNN needs "
            "background recordings of your own (a background/ sub-folder)"
        )


NEGATIVE_SEQUENCE_S = 5.0
"""Length of each background-only validation sequence cut from the shipped background, in s."""


def validation_negatives(
    builder: Any, rng: np.random.Generator
) -> list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]]:
    """Background-only validation sequences when ``builder`` draws on the shipped background.

    The trainer chooses each class's threshold on its validation sequences, trading detections
    against false detections on the sequences of other classes. A folder without background has
    no such sequences: every threshold looks free of false alarms and the lowest one wins. These
    sequences (as much audio time as the bank's validation part holds, in pieces of
    :data:`NEGATIVE_SEQUENCE_S`) give the choice something to be wrong on. Empty for a builder
    of background clips, whose validation part has background clips of its own.
    """
    if not isinstance(builder, BankSequenceBuilder):
        return []
    frames = round(NEGATIVE_SEQUENCE_S * builder.fps)
    total = sum(len(segment) for segment in builder.bank.segments)
    return [builder.background_sequence(frames, rng) for _ in range(max(1, total // frames))]


def sequence_builder(
    config: TrainConfig,
    clips: Sequence[Any],
    backgrounds: Sequence[Any],
    background_index: int,
    *,
    part: str,
) -> Any:
    """The trainer's sequence builder for one part of the split: from background clips when
    there are any, else from the shipped background bank's ``part`` (``"train"`` or ``"val"``:
    distinct recordings)."""
    from train.sequences import SequenceBuilder

    if backgrounds:
        return SequenceBuilder(config, clips, backgrounds, background_index)
    bank = load_bank(config.features, part)
    log.info(
        "no background clips for %s sequences: using the shipped background features "
        "(%d segments, %.1f min of speech, music and household noise)",
        part,
        len(bank.segments),
        bank.minutes,
    )
    return BankSequenceBuilder(config, clips, bank, background_index)
