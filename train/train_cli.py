"""``edge-detect train``: train a model from a commented TOML preset (``train/configs/``).

Also ``python -m train train --config FILE``. torch is imported only when the command runs, so
``edge-detect --help`` stays light.
"""

from __future__ import annotations

import argparse
import json
import logging
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
            "<run>/checkpoint.pt.\n\nexample: edge-detect train --config "
            "train/configs/default.toml"
        ),
        formatter_class=formatter,
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_PRESET, help="TOML preset")
    parser.add_argument(
        "--resume", action="store_true", help="continue from <run>/checkpoint_last.pt"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="run folder (overrides optim.out_dir)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="override optim.epochs")
    parser.add_argument(
        "--time-limit-s",
        type=float,
        default=None,
        help="stop after the epoch that passes this wall time; the best epoch is kept",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from train.config import load_config

    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        overrides["optim"] = {"epochs": args.epochs}
    config = load_config(args.config, overrides)
    from train.trainer import train

    result = train(
        config,
        resume=args.resume,
        progress=not args.no_progress,
        out_dir=args.out,
        time_limit_s=args.time_limit_s,
    )
    if not result.metrics:  # a torchrun rank other than 0: rank 0 reports
        return 0
    clip = result.metrics["val"]["clip"]
    summary = {
        "checkpoint": str(result.checkpoint),
        "best_epoch": result.metrics["best_epoch"],
        "val_mean_error": round(clip["mean_error"], 4),
        "val_per_class_error": {k: round(v, 4) for k, v in clip["per_class_error"].items()},
    }
    print(json.dumps(summary), file=sys.stdout)
    return 0
