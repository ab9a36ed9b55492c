"""``edge-detect eval clips``: how a model does on labeled clips, through the runtime's own path.

Each clip of a manifest (CSV with columns ``path,label``; paths relative to the manifest's
folder) is run through exactly what ``edge-detect run`` runs (:func:`build_pipeline` over a file
source, as fast as possible). The clip's predicted class is the class of its highest-scoring
alert, or ``background`` when nothing alerted. Labels the model does not know count as
``background`` and the report says which were mapped so.

Per class: clips, errors (clips of the class predicted as something else: a missed or confused
event; for ``background``, a false alert) and false alerts (clips of other classes predicted as
this class).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.audio import Audio, read_wav
from edge_detect.cli_run import add_model_argument, build_pipeline
from edge_detect.config import RuntimeConfig, load_config
from edge_detect.detect import ClassDetection, ClassDetector
from edge_detect.errors import AudioError, ConfigError, DatasetError, MissingExtraError
from edge_detect.evaluation import Event, EventBasedMetrics
from edge_detect.model import StreamingModel, load_model
from edge_detect.sources import WavFileSource
from edge_detect.streams import TestStream, event_free_stream, event_stream, load_clip

__all__ = [
    "ClipResult",
    "OperatingPoint",
    "ScoredStreams",
    "build_streams",
    "evaluate_clips",
    "evaluate_streams",
    "lowest_threshold",
    "miss_rate_at_false_alarms",
    "operating_curves",
    "operating_point",
    "plot_curves",
    "read_manifest",
    "register",
    "replay_events",
    "replay_onsets",
    "run_stream",
    "score_streams",
    "with_threshold",
]

log = logging.getLogger(__name__)

BACKGROUND = "background"


@dataclass(frozen=True)
class ClipResult:
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


def read_manifest(path: str | Path) -> list[tuple[Path, str]]:
    """(audio path, label) rows of a ``path,label`` CSV; paths relative to its folder."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if "path" not in fields or "label" not in fields:
                raise DatasetError(
                    f"manifest {path} needs columns 'path' and 'label'; its header is {fields}"
                )
            rows = [(path.parent / row["path"], row["label"].strip()) for row in reader]
    except OSError as exc:
        raise DatasetError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    if not rows:
        raise DatasetError(f"manifest {path} lists no clips")
    empty = [str(p) for p, label in rows if not label]
    if empty:
        raise DatasetError(f"manifest {path}: clip(s) without a label: {empty[:3]}")
    return rows


def read_audio(path: Path) -> Audio:
    """A WAV with the runtime's reader; other formats (FLAC, OGG) through soundfile."""
    if path.suffix.lower() == ".wav":
        return read_wav(path)
    try:
        import soundfile
    except (ImportError, OSError):
        raise MissingExtraError("soundfile", "train", f"reading {path.suffix} audio") from None
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioError(f"cannot read audio file {path}: {exc}") from None
    if len(samples) == 0:
        raise AudioError(f"{path}: holds no audio (0 samples)")
    return Audio(samples, int(rate))


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
    """Run every clip through the runtime path; returns per-clip results and a summary."""
    known = set(model.labels)
    mapped = sorted({label for _, label in rows if label not in known})
    with _quiet_pipeline():
        results = [_evaluate_clip(model, path, label, known, config) for path, label in rows]
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


def format_table(summary: dict[str, Any]) -> str:
    lines = [
        f"model {summary['model_id']}: {summary['clips']} clips, "
        f"accuracy {summary['accuracy']:.3f}",
        f"{'class':12} {'clips':>6} {'errors':>7} {'error':>7} {'false alerts':>13}",
    ]
    for name, row in summary["per_class"].items():
        rate = "-" if row["error_rate"] is None else f"{row['error_rate']:.3f}"
        lines.append(
            f"{name:12} {row['clips']:>6} {row['errors']:>7} {rate:>7} {row['false_alerts']:>13}"
        )
    if summary["mapped_to_background"]:
        lines.append(
            "labels the model does not know, counted as background: "
            + ", ".join(summary["mapped_to_background"])
        )
    return "\n".join(lines)


def eval_clips_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if getattr(args, "model", None):
        config = config.replace(model=args.model)
    model = load_model(config.model, threads=config.threads)
    rows = read_manifest(args.manifest)
    log.info("evaluating %s on %d clips", model.model_id, len(rows))
    results, summary = evaluate_clips(model, rows, config)
    print(format_table(summary))
    if args.json:
        payload = {**summary, "results": [asdict(r) for r in results]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", args.json)
    return 0


def register(subparsers: argparse._SubParsersAction, formatter: Any) -> None:
    evaluate = subparsers.add_parser(
        "eval", help="evaluate a model with the runtime's own code path", formatter_class=formatter
    )
    kinds = evaluate.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    clips = kinds.add_parser(
        "clips",
        help="per-clip top class and per-class error on a labeled manifest",
        description=__doc__,
        formatter_class=formatter,
    )
    add_model_argument(clips)
    clips.add_argument(
        "--manifest", required=True, help="CSV with columns path,label (paths relative to it)"
    )
    clips.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    clips.add_argument("--config", metavar="TOML", help="runtime config (detection overrides)")
    clips.set_defaults(func=eval_clips_command)
    register_stream(kinds, formatter)


# -- eval stream -----------------------------------------------------------------------------
STREAM_DOC = """Event F1, error rate, false alarms per hour and alert latency on long streams.

From a labeled manifest (``path,label``): clips of the model's event classes are mixed into a bed
of the background clips (labels the model does not know are background) at each
``--snr-db`` event-to-background ratio (RMS over the event's active 50 ms frames, within 30 dB
of its loudest, against the bed at the same place), one stream per ratio, plus
``--background-minutes`` of event-free bed. Every stream runs through the pipeline of
``edge-detect run`` as fast as possible. Per class: event F1 and error rate with a 0.5 s onset
collar (sed_eval's event-based metric), false alarms per hour on the event-free stream, and the
median time from the true onset to the alert (the audio time at which the alert was decided),
and the miss rate at 0.5 and 1 false alarm per hour (the class's state machine replayed on the
stored scores at the lowest threshold that keeps to that rate on the event-free stream).
``--plot`` draws the miss rate against false alarms per hour as threshold_on sweeps (the JSON
holds the points under ``curves``). ``--seed`` fixes the streams: the same command builds the
same audio. Thresholds for a model come from ``edge-detect calibrate`` on a validation
manifest; evaluating on the manifest a model was calibrated on is warned about.
"""

ONSET_COLLAR_S = 0.5
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
    pipeline.run(source)
    scores = np.concatenate(pipeline.scores) if pipeline.scores else np.zeros((0, 0), np.float32)
    return pipeline.emitted, scores


@dataclass
class ScoredStreams:
    """Every stream run once through the pipeline: alerts and frame scores (frames, classes),
    kept so that any detection setting can be replayed on them without running the model."""

    events: list[tuple[TestStream, list[Any], npt.NDArray[np.float32]]]
    """(stream, alerts, scores) per event stream."""
    free: tuple[TestStream, list[Any], npt.NDArray[np.float32]] | None
    """The event-free stream, if there is one."""

    @property
    def free_hours(self) -> float:
        return self.free[0].duration_s / 3600 if self.free else 0.0

    @property
    def event_scores(self) -> list[tuple[TestStream, npt.NDArray[np.float32]]]:
        return [(stream, scores) for stream, _, scores in self.events]


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


def replay_events(
    scores: npt.NDArray[np.float32], label: str, setting: ClassDetection, hop_ms: float
) -> list[tuple[float, float]]:
    """(onset s, alert s) of each event ``setting`` makes of one class's scores (the pipeline's
    per-class state machine, replayed on stored scores; the alert comes when the onset is
    confirmed)."""
    detector = ClassDetector(label, setting, hop_ms)
    out = []
    for score in scores.tolist():
        event = detector.update(score)
        if event is not None and event.kind == "onset":
            out.append((event.start_frame * hop_ms / 1000, event.end_frame * hop_ms / 1000))
    return out


def replay_onsets(
    scores: npt.NDArray[np.float32], label: str, setting: ClassDetection, hop_ms: float
) -> list[float]:
    """Onset times (s) of the events ``setting`` makes of one class's scores."""
    return [onset for onset, _ in replay_events(scores, label, setting, hop_ms)]


def with_threshold(base: ClassDetection, threshold_on: float) -> ClassDetection:
    """``base`` at another ``threshold_on``; ``threshold_off`` keeps its ratio to it."""
    ratio = base.threshold_off / base.threshold_on if base.threshold_on else 0.0
    return replace(
        base, threshold_on=threshold_on, threshold_off=min(threshold_on * ratio, threshold_on)
    )


@dataclass(frozen=True)
class OperatingPoint:
    """What one class's detection setting does on stored scores."""

    setting: ClassDetection
    false_alarms: int
    """Events on the event-free stream."""
    false_alarms_per_hour: float
    misses: dict[str, int]
    """Per stream (``str(ratio_db)``): reference events with no onset within the collar."""
    events: dict[str, int]
    """Per stream: reference events of the class."""
    latency_s: float | None
    """Median time from the true onset to the alert, over the events found (all streams)."""

    @property
    def miss_rate(self) -> dict[str, float | None]:
        return {
            ratio: round(self.misses[ratio] / n, 4) if n else None
            for ratio, n in self.events.items()
        }

    @property
    def total_misses(self) -> int:
        return sum(self.misses.values())

    @property
    def pooled_miss_rate(self) -> float | None:
        """Misses over all streams' events (None when the class has no events)."""
        total = sum(self.events.values())
        return round(self.total_misses / total, 4) if total else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold_on": self.setting.threshold_on,
            "false_alarms_per_hour": round(self.false_alarms_per_hour, 3),
            "miss_rate": self.miss_rate,
        }


