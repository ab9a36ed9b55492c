"""Operating points on stored scores: the detector replayed, thresholds searched, curves drawn.

A model's frame scores are computed once (``edge_detect.scoring`` runs the runtime's pipeline over
labeled streams and keeps them); everything here works on those stored scores with plain numpy
arrays, so any detection setting can be tried without running the model again:

- :func:`replay_events` runs one class's state machine (:class:`~edge_detect.detect.
  ClassDetector`, the very code of ``edge-detect run``) over a score array;
- :func:`lowest_threshold` finds the lowest ``threshold_on`` that keeps the false alarms on
  event-free scores at or below a target (what ``calibrate``, ``eval stream`` and a trainer
  choosing detection defaults all need);
- :func:`operating_point` and :func:`operating_curves` say what a setting does on every stored
  stream: false alarms per hour, misses, latency;
- :func:`calibrate` searches a small grid of settings per class for a false-alarm target, and
  :func:`calibration_record` is what ``edge-detect calibrate`` stores in the model.

A trainer needs only :func:`replay_events` / :func:`lowest_threshold`: numpy arrays, a
:class:`~edge_detect.detect.ClassDetection` and the hop, no model or runtime config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.config import RuntimeConfig
from edge_detect.detect import ClassDetection, ClassDetector
from edge_detect.errors import ConfigError, DatasetError
from edge_detect.evaluation import Event
from edge_detect.model import StreamingModel
from edge_detect.streams import BACKGROUND, TestStream

__all__ = [
    "CALIBRATION_KEY",
    "CONFIRM_MS_GRID",
    "CURVE_THRESHOLDS",
    "FA_TARGETS_PER_HOUR",
    "ONSET_COLLAR_S",
    "SMOOTHING_MS_GRID",
    "THRESHOLD_BISECTIONS",
    "ClassCalibration",
    "OperatingPoint",
    "ScoredStreams",
    "calibrate",
    "calibrate_class",
    "calibration_record",
    "detected_by",
    "file_sha256",
    "lowest_threshold",
    "miss_rate_at_false_alarms",
    "model_calibration",
    "operating_curves",
    "operating_point",
    "replay_events",
    "replay_onsets",
    "warn_if_calibrated_on",
    "with_threshold",
]

log = logging.getLogger(__name__)

ONSET_COLLAR_S = 0.5
"""The event F1's onset collar (sed_eval's): an alert whose onset lies within this many seconds
of a true onset is a *hit*. An event is *detected* (the miss rate's criterion, what a user of an
alerting system counts) when an alert of its class starts between this many seconds before its
onset and its end: a cry alerted 1.4 s in is late (see the latency), not missed."""
FA_TARGETS_PER_HOUR = (0.5, 1.0)
"""False alarms per hour at which the miss rate is reported."""
THRESHOLD_BISECTIONS = 10
"""Bisection steps on threshold_on (a resolution of 1/1024)."""
CURVE_THRESHOLDS = (
    *(round(0.05 * i, 2) for i in range(1, 20)),
    0.97,
    0.98,
    0.99,
    0.995,
    0.999,
)
"""threshold_on values of the operating curves (probabilities crowd near 1: finer there)."""
CALIBRATION_KEY = "edge_detect.calibration"
"""ONNX metadata key of the calibration record (JSON); the loader ignores it."""
CONFIRM_MS_GRID = (50.0, 100.0, 200.0)
"""confirm_ms values tried per class (with the model's own), in ms."""
SMOOTHING_MS_GRID = (100.0, 250.0, 500.0)
"""smoothing_ms values tried per class (with the model's own), in ms."""

Scores = npt.NDArray[np.float32]


# -- replaying the detector on stored scores ---------------------------------------------------
def replay_events(
    scores: Scores, label: str, setting: ClassDetection, hop_ms: float
) -> list[tuple[float, float]]:
    """The events one class's state machine makes of its stored scores.

    Parameters
    ----------
    scores : ndarray, shape (frames,)
        One class's frame scores (probabilities), one per hop, from the start of a stream.
    label : str
        The class (names the events; does not change them).
    setting : ClassDetection
        Thresholds, smoothing, confirmation and refractory time to replay.
    hop_ms : float
        Distance between frames, in ms (``FeatureConfig.hop_ms``).

    Returns
    -------
    list of (float, float)
        (onset s, alert s) per event: the first frame at or above ``threshold_on`` and the time
        the onset was confirmed (when ``edge-detect run`` would alert), from the stream's start.
    """
    detector = ClassDetector(label, setting, hop_ms)
    out = []
    for score in scores.tolist():
        event = detector.update(score)
        if event is not None and event.kind == "onset":
            out.append((event.start_frame * hop_ms / 1000, event.end_frame * hop_ms / 1000))
    return out


def replay_onsets(
    scores: Scores, label: str, setting: ClassDetection, hop_ms: float
) -> list[float]:
    """Onset times (s) of the events ``setting`` makes of one class's scores
    (:func:`replay_events` without the alert times)."""
    return [onset for onset, _ in replay_events(scores, label, setting, hop_ms)]


def with_threshold(base: ClassDetection, threshold_on: float) -> ClassDetection:
    """``base`` at another ``threshold_on``; ``threshold_off`` keeps its ratio to it."""
    ratio = base.threshold_off / base.threshold_on if base.threshold_on else 0.0
    return replace(
        base, threshold_on=threshold_on, threshold_off=min(threshold_on * ratio, threshold_on)
    )


def _count_events(
    free_scores: Scores | Sequence[Scores], label: str, setting: ClassDetection, hop_ms: float
) -> int:
    if isinstance(free_scores, np.ndarray):
        return len(replay_events(free_scores, label, setting, hop_ms))
    return sum(len(replay_events(part, label, setting, hop_ms)) for part in free_scores)


def lowest_threshold(
    free_scores: Scores | Sequence[Scores],
    label: str,
    base: ClassDetection,
    hop_ms: float,
    *,
    free_hours: float,
    target_per_hour: float,
) -> float:
    """The lowest ``threshold_on`` whose false alarms on event-free scores keep to a target.

    Bisection over [0, 1] (:data:`THRESHOLD_BISECTIONS` steps, a resolution of 1/1024);
    ``threshold_off`` keeps its ratio to ``threshold_on`` (:func:`with_threshold`), the other
    settings of ``base`` are kept.

    Parameters
    ----------
    free_scores : ndarray of shape (frames,), or a sequence of them
        One class's scores on event-free audio. A sequence holds separate recordings: each is
        replayed from a fresh detector state.
    label : str
        The class.
    base : ClassDetection
        The setting whose ``threshold_on`` is searched.
    hop_ms : float
        Distance between frames, in ms.
    free_hours : float
        Length of the event-free audio, in hours (> 0).
    target_per_hour : float
        False alarms per hour allowed.

    Returns
    -------
    float
        The threshold; 1.0 when none below it keeps to the target (1.0 itself may still exceed
        it: check with :func:`replay_events`).
    """
    if not free_hours > 0:
        raise ConfigError(f"free_hours must be > 0 (event-free audio), got {free_hours}")
    low, high = 0.0, 1.0
    for _ in range(THRESHOLD_BISECTIONS):
        middle = (low + high) / 2
        found = _count_events(free_scores, label, with_threshold(base, middle), hop_ms)
        if found / free_hours <= target_per_hour:
            high = middle
        else:
            low = middle
    return high


def detected_by(ref: Event, alert_onset_s: float) -> bool:
    """Does an alert of ``ref``'s class whose onset is ``alert_onset_s`` detect it? Yes when it
    starts between :data:`ONSET_COLLAR_S` before the event's onset and the event's end."""
    return ref.onset_s - ONSET_COLLAR_S <= alert_onset_s <= ref.offset_s


# -- operating points on scored streams --------------------------------------------------------
@dataclass
class ScoredStreams:
    """Every stream run once through the pipeline: alerts and frame scores (frames, classes),
    kept so that any detection setting can be replayed on them without running the model."""

    events: list[tuple[TestStream, list[Any], Scores]]
    """(stream, alerts, scores) per event stream."""
    free: tuple[TestStream, list[Any], Scores] | None
    """The event-free stream, if there is one."""

    @property
    def free_hours(self) -> float:
        """Length of the event-free stream, in hours (0 without one)."""
        return self.free[0].duration_s / 3600 if self.free else 0.0

    @property
    def event_scores(self) -> list[tuple[TestStream, Scores]]:
        """(stream, scores) per event stream."""
        return [(stream, scores) for stream, _, scores in self.events]


@dataclass(frozen=True)
class OperatingPoint:
    """What one class's detection setting does on stored scores."""

    setting: ClassDetection
    false_alarms: int
    """Events on the event-free stream."""
    false_alarms_per_hour: float
    misses: dict[str, int]
    """Per stream (``str(ratio_db)``): reference events not detected (:func:`detected_by`)."""
    events: dict[str, int]
    """Per stream: reference events of the class."""
    latency_s: float | None
    """Median time from the true onset to the alert, over the events found (all streams)."""

    @property
    def miss_rate(self) -> dict[str, float | None]:
        """Per stream: misses over the class's events (None when it has none there)."""
        return {
            ratio: round(self.misses[ratio] / n, 4) if n else None
            for ratio, n in self.events.items()
        }

    @property
    def total_misses(self) -> int:
        """Misses over all streams."""
        return sum(self.misses.values())

    @property
    def pooled_miss_rate(self) -> float | None:
        """Misses over all streams' events (None when the class has no events)."""
        total = sum(self.events.values())
        return round(self.total_misses / total, 4) if total else None

    def to_dict(self) -> dict[str, Any]:
        """The threshold, false alarms per hour and miss rates, as ``eval stream`` writes them."""
        return {
            "threshold_on": self.setting.threshold_on,
            "false_alarms_per_hour": round(self.false_alarms_per_hour, 3),
            "miss_rate": self.miss_rate,
        }


def operating_point(
    scored: ScoredStreams, column: int, label: str, setting: ClassDetection, hop_ms: float
) -> OperatingPoint:
    """Replay ``setting`` on column ``column`` of every stored stream: false alarms per hour on
    the event-free stream, misses (events not detected, :func:`detected_by`) and latency on the
    event streams."""
    false_alarms = 0
    if scored.free is not None:
        false_alarms = len(replay_onsets(scored.free[2][:, column], label, setting, hop_ms))
    misses, events, latencies = {}, {}, []
    for stream, scores in scored.event_scores:
        found = replay_events(scores[:, column], label, setting, hop_ms)
        refs = [e for e in stream.events if e.label == label]
        missed = 0
        for ref in refs:
            alerted = [at for onset, at in found if detected_by(ref, onset)]
            if alerted:
                latencies.append(min(alerted) - ref.onset_s)
            else:
                missed += 1
        misses[str(stream.ratio_db)] = missed
        events[str(stream.ratio_db)] = len(refs)
    hours = scored.free_hours
    return OperatingPoint(
        setting=setting,
        false_alarms=false_alarms,
        false_alarms_per_hour=false_alarms / hours if hours else math.nan,
        misses=misses,
        events=events,
        latency_s=statistics.median(latencies) if latencies else None,
    )


def miss_rate_at_false_alarms(
    model: StreamingModel, config: RuntimeConfig, scored: ScoredStreams
) -> dict[str, dict[str, Any]]:
    """Per class and target false alarms per hour: the lowest ``threshold_on``
    (:func:`lowest_threshold`) that keeps to the target on the event-free stream, and the share
    of each stream's events it misses. Figures on the test stream: an operating curve, not a
    calibration (``edge-detect calibrate`` searches the same way on a validation stream)."""
    if scored.free is None:
        return {}
    settings = config.detection_for(model.detection)
    hop_ms = model.feature_config.hop_ms
    out: dict[str, dict[str, Any]] = {}
    for column, label in enumerate(model.labels):
        if label == BACKGROUND:
            continue
        rows = {}
        for target in FA_TARGETS_PER_HOUR:
            threshold = lowest_threshold(
                scored.free[2][:, column],
                label,
                settings[label],
                hop_ms,
                free_hours=scored.free_hours,
                target_per_hour=target,
            )
            point = operating_point(
                scored, column, label, with_threshold(settings[label], threshold), hop_ms
            )
            rows[str(target)] = {"threshold_on": threshold, "miss_rate": point.miss_rate}
        out[label] = rows
    return out


def operating_curves(
    model: StreamingModel, config: RuntimeConfig, scored: ScoredStreams
) -> dict[str, dict[str, Any]]:
    """Per class: miss rate per stream against false alarms per hour, as ``threshold_on``
    sweeps :data:`CURVE_THRESHOLDS` (the class's other settings as configured), and the
    current operating point."""
    if scored.free is None:
        return {}
    settings = config.detection_for(model.detection)
    hop_ms = model.feature_config.hop_ms
    out: dict[str, dict[str, Any]] = {}
    for column, label in enumerate(model.labels):
        if label == BACKGROUND:
            continue
        base = settings[label]
        points = [
            operating_point(scored, column, label, with_threshold(base, t), hop_ms).to_dict()
            for t in CURVE_THRESHOLDS
        ]
        out[label] = {
            "setting": base.to_dict(),
            "current": operating_point(scored, column, label, base, hop_ms).to_dict(),
            "points": points,
        }
    return out


# -- calibration: a setting per class for a false-alarm target ---------------------------------
@dataclass(frozen=True)
class ClassCalibration:
    """The setting chosen for one class and what it does on the validation streams."""

    label: str
    chosen: OperatingPoint
    met: bool
    """False: no setting kept to the target (the fewest false alarms, at threshold_on 1.0)."""
    tried: int
    """Settings compared (grid points)."""

    def to_dict(self) -> dict[str, Any]:
        """The class's entry of the calibration record."""
        point = self.chosen
        return {
            "met": self.met,
            "setting": point.setting.to_dict(),
            "val_false_alarms": point.false_alarms,
            "val_false_alarms_per_hour": round(point.false_alarms_per_hour, 3),
            "val_events": sum(point.events.values()),
            "val_miss_rate": point.pooled_miss_rate,
            "val_miss_rate_per_ratio": point.miss_rate,
            "val_onset_to_alert_median_s": (
                None if point.latency_s is None else round(point.latency_s, 3)
            ),
            "settings_tried": self.tried,
        }


def _grid(values: tuple[float, ...], own: float) -> list[float]:
    return sorted({*values, own})


def _rank(point: OperatingPoint) -> tuple[float, ...]:
    """Fewer misses, then a quicker alert, then a lower threshold (and shorter settings)."""
    latency = math.inf if point.latency_s is None else point.latency_s
    s = point.setting
    return (point.total_misses, latency, s.threshold_on, s.confirm_ms, s.smoothing_ms)


def calibrate_class(
    scored: ScoredStreams,
    column: int,
    label: str,
    base: ClassDetection,
    hop_ms: float,
    *,
    target_per_hour: float,
) -> ClassCalibration:
    """Search :data:`CONFIRM_MS_GRID` x :data:`SMOOTHING_MS_GRID` (and ``base``'s own values),
    each at its lowest threshold meeting the target (:func:`lowest_threshold`, the code
    ``eval stream`` reports the miss rate at a target with).

    The setting that misses the fewest events wins (ties: the lower median latency, then the
    lower threshold). When none meets the target, the one with the fewest false alarms is
    returned with ``met`` False."""
    if scored.free is None:
        raise DatasetError("calibration needs an event-free stream (--background-minutes > 0)")
    free_scores = scored.free[2][:, column]
    points = []
    for smoothing_ms in _grid(SMOOTHING_MS_GRID, base.smoothing_ms):
        for confirm_ms in _grid(CONFIRM_MS_GRID, base.confirm_ms):
            candidate = replace(base, smoothing_ms=smoothing_ms, confirm_ms=confirm_ms)
            threshold = lowest_threshold(
                free_scores,
                label,
                candidate,
                hop_ms,
                free_hours=scored.free_hours,
                target_per_hour=target_per_hour,
            )
            setting = with_threshold(candidate, threshold)
            points.append(operating_point(scored, column, label, setting, hop_ms))
    meeting = [p for p in points if p.false_alarms_per_hour <= target_per_hour]
    if meeting:
        return ClassCalibration(label, min(meeting, key=_rank), True, len(points))
    fewest = min(points, key=lambda p: (p.false_alarms, *_rank(p)))
    return ClassCalibration(label, fewest, False, len(points))


def calibrate(
    model: StreamingModel,
    config: RuntimeConfig,
    scored: ScoredStreams,
    *,
    target_per_hour: float,
) -> tuple[dict[str, ClassCalibration], dict[str, ClassDetection]]:
    """Per event class: the chosen setting; and the model's full detection table with them
    (``background`` and any other disabled class as they were)."""
    if not target_per_hour > 0:
        raise ConfigError(
            f"--target-fa-per-hour must be > 0, got {target_per_hour}; 0 false alarms cannot "
            "be shown on a finite stream (try 0.5)"
        )
    settings = config.detection_for(model.detection)
    hop_ms = model.feature_config.hop_ms
    results = {}
    detection = dict(settings)
    for column, label in enumerate(model.labels):
        if label == BACKGROUND or not settings[label].enabled:
            continue
        result = calibrate_class(
            scored, column, label, settings[label], hop_ms, target_per_hour=target_per_hour
        )
        if not result.met:
            log.warning(
                "%s: no setting keeps to %g false alarms per hour on the validation stream "
                "(fewest: %d in %.2f h at threshold_on 1.0); kept enabled at threshold 1.0",
                label,
                target_per_hour,
                result.chosen.false_alarms,
                scored.free_hours,
            )
        results[label] = result
        detection[label] = result.chosen.setting
    return results, detection


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def calibration_record(
    model: StreamingModel,
    results: dict[str, ClassCalibration],
    scored: ScoredStreams,
    *,
    target_per_hour: float,
    manifest: Path,
    seed: int,
) -> dict[str, Any]:
    """The ``edge_detect.calibration`` metadata entry (also the ``--json`` output)."""
    free = scored.free
    return {
        "target_false_alarms_per_hour": target_per_hour,
        "manifest": manifest.name,
        "manifest_sha256": file_sha256(manifest),
        "seed": seed,
        "ratios_db": [stream.ratio_db for stream, _, _ in scored.events],
        "event_free_hours": round(scored.free_hours, 4),
        "background_distinct_minutes": round(free[0].background_s / 60, 2) if free else 0.0,
        "source_model_sha256": model.sha256,
        "grid": {"confirm_ms": list(CONFIRM_MS_GRID), "smoothing_ms": list(SMOOTHING_MS_GRID)},
        "classes": {label: result.to_dict() for label, result in results.items()},
    }


def model_calibration(model: StreamingModel) -> dict[str, Any] | None:
    """The calibration record of a model, or None (not calibrated, or unreadable)."""
    raw = model.metadata.get(CALIBRATION_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError:
        log.warning("%s: its calibration record is not valid JSON; ignored", model.path)
        return None
    return record if isinstance(record, dict) else None


def warn_if_calibrated_on(model: StreamingModel, manifest: str | Path) -> bool:
    """Warn (and return True) when ``manifest`` is the file ``model`` was calibrated on."""
    record = model_calibration(model)
    path = Path(manifest)
    if not record or not path.is_file() or record.get("manifest_sha256") != file_sha256(path):
        return False
    log.warning(
        "%s is the manifest %s was calibrated on (same SHA-256): these figures are the "
        "calibration's, not a test. Never tune on the test stream: evaluate on a held-out "
        "manifest (edge-detect data split writes one)",
        path,
        model.model_id,
    )
    return True
