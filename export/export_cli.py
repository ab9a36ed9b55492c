"""``edge-detect export CHECKPOINT -o model.onnx``: export, parity check and the int8 variant.

stdout carries the results (parity table, int8 report); logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from export.limits import DEFAULT_INT8_CLIPS, INT8_MAX_F1_DROP_POINTS, PARITY_TOLERANCE

__all__ = ["add_arguments", "register", "run"]

log = logging.getLogger(__name__)

_CHECKOUT = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The export options (shared by ``edge-detect export`` and ``python -m export``)."""

    parser.add_argument("checkpoint", type=Path, help="training checkpoint (.pt) to export")
    parser.add_argument(
        "-o", "--output", type=Path, required=True, help="the fp32 ONNX model to write"
    )
    parser.add_argument(
        "--name", default=None, help="model name stored in the metadata; None: the output file stem"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=PARITY_TOLERANCE,
        help="largest allowed |torch - onnx| of scores and state",
    )
    parser.add_argument(
        "--int8", action="store_true", help="also write the int8 (dynamic quantization) variant"
    )
    parser.add_argument(
        "--int8-output",
        type=Path,
        default=None,
        help="path of the int8 model; None: OUTPUT with suffix .int8.onnx",
    )
    parser.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="validation manifest CSV (path,label[,group]) for the int8 metric check; None: "
        "the manifest named in the checkpoint's data provenance, if reachable",
    )
    parser.add_argument(
        "--int8-clips",
        type=int,
        default=DEFAULT_INT8_CLIPS,
        help="at most this many validation clips for the int8 check",
    )
    parser.add_argument(
        "--int8-max-drop",
        type=float,
        default=INT8_MAX_F1_DROP_POINTS,
        help="largest allowed drop of macro F1 (points) from fp32 to int8",
    )
    parser.add_argument(
        "--no-int8-check",
        action="store_true",
        help="measure and print the int8 loss but do not fail on it",
    )


def register(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``export`` subcommand to the ``edge-detect`` parser."""
    parser = subparsers.add_parser(
        "export",
        help="(workstation) checkpoint -> streaming ONNX model, parity-checked",
        description=__doc__,
        formatter_class=formatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def _validation_clips(
    args: argparse.Namespace, checkpoint: dict[str, Any], labels: list[str]
) -> tuple[list[Any] | None, str]:
    """Clips for the int8 metric check and a sentence saying where they came from."""
    from train.datasets import load_manifest, take_evenly

    data = checkpoint.get("data")
    data = data if isinstance(data, dict) else {}
    manifest = args.manifest
    named_manifests = data.get("manifests") or ([data["manifest"]] if data.get("manifest") else [])
    if manifest is None and named_manifests:  # the first is the corpus of the classes
        named = Path(str(named_manifests[0]))
        # a relative path was written relative to the checkout that trained the model
        candidates = [named] if named.is_absolute() else [named, _CHECKOUT / named]
        manifest = next((path for path in candidates if path.is_file()), None)
        if manifest is None:
            log.warning("the checkpoint's manifest %s is not reachable here", named)
    if manifest is None:
        return None, "no validation data"
    clips = load_manifest(manifest, labels=labels)
    groups = data.get("validation_groups")
    if groups:
        wanted = set(map(str, groups))
        clips = [clip for clip in clips if clip.group in wanted]
        where = f"{manifest}, the checkpoint's validation groups"
    else:
        where = f"{manifest} (all clips: the checkpoint names no validation groups)"
    if not clips:
        return None, f"no clip of {where} has one of the labels {labels}"
    clips = take_evenly(clips, args.int8_clips)
    return clips, f"{len(clips)} clips of {where}"


def run(args: argparse.Namespace) -> int:
    """Export, check parity, and optionally quantize and compare; returns the exit code."""
    import torch

    from export.onnx_export import export_checkpoint

    torch.set_num_threads(1)
    path, report, checkpoint = export_checkpoint(
        args.checkpoint, args.output, name=args.name, tolerance=args.tolerance
    )
    print(report.format())
    print(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")
    if not args.int8:
        return 0

    from edge_detect.model import load_model
    from export.quantize import Int8Error, compare_int8, quantize_int8

    int8_path = args.int8_output or path.with_suffix(".int8.onnx")
    quantize_int8(path, int8_path)
    labels = list(load_model(path).labels)
    clips, source = _validation_clips(args, checkpoint, labels)
    print(f"int8 check on: {source}", flush=True)
    try:
        int8_report = compare_int8(
            path,
            int8_path,
            clips=clips,
            max_f1_drop_points=args.int8_max_drop,
            enforce=not args.no_int8_check,
        )
    except Int8Error:
        int8_path.unlink(missing_ok=True)
        raise
    print(int8_report.format())
    print(f"wrote {int8_path} ({int8_path.stat().st_size / 1024:.1f} KiB)")
    return 0
