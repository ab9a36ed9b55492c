"""The ``edge-detect`` command: one entry point, one subcommand per job.

Runtime subcommands live in ``edge_detect``; workstation subcommands (``data``, ``train``,
``export``) come from the checkout's ``train/`` and ``export/`` folders when they are there, so a
device install never needs them. stdout carries only results (alerts, tables); logs go to stderr.

A subcommand module provides ``register(subparsers)``, which adds its parser and sets
``func=handler`` with ``handler(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edge_detect import __version__
from edge_detect.errors import EdgeDetectError

__all__ = ["main"]

log = logging.getLogger("edge_detect")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

# Runtime subcommands: (module of edge_detect that provides register(subparsers), the names it
# registers). Only the module of the command being run is imported: on a device, `run` must not
# pay for the evaluation, calibration and status modules (their imports are megabytes resident).
RUNTIME_COMMAND_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("edge_detect.cli_run", ("run", "devices")),
    ("edge_detect.cli_eval", ("eval",)),
    ("edge_detect.calibrate", ("calibrate",)),
    ("edge_detect.cli_bench", ("bench",)),
    ("edge_detect.status_cli", ("status",)),
    ("edge_detect.cli_clips", ("clips",)),
    ("edge_detect.cli_webhook", ("webhook",)),
)

# Workstation subcommands: (module in the checkout, names it registers, what it needs).
WORKSTATION_COMMAND_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train.cli", ("data", "train")),
    ("export.cli", ("export",)),
)


def checkout_root() -> Path | None:
    """The source checkout that holds ``train/`` and ``export/``, if we run from one.

    An editable install (``pip install -e .``) places ``edge_detect`` inside the checkout; a plain
    install does not, then the current directory is tried.
    """
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "train" / "__init__.py").is_file() and (candidate / "edge_detect").is_dir():
            return candidate
    return None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every default in --help and keeps description line breaks."""


WORKSTATION_INSTALL = (
    "pip install torch==2.13.0 && pip install -e '.[train]' (on public PyPI add "
    "--index-url https://download.pytorch.org/whl/cpu to the torch install for the CPU-only build)"
)
"""How a checkout gets the workstation extras; named by every error about them."""


def workstation_commands() -> tuple[str, ...]:
    """The names of the workstation subcommands (``data``, ``train``, ``export``)."""
    return tuple(name for _, names in WORKSTATION_COMMAND_MODULES for name in names)


def _register_workstation(subparsers: argparse._SubParsersAction, load: bool = True) -> None:
    """Add the workstation commands; ``load=False`` adds placeholders without importing them
    (their modules import torch: seconds and hundreds of MB that a runtime command must not pay).

    A command that cannot be loaded (no checkout here, or its module does not import) becomes a
    placeholder that takes any arguments and answers with one line saying why and how to fix it,
    instead of an empty usage or "unrecognized arguments".
    """
    root = checkout_root()
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    for module_name, names in WORKSTATION_COMMAND_MODULES:
        why = "no source checkout of edge-detect was found here; clone the repository"
        if root is not None and load:
            try:
                importlib.import_module(module_name).register(subparsers, _HelpFormatter)
            except ImportError as exc:
                log.debug("workstation commands of %s unavailable: %s", module_name, exc)
                why = f"it cannot be loaded from the checkout {root} ({exc})"
        elif root is not None:
            why = ""  # a runtime command runs: the placeholder is never called
        for name in names:
            if name in subparsers.choices:
                continue
            message = _workstation_message(name, why)
            parser = subparsers.add_parser(
                name,
                help=f"(workstation) {name}: needs a source checkout with the [train] extra",
                description=message,
                formatter_class=_HelpFormatter,
            )
            parser.set_defaults(func=_needs_checkout(message), accepts_any_arguments=True)


def _workstation_message(name: str, why: str) -> str:
    return (
        f"'edge-detect {name}' is a workstation tool that runs from a source checkout of "
        f"edge-detect with the training extras installed{': ' + why if why else ''}. "
        f"In the checkout: {WORKSTATION_INSTALL}"
    )


def _needs_checkout(message: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        raise EdgeDetectError(message)

    return handler


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-detect",
        description="Detect rare sound events (dog bark, baby cry, gunshot) and send alerts.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-detect {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="verbose logs on stderr, tracebacks on errors"
    )
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    command = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    chosen = [module for module, names in RUNTIME_COMMAND_MODULES if command in names]
    # a runtime command: its module alone; anything else (--help, a typo, a workstation
    # command): all of them, so that help and argparse's suggestions list every command
    for module_name in chosen or [module for module, _ in RUNTIME_COMMAND_MODULES]:
        importlib.import_module(module_name).register(subparsers, _HelpFormatter)
    # argv known and naming a runtime command: do not import the workstation modules
    _register_workstation(subparsers, load=command not in subparsers.choices)
    return parser


def _configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 failure, 2 bad input or usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    _configure_logging(debug, "--quiet" in argv)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "accepts_any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args) or EXIT_OK)
    except EdgeDetectError as exc:
        if debug:
            log.exception("failed")
        print(f"edge-detect: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        # a workstation command imports torch, onnx, soundfile ... only when it runs
        if args.command not in workstation_commands():
            raise
        if debug:
            log.exception("failed")
        print(
            f"edge-detect: error: 'edge-detect {args.command}' needs the Python package "
            f"{exc.name!r}, which is not installed here. {WORKSTATION_INSTALL}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