def operating_point(
    scored: ScoredStreams, column: int, label: str, setting: ClassDetection, hop_ms: float
) -> OperatingPoint:
    """Replay ``setting`` on column ``column`` of every stored stream: false alarms per hour on
    the event-free stream, misses (no onset within :data:`ONSET_COLLAR_S`) and latency on the
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
            alerted = [at for onset, at in found if abs(onset - ref.onset_s) <= ONSET_COLLAR_S]
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


def lowest_threshold(
    free_scores: npt.NDArray[np.float32],
    label: str,
    base: ClassDetection,
    hop_ms: float,
    *,
    free_hours: float,
    target_per_hour: float,
) -> float:
    """The lowest ``threshold_on`` (bisection, a resolution of 1/1024; threshold_off keeps its
    ratio) whose false alarms on one class's event-free scores stay at or below the target.
    1.0 when none below it does (1.0 itself may still exceed the target: check it)."""
    low, high = 0.0, 1.0
    for _ in range(THRESHOLD_BISECTIONS):
        middle = (low + high) / 2
        found = len(replay_onsets(free_scores, label, with_threshold(base, middle), hop_ms))
        if found / free_hours <= target_per_hour:
            high = middle
        else:
            low = middle
    return high


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


def _latencies(refs: list[Event], alerted: list[tuple[Event, float]], label: str) -> list[float]:
    """Per reference event of ``label``: first alert of its class that starts from a collar
    before its onset to its offset -> alert time minus true onset."""
    out = []
    for ref in refs:
        if ref.label != label:
            continue
        times = [
            at
            for est, at in alerted
            if est.label == label and ref.onset_s - ONSET_COLLAR_S <= est.onset_s <= ref.offset_s
        ]
        if times:
            out.append(min(times) - ref.onset_s)
    return out


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def evaluate_streams(
    model: StreamingModel,
    event_streams: list[TestStream],
    free: TestStream | None,
    config: RuntimeConfig,
) -> dict[str, Any]:
    """Per ratio and class: F1, ER, latency; per class: false alarms per hour on ``free``, the
    miss rate at :data:`FA_TARGETS_PER_HOUR` and the operating curves."""
    classes = [label for label in model.labels if label != BACKGROUND]
    scored = score_streams(model, event_streams, free, config)
    per_ratio = []
    for stream, emitted, _ in scored.events:
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
                "f1": _num(counts.f1),
                "error_rate": _num(counts.error_rate),
                "onset_to_alert_median_s": round(statistics.median(lat), 3) if lat else None,
            }
        per_ratio.append(
            {
                "ratio_db": stream.ratio_db,
                "duration_s": round(stream.duration_s, 2),
                "overall_f1": _num(metrics.overall.f1),
                "overall_error_rate": _num(metrics.overall.error_rate),
                "per_class": rows,
            }
        )
    false_alarms: dict[str, Any] = {}
    if scored.free is not None:
        alerts = scored.free[1]
        for label in classes:
            count = sum(a.label == label for a in alerts)
            false_alarms[label] = {
                "alerts": count,
                "per_hour": round(count / scored.free_hours, 3),
            }
    return {
        "model_id": model.model_id,
        "onset_collar_s": ONSET_COLLAR_S,
        "event_free_hours": round(free.duration_s / 3600, 4) if free else 0.0,
        "background_distinct_minutes": round(free.background_s / 60, 2) if free else 0.0,
        "streams": per_ratio,
        "false_alarms": false_alarms,
        "miss_rate_at_false_alarms_per_hour": miss_rate_at_false_alarms(model, config, scored),
        "curves": operating_curves(model, config, scored),
    }


def format_stream_table(summary: dict[str, Any]) -> str:
    def show(value: Any, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"model {summary['model_id']}: onset collar {summary['onset_collar_s']} s, "
        f"event-free {summary['event_free_hours']:.3f} h "
        f"(from {summary['background_distinct_minutes']:.1f} min of distinct background)",
        f"{'ratio dB':>8} {'class':12} {'events':>6} {'alerts':>6} {'hits':>5} {'F1':>6} "
        f"{'ER':>6} {'latency s':>9} {'FA/h':>7}",
    ]
    for stream in summary["streams"]:
        for label, row in stream["per_class"].items():
            fa = summary["false_alarms"].get(label, {}).get("per_hour")
            lines.append(
                f"{stream['ratio_db']:>8.1f} {label:12} {row['events']:>6} {row['alerts']:>6} "
                f"{row['hits']:>5} {show(row['f1']):>6} {show(row['error_rate']):>6} "
                f"{show(row['onset_to_alert_median_s'], '.2f'):>9} {show(fa, '.2f'):>7}"
            )
    operating = summary.get("miss_rate_at_false_alarms_per_hour") or {}
    for label, targets in operating.items():
        for target, row in targets.items():
            misses = ", ".join(f"{show(v)} at {k} dB" for k, v in row["miss_rate"].items())
            lines.append(
                f"{label}: at <= {target} false alarms/h (threshold_on {row['threshold_on']:.3f})"
                f" misses {misses}"
            )
    return "\n".join(lines)


def build_streams(
    model: StreamingModel,
    rows: list[tuple[Path, str]],
    *,
    ratios_db: list[float],
    background_minutes: float,
    seed: int,
) -> tuple[list[TestStream], TestStream | None, list[str]]:
    """Decode the manifest's clips and build one event stream per ratio and the event-free one;
    also returns the labels mapped to background."""
    rate = model.feature_config.sample_rate_hz
    known = {label for label in model.labels if label != BACKGROUND}
    mapped = sorted({label for _, label in rows if label not in known and label != BACKGROUND})
    clips = [load_clip(path, label, rate) for path, label in rows]
    events = [c for c in clips if c.label in known]
    backgrounds = [c for c in clips if c.label not in known]
    streams = [
        event_stream(events, backgrounds, sample_rate_hz=rate, ratio_db=ratio, seed=seed + i)
        for i, ratio in enumerate(ratios_db)
    ]
    free = None
    if background_minutes > 0:
        free = event_free_stream(
            backgrounds, sample_rate_hz=rate, duration_s=60 * background_minutes, seed=seed + 1000
        )
    return streams, free, mapped


def plot_curves(summary: dict[str, Any], path: str | Path) -> None:
    """Miss rate against false alarms per hour (log axis): one panel per class, one line per
    event-to-background ratio, the targets :data:`FA_TARGETS_PER_HOUR` as dashed lines and the
    current operating point as stars. Needs matplotlib (the ``train`` extra)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingExtraError("matplotlib", "train", "eval stream --plot") from None
    curves = summary.get("curves") or {}
    if not curves:
        raise ConfigError("--plot needs an event-free stream: set --background-minutes > 0")
    hours = summary["event_free_hours"]
    # a stream of H hours cannot show fewer than 1/H false alarms per hour but 0: draw 0 here
    zero = min(min(FA_TARGETS_PER_HOUR), 1 / hours) / 5
    figure = Figure(figsize=(4.2 * len(curves), 3.8), layout="constrained")
    axes = figure.subplots(1, len(curves), squeeze=False)[0]
    for ax, (label, curve) in zip(axes, curves.items(), strict=True):
        ratios = list(curve["current"]["miss_rate"])
        for index, ratio in enumerate(ratios):
            color = f"C{index}"
            # in threshold order: a curve traced by the threshold, not sorted by x
            points = [
                (max(p["false_alarms_per_hour"], zero), p["miss_rate"][ratio])
                for p in curve["points"]
                if p["miss_rate"][ratio] is not None
            ]
            if not points:
                continue
            xs, ys = [x for x, _ in points], [y for _, y in points]
            ax.plot(xs, ys, marker=".", color=color, label=f"{float(ratio):+g} dB")
            current = curve["current"]
            if current["miss_rate"][ratio] is not None:
                ax.plot(
                    max(current["false_alarms_per_hour"], zero),
                    current["miss_rate"][ratio],
                    marker="*",
                    markersize=13,
                    color=color,
                    linestyle="none",
                )
        for target in FA_TARGETS_PER_HOUR:
            ax.axvline(target, color="grey", linestyle="--", linewidth=0.8)
        setting = curve["setting"]
        ax.set_title(
            f"{label} (smoothing {setting['smoothing_ms']:g} ms, confirm "
            f"{setting['confirm_ms']:g} ms)\n* = current threshold_on {setting['threshold_on']:g}",
            fontsize=9,
        )
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"false alarms per hour (0 drawn at {zero:.2g})")
        ax.set_ylabel("miss rate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, title="event-to-background", title_fontsize=8)
    figure.suptitle(
        f"{summary['model_id']}: miss rate vs false alarms on {hours:.2f} h event-free "
        "(threshold_on sweep)"
    )
    figure.savefig(str(path), dpi=110)


def streams_from_args(
    model: StreamingModel, rows: list[tuple[Path, str]], args: argparse.Namespace
) -> tuple[list[TestStream], TestStream | None, list[str]]:
    """:func:`build_streams` with the options of :func:`add_stream_arguments`."""
    return build_streams(
        model,
        rows,
        ratios_db=args.snr_db,
        background_minutes=args.background_minutes,
        seed=args.seed,
    )


def _checked_stream_args(args: argparse.Namespace) -> None:
    if args.background_minutes < 0:
        raise ConfigError(f"--background-minutes must be >= 0, got {args.background_minutes}")


def eval_stream_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if getattr(args, "model", None):
        config = config.replace(model=args.model)
    _checked_stream_args(args)
    if args.plot and args.background_minutes == 0:
        raise ConfigError("--plot needs an event-free stream: set --background-minutes > 0")
    model = load_model(config.model, threads=config.threads)
    rows = read_manifest(args.manifest)
    from edge_detect.calibrate import warn_if_calibrated_on

    warn_if_calibrated_on(model, args.manifest)
    streams, free, mapped = streams_from_args(model, rows, args)
    log.info("evaluating %s on %d stream(s)", model.model_id, len(streams) + (free is not None))
    summary = evaluate_streams(model, streams, free, config)
    summary["seed"] = args.seed
    summary["mapped_to_background"] = mapped
    print(format_stream_table(summary))
    if args.json:
        payload = {
            **summary,
            "reference": [
                {
                    "ratio_db": s.ratio_db,
                    "events": [asdict(e) for e in s.events],
                    "clips": s.sources,
                }
                for s in streams
            ],
        }
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", args.json)
    if args.plot:
        plot_curves(summary, args.plot)
        log.info("wrote %s", args.plot)
    return 0


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The stream options ``eval stream`` and ``calibrate`` share (the same streams either way)."""
    add_model_argument(parser)
    parser.add_argument(
        "--manifest", required=True, help="CSV with columns path,label (paths relative to it)"
    )
    parser.add_argument(
        "--snr-db",
        type=float,
        nargs="+",
        default=[-6.0, 0.0, 6.0],
        metavar="DB",
        help="event-to-background ratios, one stream each",
    )
    parser.add_argument(
        "--background-minutes",
        type=float,
        default=60.0,
        help="length of the event-free stream for false alarms per hour (0 = none)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the streams' layout")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    parser.add_argument("--config", metavar="TOML", help="runtime config (detection overrides)")


def register_stream(kinds: argparse._SubParsersAction, formatter: Any) -> None:
    stream = kinds.add_parser(
        "stream",
        help="event F1, false alarms per hour and latency on long mixed streams",
        description=STREAM_DOC,
        formatter_class=formatter,
    )
    add_stream_arguments(stream)
    stream.add_argument(
        "--plot",
        metavar="PNG",
        help="also draw miss rate against false alarms per hour, per class (needs matplotlib)",
    )
    stream.set_defaults(func=eval_stream_command)
