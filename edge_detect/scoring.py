"""Labeled audio through the runtime's own pipeline: clip results, stream scores and figures.

Every clip or stream runs through exactly what ``edge-detect run`` runs (the pipeline of
:func:`~edge_detect.cli_run.build_pipeline` over a file source, as fast as possible), so the
figures are the runtime's, not a re-implementation's:

- :func:`evaluate_clips`: per clip, the class of its highest-scoring alert (``eval clips``);
- :func:`score_streams`: alerts and every frame's scores of test streams, kept once so that
  :mod:`edge_detect.operating` can replay any detection setting on them;
- :func:`evaluate_streams`: event F1, error rate, latency, false alarms per hour, the miss rate
  at false-alarm targets and the operating curves (``eval stream``).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.audio import Audio
from edge_detect.cli_run import build_pipeline
from edge_detect.config import RuntimeConfig
from edge_detect.evaluation import Event, EventBasedMetrics
from edge_detect.model import StreamingModel
from edge_detect.operating import (
    ONSET_COLLAR_S,
    ScoredStreams,
    detected_by,
    miss_rate_at_false_alarms,
    operating_curves,
)
from edge_detect.progress import progress, with_progress
from edge_detect.sources import WavFileSource
from edge_detect.streams import BACKGROUND, TestStream, read_audio

__all__ = [
    "ClipResult",
    "alert_events",
    "evaluate_clips",
    "evaluate_streams",
    "false_alarms_by_source",
    "run_stream",
    "score_streams",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipResult:
    """One clip's outcome in ``eval clips``."""

    path: str
    label: str
    """The manifest's label."""
    truth: str
    """The label as the model's classes see it (unknown labels -> background)."""
    predicted: str
    score: float
    """Peak score of the winning alert (0 when nothing alerted)."""
    alerts: int


@contextmanager
def _quiet_pipeline() -> Iterator[None]:
    """One 'started'/'stopping' per stream or clip would drown the log; --debug keeps them."""
    pipeline_log = logging.getLogger("edge_detect.pipeline")
    previous_level = pipeline_log.level
    if pipeline_log.getEffectiveLevel() > logging.DEBUG:
        pipeline_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        pipeline_log.setLevel(previous_level)


def _evaluate_clip(
    model: StreamingModel, path: Path, label: str, known: set[str], config: RuntimeConfig
) -> ClipResult:
    source = WavFileSource(
        path,
        model.feature_config.sample_rate_hz,
        block_ms=config.block_ms,
        realtime=False,
        audio=read_audio(path),
    )
    pipeline = build_pipeline(config, model, [])
    pipeline.run(source)
    best = max(pipeline.emitted, key=lambda a: a.score, default=None)
    return ClipResult(
        path=str(path),
        label=label,
        truth=label if label in known else BACKGROUND,
        predicted=best.label if best else BACKGROUND,
        score=best.score if best else 0.0,
        alerts=len(pipeline.emitted),
    )


def evaluate_clips(
    model: StreamingModel, rows: list[tuple[Path, str]], config: RuntimeConfig
) -> tuple[list[ClipResult], dict[str, Any]]:
    """Run every clip through the runtime path; returns per-clip results and a summary.

    Per class of the summary: clips, errors (clips of the class predicted as something else; for
    ``background``, a false alert) and false alerts (clips of other classes predicted as it).
    """
    known = set(model.labels)
    mapped = sorted({label for _, label in rows if label not in known})
    with _quiet_pipeline():
        results = [
            _evaluate_clip(model, path, label, known, config)
            for path, label in progress(rows, len(rows), "eval clips")
        ]
    classes = list(model.labels) if BACKGROUND in known else [*model.labels, BACKGROUND]
    per_class = {}
    for name in classes:
        own = [r for r in results if r.truth == name]
        errors = sum(r.predicted != name for r in own)
        false_alerts = sum(r.predicted == name and r.truth != name for r in results)
        per_class[name] = {
            "clips": len(own),
            "errors": errors,
            "error_rate": round(errors / len(own), 4) if own else None,
            "false_alerts": false_alerts,
        }
    correct = sum(r.predicted == r.truth for r in results)
    summary = {
        "model_id": model.model_id,
        "clips": len(results),
        "accuracy": round(correct / len(results), 4),
        "per_class": per_class,
        "mapped_to_background": mapped,
        "confusion": {
            truth: dict(Counter(r.predicted for r in results if r.truth == truth))
            for truth in classes
        },
    }
    return results, summary


def alert_events(alerts: list[Any]) -> list[tuple[Event, float]]:
    """(event on the stream's time axis, stream time at which it was alerted) per alert."""
    out = []
    for alert in alerts:
        onset = float(alert.extra["offset_s"])
        out.append((Event(alert.label, onset, onset + alert.duration_s), onset + alert.duration_s))
    return out


def run_stream(
    model: StreamingModel, stream: TestStream, config: RuntimeConfig
) -> tuple[list[Any], npt.NDArray[np.float32]]:
    """The stream through ``edge-detect run``'s pipeline, as fast as possible: its alerts and
    every frame's scores (frames, classes)."""
    source = WavFileSource(
        f"stream@{stream.ratio_db}dB",
        model.feature_config.sample_rate_hz,
        block_ms=config.block_ms,
        realtime=False,
        audio=Audio(stream.samples, stream.sample_rate_hz),
    )
    pipeline = build_pipeline(config, model, [])
    pipeline.keep_alerts = 1_000_000
    pipeline.keep_scores = True
    pipeline.run(with_progress(source, stream.duration_s, f"scoring {source.name}"))
    scores = np.concatenate(pipeline.scores) if pipeline.scores else np.zeros((0, 0), np.float32)
    return pipeline.emitted, scores


