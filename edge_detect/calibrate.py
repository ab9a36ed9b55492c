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
import json
import logging
import os
from pathlib import Path
from typing import Any

from edge_detect.cli_eval import add_stream_arguments, check_stream_args, streams_from_args
from edge_detect.config import load_config
from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError, DatasetError, MissingExtraError, ModelError
from edge_detect.model import METADATA_KEYS, load_model
from edge_detect.operating import CALIBRATION_KEY, calibrate, calibration_record
from edge_detect.scoring import score_streams
from edge_detect.streams import BACKGROUND, read_manifests

__all__ = [
    "format_calibration_table",
    "register",
    "write_calibrated_model",
    "write_metadata",
]

log = logging.getLogger(__name__)


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


def format_calibration_table(record: dict[str, Any], model_id: str, out: Path) -> str:
    """The chosen settings per class and their validation figures, as a text table."""

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
    check_stream_args(args)
    if not args.target_fa_per_hour > 0:
        raise ConfigError(
            f"--target-fa-per-hour must be > 0, got {args.target_fa_per_hour} (e.g. 0.5)"
        )
    if args.background_minutes == 0:
        raise ConfigError(
            "calibration needs event-free audio for false alarms per hour: leave "
            "--background-minutes out (every distinct background clip once) or set it > 0"
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
    rows = read_manifests([manifest])
    known = set(model.labels) - {BACKGROUND}
    if all(row.label in known for row in rows):
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
    """Add ``edge-detect calibrate`` to the CLI's subcommands."""
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
