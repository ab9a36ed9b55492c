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
    "build_streams",
    "evaluate_clips",
    "evaluate_streams",
    "miss_rate_at_false_alarms",
    "read_manifest",
    "register",
    "replay_onsets",
    "run_stream",
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
    results = []
    # one 'started'/'stopping' per clip would drown the log; alerts stay visible with --debug
    pipeline_log = logging.getLogger("edge_detect.pipeline")
    previous_level = pipeline_log.level
    if pipeline_log.getEffectiveLevel() > logging.DEBUG:
        pipeline_log.setLevel(logging.WARNING)
    try:
        for path, label in rows:
            results.append(_evaluate_clip(model, path, label, known, config))
    finally:
        pipeline_log.setLevel(previous_level)
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
``--seed`` fixes the streams: the same command builds the same audio.
"""

ONSET_COLLAR_S = 0.5
FA_TARGETS_PER_HOUR = (0.5, 1.0)
"""False alarms per hour at which the miss rate is reported."""
THRESHOLD_BISECTIONS = 10
"""Bisection steps on threshold_on (a resolution of 1/1024)."""


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


def replay_onsets(
    scores: npt.NDArray[np.float32], label: str, setting: ClassDetection, hop_ms: float
) -> list[float]:
    """Onset times (s) of the events ``setting`` makes of one class's scores (the pipeline's
    per-class state machine, replayed on stored scores)."""
    detector = ClassDetector(label, setting, hop_ms)
    out = []
    for score in scores.tolist():
        event = detector.update(score)
        if event is not None and event.kind == "onset":
            out.append(event.start_frame * hop_ms / 1000)
    return out


def miss_rate_at_false_alarms(
    model: StreamingModel,
    config: RuntimeConfig,
    event_runs: list[tuple[TestStream, npt.NDArray[np.float32]]],
    free_scores: npt.NDArray[np.float32],
    free_hours: float,
) -> dict[str, dict[str, Any]]:
    """Per class and target false alarms per hour: the lowest ``threshold_on`` (bisection; the
    class's threshold_off keeps its ratio to it) whose false alarms on the event-free scores
    stay at or below the target, and the share of each stream's events it misses (no onset
    within the collar). Figures on the test stream: an operating curve, not a calibration."""
    settings = config.detection_for(model.detection)
    hop_ms = model.feature_config.hop_ms
    out: dict[str, dict[str, Any]] = {}
    for column, label in enumerate(model.labels):
        if label == BACKGROUND:
            continue
        base = settings[label]
        off_ratio = base.threshold_off / base.threshold_on if base.threshold_on else 0.0

        def setting(threshold: float, base: ClassDetection = base, ratio: float = off_ratio):
            return replace(base, threshold_on=threshold, threshold_off=threshold * ratio)

        def false_alarms(threshold: float, column: int = column, label: str = label) -> int:
            return len(replay_onsets(free_scores[:, column], label, setting(threshold), hop_ms))

        rows = {}
        for target in FA_TARGETS_PER_HOUR:
            low, high = 0.0, 1.0  # false alarms at `high` never exceed the target
            for _ in range(THRESHOLD_BISECTIONS):
                middle = (low + high) / 2
                if false_alarms(middle) / free_hours <= target:
                    high = middle
                else:
                    low = middle
            misses = {}
            for stream, scores in event_runs:
                onsets = replay_onsets(scores[:, column], label, setting(high), hop_ms)
                refs = [e for e in stream.events if e.label == label]
                missed = sum(
                    not any(abs(o - ref.onset_s) <= ONSET_COLLAR_S for o in onsets) for ref in refs
                )
                misses[str(stream.ratio_db)] = round(missed / len(refs), 4) if refs else None
            rows[str(target)] = {"threshold_on": high, "miss_rate": misses}
        out[label] = rows
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
    """Per ratio and class: F1, ER, latency; per class: false alarms per hour on ``free``."""
    classes = [label for label in model.labels if label != BACKGROUND]
    pipeline_log = logging.getLogger("edge_detect.pipeline")
    previous_level = pipeline_log.level
    if pipeline_log.getEffectiveLevel() > logging.DEBUG:
        pipeline_log.setLevel(logging.WARNING)
    per_ratio = []
    runs = []
    try:
        for stream in event_streams:
            emitted, scores = run_stream(model, stream, config)
            runs.append((stream, scores))
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
        operating: dict[str, Any] = {}
        if free is not None:
            alerts, free_scores = run_stream(model, free, config)
            hours = free.duration_s / 3600
            for label in classes:
                count = sum(a.label == label for a in alerts)
                false_alarms[label] = {"alerts": count, "per_hour": round(count / hours, 3)}
            operating = miss_rate_at_false_alarms(model, config, runs, free_scores, hours)
    finally:
        pipeline_log.setLevel(previous_level)
    return {
        "model_id": model.model_id,
        "onset_collar_s": ONSET_COLLAR_S,
        "event_free_hours": round(free.duration_s / 3600, 4) if free else 0.0,
        "background_distinct_minutes": round(free.background_s / 60, 2) if free else 0.0,
        "streams": per_ratio,
        "false_alarms": false_alarms,
        "miss_rate_at_false_alarms_per_hour": operating,
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


def eval_stream_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if getattr(args, "model", None):
        config = config.replace(model=args.model)
    if args.background_minutes < 0:
        raise ConfigError(f"--background-minutes must be >= 0, got {args.background_minutes}")
    model = load_model(config.model, threads=config.threads)
    rows = read_manifest(args.manifest)
    streams, free, mapped = build_streams(
        model,
        rows,
        ratios_db=args.snr_db,
        background_minutes=args.background_minutes,
        seed=args.seed,
    )
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
    return 0


def register_stream(kinds: argparse._SubParsersAction, formatter: Any) -> None:
    stream = kinds.add_parser(
        "stream",
        help="event F1, false alarms per hour and latency on long mixed streams",
        description=STREAM_DOC,
        formatter_class=formatter,
    )
    add_model_argument(stream)
    stream.add_argument(
        "--manifest", required=True, help="CSV with columns path,label (paths relative to it)"
    )
    stream.add_argument(
        "--snr-db",
        type=float,
        nargs="+",
        default=[-6.0, 0.0, 6.0],
        metavar="DB",
        help="event-to-background ratios, one stream each",
    )
    stream.add_argument(
        "--background-minutes",
        type=float,
        default=60.0,
        help="length of the event-free stream for false alarms per hour (0 = none)",
    )
    stream.add_argument("--seed", type=int, default=0, help="seed of the streams' layout")
    stream.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    stream.add_argument("--config", metavar="TOML", help="runtime config (detection overrides)")
    stream.set_defaults(func=eval_stream_command)
