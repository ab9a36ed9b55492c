"""Long test streams built from labeled clips, with known event onsets (BENCHMARKS.md section 2).

A stream is a background *bed* (background recordings concatenated, in a seeded order, repeated
when there is too little of it) with event clips mixed in one after another, separated by seeded
gaps. Each event is scaled to a chosen event-to-background ratio:

- the event's level is the RMS over its *active* frames: 50 ms frames within 30 dB of the clip's
  loudest 50 ms frame (the corpus's ``active_frac`` definition);
- the background's level is its RMS over the same place of the bed (the event's active span);
- the reference event runs from the first to the last active frame (onset and offset in s from
  the stream's start), so a clip's leading silence does not count as event.

:func:`event_free_stream` builds a bed with nothing mixed in, for false alarms per hour: by
default *every* distinct background clip once (a short bed looped to an hour repeats the same
minutes, and false alarms per hour then say more about which recordings landed in the split than
about the model), with the kind of sound (``source``) of every stretch, so that false alarms can
be reported per kind. The same clips, ratio and seed give the same audio, sample for sample.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from edge_detect.audio import Audio, read_wav, resample, to_mono
from edge_detect.errors import AudioError, DatasetError, MissingExtraError
from edge_detect.evaluation import Event

__all__ = [
    "ACTIVE_FRAME_MS",
    "ACTIVE_RANGE_DB",
    "BACKGROUND",
    "LabeledClip",
    "ManifestRow",
    "TestStream",
    "active_span",
    "build_streams",
    "event_free_stream",
    "event_stream",
    "load_clip",
    "read_audio",
    "read_manifest",
    "read_manifests",
    "rms_db",
]

BACKGROUND = "background"
"""The label of 'no event': never alerted; labels a model does not know count as it."""

ACTIVE_FRAME_MS = 50.0
"""Frame length for the active-frame measure, in ms."""
ACTIVE_RANGE_DB = 30.0
"""A frame is active when within this many dB of the clip's loudest frame."""
GAP_S = (2.0, 6.0)
"""Event-free background between two events (from the previous event's clip end), in s."""
LEAD_S = 3.0
"""Background before the first event, in s (lets the model's state settle)."""
SILENCE_DB = -120.0
"""Level floor, so that digital silence has a finite level."""


class ManifestRow(NamedTuple):
    """One clip of a manifest: its audio file, its label and its kind of sound."""

    path: Path
    label: str
    source: str
    """The ``source_kind`` column where the manifest has one (``edge-detect data split`` writes
    it), else the clip's folder: what false alarms are reported by."""


@dataclass(frozen=True)
class LabeledClip:
    """One decoded clip at the stream's rate."""

    samples: npt.NDArray[np.float32]
    label: str
    name: str
    source: str = ""
    """Kind of sound (:attr:`ManifestRow.source`)."""


@dataclass(frozen=True)
class TestStream:
    """A built stream: its audio, its reference events and how each was mixed."""

    samples: npt.NDArray[np.float32]
    sample_rate_hz: int
    events: list[Event]
    """Reference events (the active span of each mixed clip), in onset order."""
    ratio_db: float | None
    """Requested event-to-background ratio (None for an event-free stream)."""
    sources: list[str]
    """The clip behind each reference event (same order as ``events``)."""
    background_s: float = 0.0
    """Distinct background audio the bed was drawn from, in s (less than the stream's length
    when the bed repeats it)."""
    segments: list[tuple[float, float, str]] = field(default_factory=list)
    """The bed's stretches: (start s, end s, source) of every background clip in it."""

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate_hz


def rms_db(samples: npt.ArrayLike) -> float:
    """RMS level in dB full scale (floored at ``SILENCE_DB``)."""
    x = np.asarray(samples, dtype=np.float64)
    if x.size == 0:
        return SILENCE_DB
    power = float(np.mean(x * x))
    return max(SILENCE_DB, 10.0 * np.log10(power)) if power > 0 else SILENCE_DB


