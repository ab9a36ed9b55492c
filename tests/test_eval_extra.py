"""Device-side evaluation of FLAC/OGG needs soundfile only: without it, the error names the small
``[eval]`` extra, not ``[train]`` (which pulls torch)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parent.parent

NO_SOUNDFILE = textwrap.dedent(
    """
    import sys

    class BlockSoundfile:
        def find_spec(self, name, path=None, target=None):
            if name == "soundfile":
                raise ModuleNotFoundError("No module named 'soundfile'", name=name)
            return None

    sys.meta_path.insert(0, BlockSoundfile())
    from edge_detect.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("kind", ["clips", "stream"])
def test_flac_without_soundfile_names_the_eval_extra(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(0)
    for name in ("bark.flac", "street.flac"):
        sf.write(tmp_path / name, 0.1 * rng.standard_normal(16_000), 16_000)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nbark.flac,dog_bark\nstreet.flac,background\n")
    result = subprocess.run(
        [sys.executable, "-c", NO_SOUNDFILE, "eval", kind, "--manifest", str(manifest)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "needs the Python package 'soundfile'" in last
    assert "pip install 'edge-detect[eval]'" in last and "[train]" not in last
