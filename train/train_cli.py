"""Placeholder for ``edge-detect train``: the training engineer replaces this body.

It exists so that ``train.cli.register`` can import it and the ``data`` commands load.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register"]


def register(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add the ``train`` subcommand (not yet: the CLI shows a placeholder until then)."""
