"""``edge-detect data stats`` end to end, as a subprocess on a generated dataset."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parent.parent
RATE_HZ = 16_000


def _dataset(root: Path) -> Path:
    rows = [("a.wav", "dog", "g1", 0.5), ("b.flac", "dog", "g1", 1.0), ("c.wav", "cry", "g2", 1.5)]
    for name, _, _, seconds in rows:
        samples = 0.1 * np.random.default_rng(0).standard_normal(int(RATE_HZ * seconds))
        sf.write(root / name, samples.astype(np.float32), RATE_HZ)
    (root / "broken.wav").write_text("not audio " * 20)
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows([(n, label, g) for n, label, g, _ in rows])
        writer.writerow(["broken.wav", "cry", "g3"])
    return root / "manifest.csv"


def _run(*args: str | Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGE_DETECT_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "train", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_stats_table_skips_bad_clips_and_fills_the_cache(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path)
    first = _run("data", "stats", "--manifest", manifest, cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert "| dog | 2 | 0.0 | 1 |" in lines  # 1.5 s = 0.025 min
    assert "| cry | 1 | 0.0 | 1 |" in lines
    assert "| **total** | 3 | 0.1 | 2 |" in lines
    assert "skipped clips (unreadable): 1" in lines
    assert "broken.wav" in first.stderr and "Traceback" not in first.stderr
    assert "3 features computed, 0 read from the cache" in first.stderr
    assert len(list((tmp_path / "cache").rglob("logmel-*/*/*.npy"))) == 3
    second = _run("data", "stats", "--manifest", manifest, cache=tmp_path / "cache")
    assert second.stdout == first.stdout
    assert "0 features computed, 3 read from the cache" in second.stderr


def test_strict_stops_at_the_bad_clip(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path)
    result = _run("data", "stats", "--manifest", manifest, "--strict", cache=tmp_path / "c")
    assert result.returncode == 2
    assert "broken.wav" in result.stderr and "cannot decode" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_manifest_is_one_clear_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,class\na.wav,dog\n")
    result = _run("data", "stats", "--manifest", manifest, cache=tmp_path / "c")
    assert result.returncode == 2
    assert "lacks the column(s) ['path', 'label']" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_limit_and_label_map(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path)
    label_map = tmp_path / "labels.toml"
    label_map.write_text('default = "background"\n[map]\ndog = "dog_bark"\n')
    result = _run(
        "data", "stats", "--manifest", manifest, "--label-map", label_map, "--limit", "2",
        cache=tmp_path / "c",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "| dog_bark | 1 | 0.0 | 1 |" in result.stdout  # a.wav, then c.wav (every 2nd row)
    assert "| background | 1 | 0.0 | 1 |" in result.stdout


def test_feature_config_selects_its_own_cache_entries(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path)
    config = tmp_path / "features.toml"
    config.write_text("[features]\nn_mels = 32\nfmax_hz = 4000.0\n")
    cache = tmp_path / "cache"
    result = _run("data", "stats", "--manifest", manifest, "--feature-config", config, cache=cache)
    assert result.returncode == 0, result.stderr
    (entry_dir,) = cache.glob("logmel-*")
    assert '"n_mels": 32' in (entry_dir / "feature_config.json").read_text()
    config.write_text("[features]\nn_mels = 'many'\n")
    bad = _run("data", "stats", "--manifest", manifest, "--feature-config", config, cache=cache)
    assert bad.returncode == 2 and "n_mels" in bad.stderr and "Traceback" not in bad.stderr


def test_stats_of_a_class_folder_as_train_data_takes_it(tmp_path: Path) -> None:
    """The issue: 'data stats --manifest FOLDER' failed with "Is a directory"."""
    for label, seconds in (("doorbell", (0.6, 1.2)), ("background", (3.0,))):
        (tmp_path / "my_sounds" / label).mkdir(parents=True)
        for i, length in enumerate(seconds):
            samples = 0.1 * np.random.default_rng(i).standard_normal(int(RATE_HZ * length))
            sf.write(tmp_path / "my_sounds" / label / f"{i}.wav", samples, RATE_HZ)
    result = _run("data", "stats", "--manifest", tmp_path / "my_sounds", cache=tmp_path / "c")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "| doorbell | 2 | 0.0 | 2 |" in lines  # one group per file
    assert "| background | 1 | 0.1 | 1 |" in lines  # 3 s = 0.05 min
    assert "| **total** | 3 | 0.1 | 3 |" in lines
