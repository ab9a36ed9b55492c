"""``edge-detect train``: train a model from a commented TOML preset (``train/configs/``), or
from a folder with one sub-folder of recordings per class (``--data DIR``, :mod:`train.folder`).

Also ``python -m train train --config FILE``. torch is imported only when the command runs, so
``edge-detect --help`` stays light.

With ``--data`` the run also exports the chosen checkpoint to ``<run>/model.onnx`` and measures it
through the runtime path (``edge-detect eval stream`` on the held-out test clips mixed into the
held-out background), so the figures it reports are alerts, not only clip-level errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

log = logging.getLogger(__name__)

DEFAULT_PRESET = Path(__file__).resolve().parent / "configs" / "default.toml"


def register(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``train`` subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="(workstation) train a detector from a TOML preset",
        description=(
            "Train the streaming LSTM from a preset; writes checkpoints (every epoch, with "
            "resume state), metrics.json and plots into the run folder, and the best model to "
            "<run>/checkpoint.pt.\n\n"
            "--data DIR trains on your own sounds instead: DIR/<class>/*.wav|flac|ogg, one "
            "sub-folder per class, 'background' for recordings without the sounds (the place "
            "where it will listen). The preset's other settings apply; the run also writes "
            "<run>/model.onnx and its alerts on held-out clips.\n\n"
            "examples:\n"
            "  edge-detect train --config train/configs/default.toml\n"
            "  edge-detect train --data my_sounds --out runs/my_sounds --time-limit-s 600"
        ),
        formatter_class=formatter,
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_PRESET, help="TOML preset")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="DIR",
        help="train on a folder with one sub-folder of audio per class ('background' = no "
        "event) instead of the preset's manifest",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from <run>/checkpoint_last.pt"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (overrides optim.out_dir; with --data default runs/<DIR's name>)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override optim.epochs")
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=None,
        help="stop after the epoch that passes this wall time; the best epoch is kept",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (there are none either when stderr is not a terminal)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from train.config import load_config

    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["optim"] = {"epochs": args.epochs}
    out = args.out
    background = None
    if args.data is not None:
        from train.folder import folder_config

        out = out or Path("runs") / args.data.resolve().name
        config, folder = folder_config(args.data, out, args.config, overrides)
        background = (
            f"{folder.root}/background ({folder.counts['background']} clips)"
            if folder.has_background
            else "the shipped background features (train/assets/background_bank.npz)"
        )
    else:
        config = load_config(args.config, overrides)
    from train.folder import split_warnings
    from train.splits import split_clips
    from train.trainer import train

    parts, _ = split_clips(config)
    warnings = split_warnings(parts, config.data.labels, config.data.val_fraction)
    for warning in warnings:
        log.warning("%s", warning)
    result = train(
        config,
        resume=args.resume,
        progress=not args.no_progress and sys.stderr.isatty(),  # bars only for a person
        out_dir=out,
        time_limit_s=args.time_limit_s,
    )
    if not result.metrics:  # a torchrun rank other than 0: rank 0 reports
        return 0
    clip = result.metrics["val"]["clip"]
    summary: dict[str, Any] = {
        "checkpoint": str(result.checkpoint),
        "best_epoch": result.metrics["best_epoch"],
        "val_mean_error": _rounded(clip["mean_error"]),
        # None: the class has no validation clips (e.g. background from the shipped features)
        "val_per_class_error": {k: _rounded(v) for k, v in clip["per_class_error"].items()},
        "val_clips": dict(zip(config.data.labels, clip["support"], strict=True)),
    }
    if background is not None:
        summary["background"] = background
    if warnings:
        summary["warnings"] = warnings
    if args.data is not None:
        from train.heldout import export_and_measure

        summary.update(export_and_measure(config, result.checkpoint, result.run_dir))
    print(json.dumps(summary), file=sys.stdout)
    return 0


def _rounded(value: float) -> float | None:
    """A JSON-safe figure: NaN (nothing to measure) becomes null."""
    return None if math.isnan(value) else round(float(value), 4)
