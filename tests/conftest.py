"""Shared fixtures. Tests that need the real corpus use ``corpus_dir`` and skip without it."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_detect.alerts import Alert

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "edge_sed_real_v1"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real corpus beside the checkout; skips the test with a reason when it is absent."""
    if not (CORPUS / "manifest.csv").is_file():
        pytest.skip(f"real corpus not found at {CORPUS} (end users bring their own data)")
    return CORPUS


def make_alert(
    seq: int = 1,
    label: str = "dog_bark",
    *,
    score: float = 0.9,
    device: str = "test-pi",
    model_id: str = "m",
    alert_id: str | None = None,
    clip: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Alert:
    """An alert as a sink receives it: a fresh UUID4 id unless ``alert_id`` is given, one second
    long, starting ``seq`` minutes after 2026-01-01T00:00 UTC (so times follow ``seq``)."""
    hour, minute = divmod(seq % (24 * 60), 60)
    return Alert(
        id=alert_id or uuid.uuid4().hex,
        seq=seq,
        label=label,
        score=score,
        start=f"2026-01-01T{hour:02d}:{minute:02d}:00+00:00",
        end=f"2026-01-01T{hour:02d}:{minute:02d}:01+00:00",
        duration_s=1.0,
        device=device,
        model_id=model_id,
        clip=clip,
        extra=extra or {},
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs) that the test can fill; skips where it cannot mount."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("filling a real filesystem needs root to mount a 1 MiB tmpfs")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill_disk(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte; returns the filler file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)  # unbuffered: ENOSPC shows here, not at close
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler
