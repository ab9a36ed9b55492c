"""Workstation subcommands of ``edge-detect``: ``data`` (datasets) and ``train``.

Kept free of heavy imports: torch is imported only when a training command runs.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``data`` and ``train`` subcommands to the ``edge-detect`` parser."""
    from train import data_cli, train_cli

    data_cli.register(subparsers, formatter)
    train_cli.register(subparsers, formatter)
