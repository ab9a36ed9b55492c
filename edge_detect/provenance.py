"""Where a result came from: one record for model metadata and every benchmark JSON.

:func:`provenance` answers the questions a reader of a figure asks months later: which code
(commit, and whether the checkout had uncommitted changes), which library versions, which
machine, which command, and when. Paths in it, and in anything passed through
:func:`relative_paths`, are relative to the checkout (``../shared/data/...``, not
``/home/someone/...``): a result file must not carry the absolute paths of the machine that
made it.

Use it where a result is written::

    from edge_detect.provenance import provenance, relative_paths

    result = {...}
    result["provenance"] = provenance()  # the command line is this process's
    Path(out).write_text(json.dumps(relative_paths(result), indent=2))

Nothing here imports torch or any package it reports on: versions come from the installed
distributions' metadata.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from edge_detect import __version__

__all__ = ["REPORTED_PACKAGES", "checkout_root", "git_state", "provenance", "relative_paths"]

REPORTED_PACKAGES = ("numpy", "onnxruntime", "onnx", "torch", "soundfile", "soxr")
"""Distributions whose versions a record carries (those installed; none is imported)."""


def checkout_root() -> Path | None:
    """The git checkout holding this ``edge_detect`` package, or None (an installed copy)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / ".git").exists() else None  # a worktree's .git is a file


def git_state(root: Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout; None outside one or without git.

    ``dirty`` is True when tracked files differ from the commit (untracked files do not count:
    results and scratch files live beside the code).
    """
    root = root or checkout_root()
    if root is None:
        return None
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def _is_machine_path(text: str) -> bool:
    """An absolute path of this machine: starts with a top-level folder that exists here (so
    '/metrics' or '/' in a URL path is left alone)."""
    if not text.startswith("/") or text.startswith("//"):
        return False
    parts = Path(text).parts
    return len(parts) > 1 and Path(parts[0], parts[1]).is_dir()


def _relative(text: str, base: Path) -> str:
    if "=" in text and text.startswith("-"):  # --option=/abs/path
        option, _, value = text.partition("=")
        return f"{option}={_relative(value, base)}"
    if not _is_machine_path(text):
        return text
    return os.path.relpath(os.path.normpath(text), base)


def relative_paths(value: Any, root: Path | None = None) -> Any:
    """``value`` with every absolute path of this machine made relative to the checkout.

    Parameters
    ----------
    value : any JSON-like value
        Dicts, lists and tuples are walked; strings that are absolute paths here (their first
        folder exists on this machine), also after ``--option=``, become relative to ``root``.
    root : Path, optional
        The checkout (default: :func:`checkout_root`, else the current directory).

    Returns
    -------
    The same structure (tuples become lists), with relative paths.
    """
    base = root or checkout_root() or Path.cwd()
    if isinstance(value, str):
        return _relative(value, base)
    if isinstance(value, dict):
        return {key: relative_paths(item, base) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_paths(item, base) for item in value]
    return value


def _command(argv: Sequence[str], base: Path) -> str:
    program, *args = argv or [""]
    script = Path(program)
    # an installed entry point (.venv/bin/edge-detect) is named by its name alone; a script
    # run with python (bench/x.py) by its path in the checkout
    if script.parent.name == "bin" or "/" not in program:  # an entry point, -c, -m, ""
        head = ["python", program] if program in ("-c", "-m") else [script.name]
    elif script.name == "__main__.py":  # python -m package
        head = ["python", "-m", script.parent.name]
    else:
        head = ["python", _relative(str(script.resolve()), base)]
    return shlex.join([*head, *(_relative(arg, base) for arg in args)]).strip()


def _versions() -> dict[str, str]:
    out = {"edge-detect": __version__, "python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(argv: Sequence[str] | None = None, *, root: Path | None = None) -> dict[str, Any]:
    """Where a result comes from.

    Parameters
    ----------
    argv : sequence of str, optional
        The command line (program first); default ``sys.argv`` of this process.
    root : Path, optional
        The checkout (default: :func:`checkout_root`).

    Returns
    -------
    dict
        ``commit`` (or None outside a git checkout), ``dirty`` (uncommitted changes to tracked
        files, or None), ``versions`` (edge-detect, python and the installed
        :data:`REPORTED_PACKAGES`), ``host`` (name, OS, machine, CPUs), ``command`` (a shell
        line, paths relative to the checkout) and ``date_utc`` (ISO 8601, seconds, ``Z``).
    """
    root = root or checkout_root()
    base = root or Path.cwd()
    state = git_state(root) if root else None
    return {
        "commit": state["commit"] if state else None,
        "dirty": state["dirty"] if state else None,
        "versions": _versions(),
        "host": {
            "name": platform.node(),
            "system": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "command": _command(list(sys.argv if argv is None else argv), base),
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
