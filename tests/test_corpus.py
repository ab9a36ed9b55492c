"""The real corpus (../shared/data/edge_sed_real_v1) loads as its README says; the cache pays off.

Skipped where the corpus is absent (``corpus_dir`` fixture).
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("soundfile")

from edge_detect.cli import main  # noqa: E402
from train.datasets import label_counts, load_manifest, take_evenly  # noqa: E402
from train.splits import split_by_group  # noqa: E402

pytestmark = pytest.mark.corpus

# From the corpus README: label -> (clips, duration in minutes, distinct groups)
README_COUNTS = {
    "dog_bark": (248, 12.6, 86),
    "baby_cry": (370, 41.9, 199),
    "gun_shot": (96, 2.8, 32),
    "glass_break": (212, 3.5, 91),
    "background": (1662, 71.3, 296),
}
SPEEDUP_SUBSET_CLIPS = 600
REQUIRED_SPEEDUP = 10.0
CACHED_REPEATS = 3


def test_manifest_matches_the_readme(corpus_dir: Path) -> None:
    clips = load_manifest(corpus_dir / "manifest.csv")
    assert len(clips) == 2588
    assert dict(label_counts(clips)) == {k: v[0] for k, v in README_COUNTS.items()}
    for label, (_, minutes, groups) in README_COUNTS.items():
        mine = [c for c in clips if c.label == label]
        assert len({c.group for c in mine}) == groups, label
        stated = sum(c.duration_s or 0.0 for c in mine) / 60
        assert stated == pytest.approx(minutes, abs=0.06), label
    assert all(c.path.is_file() and c.license and c.fold for c in clips)
    background = {c.orig_label for c in clips if c.label == "background"}
    assert "siren" in background and "speech:fr" in background  # fine classes are kept


def test_group_split_of_the_corpus(corpus_dir: Path) -> None:
    clips = load_manifest(corpus_dir / "manifest.csv", check_files=False)
    for seed in range(5):
        split = split_by_group(clips, val_fraction=0.15, test_fraction=0.15, seed=seed)
        assert split.shared_groups() == set()
        for part in (split.train, split.val, split.test):
            assert set(label_counts(part)) == set(README_COUNTS)
        gunshots = label_counts(split.val)["gun_shot"] / README_COUNTS["gun_shot"][0]
        assert 0.05 < gunshots < 0.3


@contextlib.contextmanager
def _keep_logging() -> Iterator[None]:
    """main() configures the root logger for a CLI run; give pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level


def _stats(argv: list[str]) -> tuple[float, str]:
    out = io.StringIO()
    with _keep_logging(), contextlib.redirect_stdout(out):
        started = time.perf_counter()
        code = main(["--quiet", *argv])
        elapsed = time.perf_counter() - started
    assert code == 0
    return elapsed, out.getvalue()


def test_stats_second_run_is_10x_faster(corpus_dir: Path, tmp_path: Path) -> None:
    argv = [
        "data",
        "stats",
        "--manifest",
        str(corpus_dir / "manifest.csv"),
        "--limit",
        str(SPEEDUP_SUBSET_CLIPS),
        "--cache",
        str(tmp_path / "cache"),
    ]
    # import everything the CLI registers first, so that both runs time the data work alone
    with _keep_logging(), contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit):
        main(["data", "stats", "--help"])
    first_s, table = _stats(argv)
    cached = [_stats(argv) for _ in range(CACHED_REPEATS)]
    assert all(text == table for _, text in cached)
    second_s = statistics.median(s for s, _ in cached)
    print(f"first {first_s:.2f} s, cached (median of {CACHED_REPEATS}) {second_s:.3f} s")
    assert first_s >= REQUIRED_SPEEDUP * second_s, (first_s, second_s)
    # the table counts what the manifest lists, with durations of the decoded audio
    subset = take_evenly(load_manifest(corpus_dir / "manifest.csv"), SPEEDUP_SUBSET_CLIPS)
    for label, count in label_counts(subset).items():
        minutes = sum(c.duration_s or 0.0 for c in subset if c.label == label) / 60
        groups = len({c.group for c in subset if c.label == label})
        assert f"| {label} | {count} | {minutes:.1f} | {groups} |" in table
    assert "skipped clips (unreadable): 0" in table
