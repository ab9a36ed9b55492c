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
import json
import logging
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_detect.cli_run import add_model_argument
from edge_detect.config import load_config
from edge_detect.errors import ConfigError, MissingExtraError
from edge_detect.model import StreamingModel, load_model
from edge_detect.operating import FA_TARGETS_PER_HOUR, warn_if_calibrated_on
from edge_detect.scoring import evaluate_clips, evaluate_streams
from edge_detect.streams import (
    ManifestRow,
    TestStream,
    build_streams,
    read_manifest,
    read_manifests,
)

__all__ = [
    "add_stream_arguments",
    "check_stream_args",
    "format_stream_table",
    "format_table",
    "plot_curves",
    "register",
    "streams_from_args",
]

log = logging.getLogger(__name__)

SOURCES_SHOWN = 15
"""Kinds of sound the printed table lists (all of them are in the JSON)."""


def format_table(summary: dict[str, Any]) -> str:
    """``eval clips``' summary as a text table: per class clips, errors, error rate, false
    alerts."""
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
    """Add ``edge-detect eval`` (clips, stream) to the CLI's subcommands."""
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
of its loudest, against the bed at the same place), one stream per ratio, plus an event-free
stream of every distinct background clip once (or ``--background-minutes`` of it, repeated when
shorter). Every stream runs through the pipeline of ``edge-detect run`` as fast as possible. Per
class: event F1 and error rate with a 0.5 s onset collar (sed_eval's event-based metric: an alert
within 0.5 s of the onset is a *hit*); the miss rate (an event is *detected* when an alert of its
class starts between 0.5 s before its onset and its end) and the median time from the true onset
to the alert of the detected events; false alarms per hour on the event-free stream, also per
kind of sound (the manifest's ``source_kind`` column, which ``edge-detect data split`` writes,
else each clip's folder); and the miss rate at 0.5 and 1 false alarm per hour (the class's state
machine replayed on the stored scores at the lowest threshold that keeps to that rate on the
event-free stream).
``--plot`` draws the miss rate against false alarms per hour as threshold_on sweeps (the JSON
holds the points under ``curves``). ``--seed`` fixes the streams: the same command builds the
same audio. Thresholds for a model come from ``edge-detect calibrate`` on a validation
manifest; evaluating on the manifest a model was calibrated on is warned about.
"""


def format_stream_table(summary: dict[str, Any]) -> str:
    """``eval stream``'s summary as a text table: per ratio and class, then the miss rates at the
    false-alarm targets."""

    def show(value: Any, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        f"model {summary['model_id']}: onset collar {summary['onset_collar_s']} s, "
        f"event-free {summary['event_free_hours']:.3f} h "
        f"(from {summary['background_distinct_minutes']:.1f} min of distinct background)",
        f"{'ratio dB':>8} {'class':12} {'events':>6} {'alerts':>6} {'hits':>5} {'F1':>6} "
        f"{'ER':>6} {'detected':>8} {'miss':>6} {'latency s':>9} {'FA/h':>7}",
    ]
    for stream in summary["streams"]:
        for label, row in stream["per_class"].items():
            fa = summary["false_alarms"].get(label, {}).get("per_hour")
            lines.append(
                f"{stream['ratio_db']:>8.1f} {label:12} {row['events']:>6} {row['alerts']:>6} "
                f"{row['hits']:>5} {show(row['f1']):>6} {show(row['error_rate']):>6} "
                f"{row['detected']:>8} {show(row['miss_rate']):>6} "
                f"{show(row['onset_to_alert_median_s'], '.2f'):>9} {show(fa, '.2f'):>7}"
            )
    by_source = summary.get("false_alarms_by_source") or {}
    if by_source:
        labels = list(summary["false_alarms"])
        lines.append(
            f"false alarms per hour by kind of sound ({len(by_source)} kinds; the "
            f"{min(len(by_source), SOURCES_SHOWN)} with the most alerts):"
        )
        lines.append(f"{'kind':40} {'min':>6} " + " ".join(f"{label:>12}" for label in labels))
        for source, row in list(by_source.items())[:SOURCES_SHOWN]:
            rates = " ".join(
                f"{show(row['per_class'][label]['per_hour'], '.1f'):>12}" for label in labels
            )
            lines.append(f"{source[:40]:40} {row['minutes']:>6.1f} {rates}")
    operating = summary.get("miss_rate_at_false_alarms_per_hour") or {}
    for label, targets in operating.items():
        for target, row in targets.items():
            misses = ", ".join(f"{show(v)} at {k} dB" for k, v in row["miss_rate"].items())
            lines.append(
                f"{label}: at <= {target} false alarms/h (threshold_on {row['threshold_on']:.3f})"
                f" misses {misses}"
            )
    return "\n".join(lines)


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
    model: StreamingModel, rows: list[ManifestRow], args: argparse.Namespace
) -> tuple[list[TestStream], TestStream | None, list[str]]:
    """:func:`build_streams` with the options of :func:`add_stream_arguments`."""
    return build_streams(
        rows,
        model.labels,
        sample_rate_hz=model.feature_config.sample_rate_hz,
        ratios_db=args.snr_db,
        background_minutes=args.background_minutes,
        seed=args.seed,
    )


def check_stream_args(args: argparse.Namespace) -> None:
    """Refuse stream options no stream can be built from (before minutes of work)."""
    minutes = args.background_minutes
    if minutes is not None and not (minutes >= 0 and math.isfinite(minutes)):
        raise ConfigError(f"--background-minutes must be a number >= 0, got {minutes}")


def eval_stream_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if getattr(args, "model", None):
        config = config.replace(model=args.model)
    check_stream_args(args)
    if args.plot and args.background_minutes == 0:
        raise ConfigError("--plot needs an event-free stream: set --background-minutes > 0")
    model = load_model(config.model, threads=config.threads)
    rows = read_manifests([args.manifest])
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
        default=None,
        help="length of the event-free stream for false alarms per hour (0 = none; default: "
        "every distinct background clip of the manifest once, nothing repeated)",
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