def _frame_levels_db(samples: npt.NDArray[np.float32], frame: int) -> npt.NDArray[np.float64]:
    n = max(1, len(samples) // frame)
    x = np.asarray(samples[: n * frame], dtype=np.float64)
    if len(x) < frame:  # a clip shorter than one frame is one frame
        x = np.asarray(samples, dtype=np.float64)
        return np.array([rms_db(x)])
    power = np.mean(x.reshape(n, frame) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return np.maximum(SILENCE_DB, 10.0 * np.log10(power))


def active_span(samples: npt.NDArray[np.float32], sample_rate_hz: int) -> tuple[int, int, float]:
    """(first active sample, end of the last active frame, RMS dB over the active frames)."""
    frame = max(1, round(ACTIVE_FRAME_MS * sample_rate_hz / 1000))
    levels = _frame_levels_db(samples, frame)
    active = np.flatnonzero(levels >= levels.max() - ACTIVE_RANGE_DB)
    start = int(active[0]) * frame
    end = min(len(samples), (int(active[-1]) + 1) * frame)
    if len(samples) < frame:
        end = len(samples)
    power = np.mean([10 ** (levels[i] / 10) for i in active])
    return start, end, max(SILENCE_DB, 10.0 * float(np.log10(power)))


def read_manifests(paths: Sequence[str | Path]) -> list[ManifestRow]:
    """The clips of one or more ``path,label`` CSVs (paths relative to each CSV's folder), in
    order; the kind of sound from a ``source_kind`` column, else the clip's folder."""
    rows: list[ManifestRow] = []
    for name in paths:
        path = Path(name)
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                fields = reader.fieldnames or []
                if "path" not in fields or "label" not in fields:
                    raise DatasetError(
                        f"manifest {path} needs columns 'path' and 'label'; its header is {fields}"
                    )
                found = [
                    ManifestRow(
                        path.parent / row["path"],
                        (row["label"] or "").strip(),
                        row.get("source_kind") or Path(row["path"]).parent.name,
                    )
                    for row in reader
                ]
        except OSError as exc:
            raise DatasetError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise DatasetError(f"manifest {path} is not UTF-8 text; save it as UTF-8 CSV") from None
        if not found:
            raise DatasetError(f"manifest {path} lists no clips")
        empty = [str(row.path) for row in found if not row.label]
        if empty:
            raise DatasetError(f"manifest {path}: clip(s) without a label: {empty[:3]}")
        rows += found
    return rows


def read_manifest(path: str | Path) -> list[tuple[Path, str]]:
    """(audio path, label) rows of a ``path,label`` CSV; paths relative to its folder."""
    return [(row.path, row.label) for row in read_manifests([path])]


def read_audio(path: Path) -> Audio:
    """A WAV with the runtime's reader; other formats (FLAC, OGG) through soundfile."""
    if path.suffix.lower() == ".wav":
        return read_wav(path)
    try:
        import soundfile
    except (ImportError, OSError):
        raise MissingExtraError("soundfile", "eval", f"reading {path.suffix} audio") from None
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioError(f"cannot read audio file {path}: {exc}") from None
    if len(samples) == 0:
        raise AudioError(f"{path}: holds no audio (0 samples)")
    return Audio(np.asarray(samples, dtype=np.float32), int(rate))


def load_clip(path: Path, label: str, sample_rate_hz: int, source: str = "") -> LabeledClip:
    """Decode a clip (:func:`read_audio`) as mono at ``sample_rate_hz``."""
    audio = read_audio(path)
    if len(audio.samples) == 0:
        raise AudioError(f"{path}: holds no audio (0 samples)")
    mono = resample(to_mono(audio.samples), audio.sample_rate_hz, sample_rate_hz)
    return LabeledClip(mono, label, str(path), source)


def _bed(
    backgrounds: Sequence[LabeledClip], length: int | None, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], list[tuple[int, int, str]]]:
    """``length`` samples of background clips in a seeded order (repeated as needed; ``None``:
    every clip once), and the (start, end, source) sample span of every clip in it."""
    if not backgrounds:
        raise DatasetError("a test stream needs background clips; the manifest has none")
    if sum(len(c.samples) for c in backgrounds) == 0:
        raise DatasetError("the background clips hold no audio")
    parts: list[npt.NDArray[np.float32]] = []
    spans: list[tuple[int, int, str]] = []
    filled = 0
    while length is None or filled < length:
        for i in rng.permutation(len(backgrounds)):
            clip = backgrounds[i]
            spans.append((filled, filled + len(clip.samples), clip.source))
            parts.append(clip.samples)
            filled += len(clip.samples)
            if length is not None and filled >= length:
                break
        if length is None:
            break
    bed = np.concatenate(parts)[:length].astype(np.float32)
    return bed, [(a, min(b, len(bed)), src) for a, b, src in spans if a < len(bed)]


def _seconds(clips: Sequence[LabeledClip], sample_rate_hz: int) -> float:
    return round(sum(len(c.samples) for c in clips) / sample_rate_hz, 3)


def event_stream(
    events: Sequence[LabeledClip],
    backgrounds: Sequence[LabeledClip],
    *,
    sample_rate_hz: int,
    ratio_db: float,
    seed: int,
    gap_s: tuple[float, float] = GAP_S,
    lead_s: float = LEAD_S,
) -> TestStream:
    """Every clip of ``events`` once, in a seeded order, mixed into a background bed at
    ``ratio_db`` (event active RMS over background RMS at the same place)."""
    if not events:
        raise DatasetError("a test stream needs event clips; the manifest has none the model knows")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(events))
    gaps = rng.uniform(gap_s[0], gap_s[1], size=len(events))
    placements = []
    cursor = round(lead_s * sample_rate_hz)
    for k, i in enumerate(order):
        placements.append((cursor, events[i]))
        cursor += len(events[i].samples) + round(gaps[k] * sample_rate_hz)
    out, _ = _bed(backgrounds, cursor, rng)
    refs, names = [], []
    for position, clip in placements:
        start, end, event_db = active_span(clip.samples, sample_rate_hz)
        background_db = rms_db(out[position + start : position + end])
        gain = 10 ** ((ratio_db - (event_db - background_db)) / 20)
        out[position : position + len(clip.samples)] += gain * clip.samples
        refs.append(
            Event(
                clip.label,
                round((position + start) / sample_rate_hz, 4),
                round((position + end) / sample_rate_hz, 4),
            )
        )
        names.append(clip.name)
    bed_s = _seconds(backgrounds, sample_rate_hz)
    return TestStream(out, sample_rate_hz, refs, float(ratio_db), names, bed_s)


