"""``edge-detect calibrate``: per-class detection settings chosen on a validation stream.

The validation manifest becomes the same streams as ``edge-detect eval stream`` builds (events
mixed into background at each ``--snr-db`` ratio, plus ``--background-minutes`` of event-free
background, fixed ``--seed``), run ONCE through the pipeline of ``edge-detect run`` with every
frame's scores kept. Then, per class, for each ``confirm_ms`` x ``smoothing_ms`` of a small grid
(:data:`CONFIRM_MS_GRID`, :data:`SMOOTHING_MS_GRID` and the model's own values), the lowest
``threshold_on`` that keeps the false alarms on the event-free stream at or below the target is
found by bisection (``threshold_off`` keeps its ratio to it; the refractory time is kept), the
class's state machine is replayed on the stored scores, and the setting that misses the fewest
events wins (ties: the lower median onset-to-alert latency, then the lower threshold).

A class whose target no setting meets (false alarms even at ``threshold_on`` 1.0) is NOT disabled:
it keeps ``threshold_on`` 1.0 (only saturated scores alert) with the setting that gave the fewest
false alarms, the table says ``NO`` and a warning is logged. Disabling a class silently would hide
a model's weakness; a user who wants it off sets ``enabled = false`` in the runtime config.

The output is the input model with its detection metadata replaced and an
``edge_detect.calibration`` entry (target, manifest name and SHA-256, seed, ratios, event-free
hours, per-class settings and validation figures). ``eval stream`` warns when it is given the
manifest a model was calibrated on: never tune on the test stream. Writing ONNX metadata needs the
``onnx`` package (``pip install 'edge-detect[calibrate]'``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge_detect.cli_eval import (
    BACKGROUND,
    OperatingPoint,
    ScoredStreams,
    _checked_stream_args,
    add_stream_arguments,
    lowest_threshold,
    operating_point,
    read_manifest,
    score_streams,
    streams_from_args,
    with_threshold,
)
from edge_detect.config import RuntimeConfig, load_config
from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError, DatasetError, MissingExtraError, ModelError
from edge_detect.model import METADATA_KEYS, StreamingModel, load_model

__all__ = [
    "CALIBRATION_KEY",
    "CONFIRM_MS_GRID",
    "SMOOTHING_MS_GRID",
    "ClassCalibration",
    "calibrate",
    "calibration_record",
    "register",
    "warn_if_calibrated_on",
    "write_calibrated_model",
    "write_metadata",
]

log = logging.getLogger(__name__)

CALIBRATION_KEY = "edge_detect.calibration"
"""ONNX metadata key of the calibration record (JSON); the loader ignores it."""
CONFIRM_MS_GRID = (50.0, 100.0, 200.0)
"""confirm_ms values tried per class (with the model's own), in ms."""
SMOOTHING_MS_GRID = (100.0, 250.0, 500.0)
"""smoothing_ms values tried per class (with the model's own), in ms."""


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
    each at its lowest threshold meeting the target (:func:`~edge_detect.cli_eval.
    lowest_threshold`, the code ``eval stream`` reports the miss rate at a target with)."""
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


def _sha256(path: Path) -> str:
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
        "manifest_sha256": _sha256(manifest),
        "seed": seed,
        "ratios_db": [stream.ratio_db for stream, _, _ in scored.events],
        "event_free_hours": round(scored.free_hours, 4),
        "background_distinct_minutes": round(free[0].background_s / 60, 2) if free else 0.0,
        "source_model_sha256": model.sha256,
        "grid": {"confirm_ms": list(CONFIRM_MS_GRID), "smoothing_ms": list(SMOOTHING_MS_GRID)},
        "classes": {label: result.to_dict() for label, result in results.items()},
    }


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        error = MissingExtraError("onnx", "calibrate", "writing a calibrated model")
        error.args = (f"{error.args[0]} (or just: pip install onnx)",)
        raise error from None
    return onnx


def write_metadata(source: str | Path, out: str | Path, metadata: dict[str, str]) -> None:
    """Copy the ONNX file ``source`` to ``out`` (may be the same path) with ``metadata`` merged
    into its ``metadata_props`` (other keys kept), through a temporary file and a rename: never
    half a model. Needs the ``onnx`` package; ``export/`` writes its metadata through this too."""
    onnx = _import_onnx()
    out = Path(out)
    proto = onnx.load(str(source))
    kept = {p.key: p.value for p in proto.metadata_props if p.key not in metadata}
    del proto.metadata_props[:]
    for key, value in {**kept, **metadata}.items():
        proto.metadata_props.add(key=key, value=value)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_calibrated_model(
    source: Path, out: Path, detection: dict[str, ClassDetection], record: dict[str, Any]
) -> None:
    """Copy the ONNX file ``source`` to ``out`` with its detection metadata replaced and the
    calibration record added."""
    detection_json = json.dumps(
        {label: setting.to_dict() for label, setting in detection.items()}, sort_keys=True
    )
    write_metadata(
        source,
        out,
        {
            METADATA_KEYS["detection"]: detection_json,
            CALIBRATION_KEY: json.dumps(record, sort_keys=True),
        },
    )


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
    if not record or not path.is_file() or record.get("manifest_sha256") != _sha256(path):
        return False
    log.warning(
        "%s is the manifest %s was calibrated on (same SHA-256): these figures are the "
        "calibration's, not a test. Never tune on the test stream: evaluate on a held-out "
        "manifest (edge-detect data split writes one)",
        path,
        model.model_id,
    )
    return True


def format_calibration_table(record: dict[str, Any], model_id: str, out: Path) -> str:
    def show(value: Any, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    ratios = [str(r) for r in record["ratios_db"]]
    lines = [
        f"calibrated {model_id} -> {out}: at most {record['target_false_alarms_per_hour']:g} "
        f"false alarms/h on {record['event_free_hours']:.3f} h event-free "
        f"(from {record['background_distinct_minutes']:.1f} min of distinct background), "
        f"seed {record['seed']}, manifest {record['manifest']}",
        f"{'class':12} {'met':>4} {'on':>6} {'off':>6} {'confirm':>7} {'smooth':>6} "
        f"{'FA/h':>6} {'events':>6} {'miss':>6} "
        + " ".join(f"{'miss@' + r:>9}" for r in ratios)
        + f" {'latency s':>9}",
    ]
    for label, row in record["classes"].items():
        s = row["setting"]
        per_ratio = " ".join(f"{show(row['val_miss_rate_per_ratio'].get(r)):>9}" for r in ratios)
        lines.append(
            f"{label:12} {'yes' if row['met'] else 'NO':>4} {s['threshold_on']:>6.3f} "
            f"{s['threshold_off']:>6.3f} {s['confirm_ms']:>7g} {s['smoothing_ms']:>6g} "
            f"{row['val_false_alarms_per_hour']:>6.2f} {row['val_events']:>6} "
            f"{show(row['val_miss_rate']):>6} {per_ratio} "
            f"{show(row['val_onset_to_alert_median_s'], '.2f'):>9}"
        )
    unmet = [label for label, row in record["classes"].items() if not row["met"]]
    if unmet:
        lines.append(
            f"NOT MET for {', '.join(unmet)}: no setting keeps to the target on this stream; "
            "kept enabled at threshold_on 1.0 (set enabled = false in the runtime config to "
            "silence a class)"
        )
    return "\n".join(lines)


def calibrate_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if getattr(args, "model", None):
        config = config.replace(model=args.model)
    _checked_stream_args(args)
    if not args.target_fa_per_hour > 0:
        raise ConfigError(
            f"--target-fa-per-hour must be > 0, got {args.target_fa_per_hour} (e.g. 0.5)"
        )
    if args.background_minutes == 0:
        raise ConfigError(
            "calibration needs event-free audio for false alarms per hour: set "
            "--background-minutes > 0 (e.g. 60)"
        )
    _import_onnx()  # before minutes of streaming, not after
    model = load_model(config.model, threads=config.threads)
    out = Path(args.out)
    if out.resolve() == model.path.resolve() and not args.in_place:
        raise ConfigError(
            f"--out {out} is the input model; pass --in-place to overwrite it, or choose "
            "another file"
        )
    if out.exists() and out.resolve() != model.path.resolve() and not args.force:
        raise ConfigError(f"--out {out} exists; choose another file or pass --force")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    manifest = Path(args.manifest)
    rows = read_manifest(manifest)
    known = set(model.labels) - {BACKGROUND}
    if all(label in known for _, label in rows):
        raise DatasetError(
            f"manifest {manifest} has no background clips (labels the model does not know, or "
            f"'{BACKGROUND}'): calibration needs event-free audio for false alarms per hour"
        )
    streams, free, mapped = streams_from_args(model, rows, args)
    log.info("calibrating %s on %d stream(s)", model.model_id, len(streams) + (free is not None))
    scored = score_streams(model, streams, free, config)
    if free is not None and free.background_s < free.duration_s:
        log.warning(
            "the event-free %.1f min repeat %.1f min of distinct background: the false-alarm "
            "rate holds only for backgrounds like these (more background clips make it surer)",
            free.duration_s / 60,
            free.background_s / 60,
        )
    results, detection = calibrate(model, config, scored, target_per_hour=args.target_fa_per_hour)
    record = calibration_record(
        model,
        results,
        scored,
        target_per_hour=args.target_fa_per_hour,
        manifest=manifest,
        seed=args.seed,
    )
    record["mapped_to_background"] = mapped
    write_calibrated_model(model.path, out, detection, record)
    written = load_model(out)  # the runtime must take what we wrote
    if written.detection != detection:  # pragma: no cover - a bug, not a user error
        raise ModelError(f"{out}: the detection settings read back differ from those written")
    print(format_calibration_table(record, model.model_id, out))
    if args.json:
        payload = {"model": str(out), "model_id": written.model_id, **record}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", args.json)
    return 0


def register(subparsers: argparse._SubParsersAction, formatter: Any) -> None:
    parser = subparsers.add_parser(
        "calibrate",
        help="choose per-class thresholds on a validation stream for a false-alarm target",
        description=__doc__,
        formatter_class=formatter,
    )
    add_stream_arguments(parser)
    parser.add_argument(
        "--target-fa-per-hour",
        type=float,
        default=0.5,
        help="false alarms per hour per class allowed on the event-free stream",
    )
    parser.add_argument("--out", required=True, metavar="ONNX", help="calibrated model to write")
    parser.add_argument(
        "--in-place", action="store_true", help="allow --out to be the input model itself"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out")
    parser.set_defaults(func=calibrate_command)
