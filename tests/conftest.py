"""Shared fixtures. Tests that need the real corpus use ``corpus_dir`` and skip without it."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "edge_sed_real_v1"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """The real corpus beside the checkout; skips the test with a reason when it is absent."""
    if not (CORPUS / "manifest.csv").is_file():
        pytest.skip(f"real corpus not found at {CORPUS} (end users bring their own data)")
    return CORPUS
