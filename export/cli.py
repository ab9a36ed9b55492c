"""Workstation subcommand ``edge-detect export``; torch is imported only when it runs."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``export`` subcommand to the ``edge-detect`` parser."""
    from export import export_cli

    export_cli.register(subparsers, formatter)
