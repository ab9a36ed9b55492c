"""``edge-detect data split``: the train/val/test CSVs of a preset's or a checkpoint's split, as
the trainer splits (by group, license filter), on a tiny generated manifest."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent
RATE_HZ = 16_000
HEADER = ["path", "label", "group", "license", "notes"]
LABELS = ["dog_bark", "baby_cry", "background"]


def _dataset(root: Path) -> Path:
    """4 groups per label, 2 clips each, one clip without a license, one unknown label."""
    audio = root / "audio"
    audio.mkdir()
    rows = []
    samples = (0.1 * np.random.default_rng(0).standard_normal(RATE_HZ // 4)).astype(np.float32)
    for label in LABELS:
        for group in range(4):
            for take in range(2):
                name = f"{label}_{group}_{take}.flac"
                sf.write(audio / name, samples, RATE_HZ)
                rows.append([f"audio/{name}", label, f"{label}-g{group}", "CC0", f"take {take}"])
    rows[1][3] = "NONE STATED"
    sf.write(audio / "glass.flac", samples, RATE_HZ)
    rows.append(["audio/glass.flac", "glass", "glass-g0", "CC0", ""])
    manifest = root / "data" / "manifest.csv"
    manifest.parent.mkdir()
    for row in rows:
        row[0] = "../" + row[0]
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(rows)
    return manifest


def _preset(root: Path, manifest: Path) -> Path:
    preset = root / "preset.toml"
    preset.write_text(
        f'[data]\nmanifests = ["{manifest}"]\nlabels = {LABELS!r}\n'
        "val_fraction = 0.25\ntest_fraction = 0.25\nsplit_seed = 3\n".replace("'", '"')
    )
    return preset


def _split(config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "data",
            "split",
            "--config",
            str(config),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _read(out: Path, part: str) -> list[dict[str, str]]:
    with (out / f"{part}.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == [*HEADER, "source_kind"]
        return list(reader)


def test_split_csvs_are_the_trainers_split(tmp_path: Path) -> None:
    from train.config import load_config
    from train.splits import split_clips

    manifest = _dataset(tmp_path)
    preset = _preset(tmp_path, manifest)
    out = tmp_path / "elsewhere" / "split"
    result = _split(preset, out)
    assert result.returncode == 0, result.stderr
    parts = {name: _read(out, name) for name in ("train", "val", "test")}
    expected, excluded = split_clips(load_config(preset))
    assert excluded == 1
    for name, rows in parts.items():
        assert f"{out / name}.csv: {len(rows)} clips" in result.stdout
        # paths resolve from the output folder to the very files the trainer uses
        resolved = [os.path.abspath(out / row["path"]) for row in rows]
        assert resolved == [str(clip.path) for clip in expected[name]]
        assert all(Path(p).is_file() for p in resolved)
    everything = [row for rows in parts.values() for row in rows]
    # every kept clip once: 24 clips less the unlicensed one; the unknown label left out
    assert len(everything) == 23
    assert {row["label"] for row in everything} == set(LABELS)
    assert all(row["license"] == "CC0" for row in everything)
    groups = {name: {row["group"] for row in rows} for name, rows in parts.items()}
    assert not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    assert not groups["train"] & groups["test"]
    # every label reaches every part (4 groups per label at 25% / 25%)
    for rows in parts.values():
        assert {row["label"] for row in rows} == set(LABELS)
    assert parts["val"][0]["notes"].startswith("take ")  # the manifest's other columns kept


def _checkpoint(path: Path, **extra: object) -> Path:
    torch.save(
        {
            "format": "edge-detect-checkpoint",
            "version": 1,
            "labels": LABELS,
            "model_config": {},
            "feature_config": {},
            "model_state": {},
            **extra,
        },
        path,
    )
    return path


def test_checkpoint_gives_the_split_of_its_model(tmp_path: Path) -> None:
    from train.config import load_config

    manifest = _dataset(tmp_path)
    preset = _preset(tmp_path, manifest)
    from_preset = tmp_path / "p"
    assert _split(preset, from_preset).returncode == 0
    counts = {name: len(_read(from_preset, name)) for name in ("train", "val", "test")}
    config = load_config(preset).to_dict()
    recorded = {name: {"dog_bark": n} for name, n in counts.items()}
    same = _checkpoint(tmp_path / "same.pt", train_config=config, data={"clip_counts": recorded})
    result = _split(same, tmp_path / "c")
    assert result.returncode == 0, result.stderr
    for name in ("train", "val", "test"):
        assert (tmp_path / "c" / f"{name}.csv").read_bytes() == (
            from_preset / f"{name}.csv"
        ).read_bytes()
    assert "differ from those" not in result.stderr
    # a checkpoint whose recorded counts differ (e.g. the manifest changed since): a warning
    recorded["train"]["dog_bark"] += 1
    other = _checkpoint(tmp_path / "other.pt", train_config=config, data={"clip_counts": recorded})
    result = _split(other, tmp_path / "o")
    assert result.returncode == 0 and "differ from those" in result.stderr


def test_a_checkpoint_without_train_config_is_refused(tmp_path: Path) -> None:
    result = _split(_checkpoint(tmp_path / "old.pt"), tmp_path / "out")
    assert result.returncode != 0
    assert "carries no training config" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _second_corpus(root: Path) -> Path:
    """Another corpus in its own folder: speech and music as background (3 groups each), a
    gunshot-free 'glass' class, and household noise whose license is not stated."""
    audio = root / "extra" / "audio"
    samples = (0.1 * np.random.default_rng(1).standard_normal(RATE_HZ // 4)).astype(np.float32)
    rows = []
    for folder, label, orig, license_ in (
        ("voices", "background", "speech:fr", "GPL"),
        ("music", "background", "music:score", "GPL"),
        ("glass", "glass", "glass", "CC0"),
        ("household", "background", "dishwasher", "NONE STATED"),
    ):
        (audio / folder).mkdir(parents=True)
        for group in range(3):
            name = f"{folder}/{folder}_{group}.flac"
            sf.write(audio / name, samples, RATE_HZ)
            rows.append([f"audio/{name}", label, f"{folder}-g{group}", license_, orig])
    manifest = root / "extra" / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "license", "orig_label"])
        writer.writerows(rows)
    return manifest


def test_several_manifests_are_pooled_and_split_by_group_across_them(tmp_path: Path) -> None:
    from train.config import TrainConfig
    from train.data_cli import write_split
    from train.splits import split_clips

    first, second = _dataset(tmp_path), _second_corpus(tmp_path)
    config = TrainConfig.from_dict(
        {
            "data": {
                "manifests": [str(first), str(second)],
                "labels": LABELS,
                "background_labels": ["glass"],
                "test_only_licenses": ["NONE STATED"],
                "val_fraction": 0.25,
                "test_fraction": 0.25,
                "split_seed": 3,
            }
        }
    )
    parts, excluded = split_clips(config)
    everything = [c for part in parts.values() for c in part]
    # 25 + 12 clips (glass of both now background); the first corpus's unlicensed dog clip is
    # an event: left out
    assert len(everything) == 36 and excluded == 1
    # both corpora reach the split, glass counts as background
    assert {c.path.parent.name for c in everything} >= {"voices", "music", "glass", "audio"}
    assert all(c.label in LABELS for c in everything)
    assert {c.label for c in everything if c.path.parent.name == "glass"} == {"background"}
    # the household noise (license not stated) is test only, whole
    household = [c for name, part in parts.items() for c in part if "household" in str(c.path)]
    assert len(household) == 3 and all(c in parts["test"] for c in household)
    # groups never straddle parts, across corpora
    groups = {name: {c.group for c in part} for name, part in parts.items()}
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"])
    assert not groups["val"] & groups["test"]
    out = tmp_path / "split"
    counts = write_split(config, out)
    assert sum(counts.values()) == 36
    rows = [row for name in ("train", "val", "test") for row in _read_any(out / f"{name}.csv")]
    kinds = {row["source_kind"] for row in rows}
    assert {"voices:speech", "music:music", "household:dishwasher"} <= kinds
    assert {row["label"] for row in rows if "glass" in row["path"]} == {"background"}
    assert all(Path(out, row["path"]).resolve().is_file() for row in rows)


def test_leave_one_source_out_puts_the_whole_source_in_test(tmp_path: Path) -> None:
    from train.config import TrainConfig
    from train.splits import split_clips

    config = TrainConfig.from_dict(
        {
            "data": {
                "manifests": [str(_dataset(tmp_path)), str(_second_corpus(tmp_path))],
                "labels": LABELS,
                "exclude_sources": ["music:music"],
                "val_fraction": 0.25,
                "test_fraction": 0.25,
            }
        }
    )
    parts, _ = split_clips(config)
    music = [c for part in parts.values() for c in part if "music" in str(c.path)]
    assert len(music) == 3 and all(c in parts["test"] for c in music)


def test_an_old_single_manifest_config_still_loads(tmp_path: Path) -> None:
    from train.config import TrainConfig

    config = TrainConfig.from_dict({"data": {"manifest": "a.csv"}})
    assert config.data.manifests == ["a.csv"]


def _read_any(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
