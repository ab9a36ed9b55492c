"""Shared fixtures. Tests that need the real corpus use ``corpus_dir`` and skip without it."""

from __future__ import annotations

import uuid
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