def event_free_stream(
    backgrounds: Sequence[LabeledClip],
    *,
    sample_rate_hz: int,
    duration_s: float | None,
    seed: int,
) -> TestStream:
    """Background clips in a seeded order, nothing mixed in: every clip once (``duration_s``
    None: no stretch repeats) or ``duration_s`` of them (repeated when there is less)."""
    if duration_s is not None and duration_s <= 0:
        raise DatasetError(f"event-free background must be longer than 0 s, got {duration_s}")
    rng = np.random.default_rng(seed)
    length = None if duration_s is None else round(duration_s * sample_rate_hz)
    bed, spans = _bed(backgrounds, length, rng)
    segments = [(a / sample_rate_hz, b / sample_rate_hz, src) for a, b, src in spans]
    return TestStream(
        bed, sample_rate_hz, [], None, [], _seconds(backgrounds, sample_rate_hz), segments
    )


def build_streams(
    rows: Sequence[ManifestRow],
    labels: Sequence[str],
    *,
    sample_rate_hz: int,
    ratios_db: Sequence[float],
    background_minutes: float | None,
    seed: int,
) -> tuple[list[TestStream], TestStream | None, list[str]]:
    """Decode a manifest's clips and build one event stream per ratio and the event-free one.

    Parameters
    ----------
    rows : sequence of ManifestRow
        The clips, as :func:`read_manifests` returns them.
    labels : sequence of str
        The model's classes: clips of its event classes become events, all others background.
    sample_rate_hz : int
        Rate of the streams (the model's), in Hz.
    ratios_db : sequence of float
        Event-to-background ratio of each event stream, in dB.
    background_minutes : float or None
        Length of the event-free stream, in minutes: None = every distinct background clip
        once (the default of ``eval stream`` and ``calibrate``), 0 = none.
    seed : int
        Seed of the layout: stream ``i`` uses ``seed + i``, the event-free one ``seed + 1000``.

    Returns
    -------
    (event streams, event-free stream or None, labels mapped to background)
    """
    known = {label for label in labels if label != BACKGROUND}
    mapped = sorted({row.label for row in rows if row.label not in known | {BACKGROUND}})
    clips = [load_clip(row.path, row.label, sample_rate_hz, row.source) for row in rows]
    events = [c for c in clips if c.label in known]
    backgrounds = [c for c in clips if c.label not in known]
    streams = [
        event_stream(events, backgrounds, sample_rate_hz=sample_rate_hz, ratio_db=r, seed=seed + i)
        for i, r in enumerate(ratios_db)
    ]
    free = None
    if background_minutes is None or background_minutes > 0:
        free = event_free_stream(
            backgrounds,
            sample_rate_hz=sample_rate_hz,
            duration_s=None if background_minutes is None else 60 * background_minutes,
            seed=seed + 1000,
        )
    return streams, free, mapped
