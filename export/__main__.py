"""``python -m export CHECKPOINT -o model.onnx ...``: the same as ``edge-detect export``."""

from __future__ import annotations

import sys

from edge_detect.cli import main

_GLOBAL_FLAGS = ("--debug", "--quiet")


def _argv() -> list[str]:
    # the top-level flags of edge-detect go before the subcommand
    args = sys.argv[1:]
    flags = [arg for arg in args if arg in _GLOBAL_FLAGS]
    return [*flags, "export", *(arg for arg in args if arg not in _GLOBAL_FLAGS)]


if __name__ == "__main__":
    sys.exit(main(_argv()))
