"""The runtime never imports torch, and the data tools do not need it either.

Each check runs in a fresh interpreter in which importing torch fails and every attempt is
recorded, so a guarded ``try: import torch`` counts too.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    attempts = []

    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                attempts.append(name)
                raise ImportError(f"{name} is blocked by the test")
            return None

    sys.meta_path.insert(0, BlockTorch())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_runtime_module_imports_without_torch() -> None:
    result = _run(
        """
        import importlib, pkgutil
        import edge_detect
        names = [m.name for m in pkgutil.iter_modules(edge_detect.__path__) if m.name != "__main__"]
        for name in names:
            importlib.import_module("edge_detect." + name)
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        assert not attempts, f"tried to import {attempts}"
        print(len(names), "modules")
        """
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[0]) >= 4  # audio, cli, errors, features at least


def test_cli_help_and_data_tools_without_torch() -> None:
    result = _run(
        """
        import contextlib, io
        from edge_detect.cli import main
        for argv in (["--help"], ["data", "stats", "--help"]):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as exc:
                    assert exc.code == 0, (argv, exc.code)
            print(out.getvalue())
        import train.audio_io, train.cache, train.data_cli, train.datasets
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        """
    )
    assert result.returncode == 0, result.stderr
    assert "data" in result.stdout and "--manifest" in result.stdout
    assert "data: needs a source checkout" not in result.stdout  # the real data command loaded
