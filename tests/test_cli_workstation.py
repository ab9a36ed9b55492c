"""The workstation commands (data, train, export) answer a user mistake in one line.

Outside a checkout they cannot be loaded at all; inside one without torch they load (their
modules import torch only when they run) but cannot run. Either way the user gets one line that
says why and what to install, never an empty usage, "unrecognized arguments" or a traceback.
Each case runs the CLI in a fresh interpreter, as a user would.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A plain (non-editable) install outside a checkout: no train/ or export/ to be found.
NO_CHECKOUT = """
import edge_detect.cli as cli
cli.checkout_root = lambda: None
"""

# A checkout whose venv lacks torch: importing it fails as a missing package does.
NO_TORCH = """
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, BlockTorch())
"""


def _cli(setup: str, *argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        + textwrap.dedent(setup)
        + textwrap.dedent(
            """
        from edge_detect.cli import main
        sys.exit(main(sys.argv[1:]))
        """
        )
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ("train", "--data", "sounds"),
        ("export", "x.pt", "-o", "y.onnx"),
        ("data", "stats", "--manifest", "m.csv"),
    ],
)
def test_outside_a_checkout_each_workstation_command_says_what_to_do(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    result = _cli(NO_CHECKOUT, *argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"edge-detect: error: 'edge-detect {argv[0]}' is a workstation tool")
    assert "no source checkout" in lines[0]
    assert "pip install torch==2.13.0 && pip install -e '.[train]'" in lines[0]
    assert "unrecognized arguments" not in result.stderr


def test_outside_a_checkout_help_explains_instead_of_an_empty_usage(tmp_path: Path) -> None:
    result = _cli(NO_CHECKOUT, "train", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "workstation tool" in result.stdout
    assert "pip install -e '.[train]'" in result.stdout


def test_a_runtime_command_still_refuses_unknown_arguments(tmp_path: Path) -> None:
    result = _cli(NO_CHECKOUT, "run", "--frobnicate", cwd=tmp_path)
    assert result.returncode == 2
    assert "unrecognized arguments: --frobnicate" in result.stderr


def test_in_a_checkout_without_torch_train_names_the_missing_package(tmp_path: Path) -> None:
    result = _cli(NO_TORCH, "train", "--out", str(tmp_path / "run"), "--time-limit-s", "1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "edge-detect: error: 'edge-detect train' needs the Python package 'torch', which is not "
        "installed here. pip install torch==2.13.0 && pip install -e '.[train]' (on public PyPI "
        "add --index-url https://download.pytorch.org/whl/cpu to the torch install for the "
        "CPU-only build)"
    )