def score_streams(
    model: StreamingModel,
    event_streams: list[TestStream],
    free: TestStream | None,
    config: RuntimeConfig,
) -> ScoredStreams:
    """Run each stream once through :func:`run_stream` (the model runs here, nowhere else)."""
    with _quiet_pipeline():
        events = [(stream, *run_stream(model, stream, config)) for stream in event_streams]
        scored_free = (free, *run_stream(model, free, config)) if free is not None else None
    return ScoredStreams(events, scored_free)


def _latencies(refs: list[Event], alerted: list[tuple[Event, float]], label: str) -> list[float]:
    """Per *detected* reference event of ``label`` (an alert of its class starts from a collar
    before its onset to its end, :func:`~edge_detect.operating.detected_by`): the first such
    alert's time minus the true onset."""
    out = []
    for ref in refs:
        if ref.label != label:
            continue
        times = [at for est, at in alerted if est.label == label and detected_by(ref, est.onset_s)]
        if times:
            out.append(min(times) - ref.onset_s)
    return out


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _stream_figures(stream: TestStream, emitted: list[Any], classes: list[str]) -> dict[str, Any]:
    """F1, ER and latency per class of one event stream, from the pipeline's own alerts."""
    alerted = alert_events(emitted)
    metrics = EventBasedMetrics(classes, t_collar_s=ONSET_COLLAR_S)
    metrics.evaluate(stream.events, [e for e, _ in alerted if e.label in classes])
    rows = {}
    for label in classes:
        counts = metrics.class_wise[label]
        lat = _latencies(stream.events, alerted, label)
        rows[label] = {
            "events": counts.n_ref,
            "alerts": counts.n_sys,
            "hits": counts.tp,
            "detected": len(lat),
            "miss_rate": round(1 - len(lat) / counts.n_ref, 4) if counts.n_ref else None,
            "f1": _num(counts.f1),
            "error_rate": _num(counts.error_rate),
            "onset_to_alert_median_s": round(statistics.median(lat), 3) if lat else None,
        }
    return {
        "ratio_db": stream.ratio_db,
        "duration_s": round(stream.duration_s, 2),
        "overall_f1": _num(metrics.overall.f1),
        "overall_error_rate": _num(metrics.overall.error_rate),
        "per_class": rows,
    }


def false_alarms_by_source(
    stream: TestStream, alerts: list[Any], classes: list[str]
) -> dict[str, dict[str, Any]]:
    """Per kind of sound in an event-free stream (its :attr:`~edge_detect.streams.TestStream.
    segments`): its minutes, and per class the alerts whose onset fell on it and their rate per
    hour of that kind, the loudest first."""
    minutes: dict[str, float] = {}
    for start, end, source in stream.segments:
        minutes[source] = minutes.get(source, 0.0) + (end - start) / 60
    starts = np.array([start for start, _, _ in stream.segments])
    counts: dict[str, Counter[str]] = {source: Counter() for source in minutes}
    for alert in alerts:
        if alert.label not in classes:
            continue
        onset = float(alert.extra["offset_s"])
        index = int(np.searchsorted(starts, onset, side="right")) - 1
        if index >= 0:
            counts[stream.segments[index][2]][alert.label] += 1
    ranked = sorted(minutes, key=lambda source: (-sum(counts[source].values()), source))
    return {
        source: {
            "minutes": round(minutes[source], 2),
            "alerts": sum(counts[source].values()),
            "per_class": {
                label: {
                    "alerts": counts[source][label],
                    "per_hour": round(counts[source][label] * 60 / minutes[source], 2)
                    if minutes[source]
                    else None,
                }
                for label in classes
            },
        }
        for source in ranked
    }


def evaluate_streams(
    model: StreamingModel,
    event_streams: list[TestStream],
    free: TestStream | None,
    config: RuntimeConfig,
) -> dict[str, Any]:
    """Per ratio and class: F1, ER, latency; per class: false alarms per hour on ``free``, the
    miss rate at :data:`~edge_detect.operating.FA_TARGETS_PER_HOUR` and the operating curves."""
    classes = [label for label in model.labels if label != BACKGROUND]
    scored = score_streams(model, event_streams, free, config)
    per_ratio = [_stream_figures(stream, emitted, classes) for stream, emitted, _ in scored.events]
    false_alarms: dict[str, Any] = {}
    by_source: dict[str, Any] = {}
    if scored.free is not None:
        alerts = scored.free[1]
        for label in classes:
            count = sum(a.label == label for a in alerts)
            false_alarms[label] = {
                "alerts": count,
                "per_hour": round(count / scored.free_hours, 3),
            }
        by_source = false_alarms_by_source(scored.free[0], alerts, classes)
    return {
        "model_id": model.model_id,
        "onset_collar_s": ONSET_COLLAR_S,
        "event_free_hours": round(free.duration_s / 3600, 4) if free else 0.0,
        "background_distinct_minutes": round(free.background_s / 60, 2) if free else 0.0,
        "streams": per_ratio,
        "false_alarms": false_alarms,
        "false_alarms_by_source": by_source,
        "miss_rate_at_false_alarms_per_hour": miss_rate_at_false_alarms(model, config, scored),
        "curves": operating_curves(model, config, scored),
    }
