"""train.datasets: every layout loads from a small generated tree; splits keep groups whole."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from edge_detect.errors import DatasetError  # noqa: E402
from train.datasets import (  # noqa: E402
    ESC50_LABEL_MAP,
    Clip,
    LabelMap,
    filter_clips,
    label_counts,
    load_esc50,
    load_folder_per_class,
    load_manifest,
    load_urbansound8k,
    take_evenly,
)
from train.splits import split_by_fold, split_by_group  # noqa: E402

RATE_HZ = 16_000
SPLIT_SEEDS = range(50)


def _write_audio(path: Path, seconds: float = 0.1, rate_hz: int = RATE_HZ) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    sf.write(path, (0.1 * rng.standard_normal(int(rate_hz * seconds))).astype(np.float32), rate_hz)


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _manifest_tree(root: Path) -> Path:
    rows = []
    for i, (label, group) in enumerate(
        [("dog", "g1"), ("dog", "g1"), ("cry", "g2"), ("noise", "g3"), ("noise", "g4")]
    ):
        rel = f"audio/{label}/{i}.{'flac' if i % 2 else 'wav'}"
        _write_audio(root / rel)
        rows.append([rel, label, group, f"f{i % 2}", "CC BY 4.0" if i < 3 else "NC", 0.1, "x"])
    return _write_csv(
        root / "manifest.csv",
        ["path", "label", "group", "fold", "license", "duration_s", "notes"],
        rows,
    )


# ---- manifest ------------------------------------------------------------------------------


def test_manifest_loads_with_relative_paths_and_extras(tmp_path: Path) -> None:
    manifest = _manifest_tree(tmp_path / "data")
    clips = load_manifest(manifest)
    assert [c.label for c in clips] == ["dog", "dog", "cry", "noise", "noise"]
    assert all(c.path.is_absolute() and c.path.is_file() for c in clips)
    assert clips[0].path == (tmp_path / "data" / "audio/dog/0.wav")
    assert clips[1].group == "g1" and clips[1].fold == "f1"
    assert clips[0].license == "CC BY 4.0" and clips[4].license == "NC"
    assert clips[0].duration_s == pytest.approx(0.1)
    assert clips[0].orig_label == "dog"  # no orig_label column: the label itself
    assert clips[0].extra == {"notes": "x"}


def test_manifest_label_map_and_filters(tmp_path: Path) -> None:
    manifest = _manifest_tree(tmp_path)
    label_map = LabelMap({"dog": "dog_bark", "cry": "baby_cry"})
    clips = load_manifest(manifest, label_map=label_map)
    assert label_counts(clips) == Counter({"dog_bark": 2, "baby_cry": 1, "background": 2})
    assert clips[3].orig_label == "noise"
    only_dogs = load_manifest(manifest, label_map=label_map, labels={"dog_bark"})
    assert {c.label for c in only_dogs} == {"dog_bark"} and len(only_dogs) == 2
    free = load_manifest(manifest, licenses=["cc by"])
    assert len(free) == 3


def test_manifest_without_optional_columns(tmp_path: Path) -> None:
    _write_audio(tmp_path / "a.wav")
    _write_audio(tmp_path / "b.wav")
    manifest = _write_csv(tmp_path / "m.csv", ["label", "path"], [["x", "a.wav"], ["y", "b.wav"]])
    clips = load_manifest(manifest)
    assert [c.group for c in clips] == ["a.wav", "b.wav"]  # each clip is its own group
    assert clips[0].fold is None and clips[0].license is None and clips[0].duration_s is None


def test_manifest_label_column(tmp_path: Path) -> None:
    _write_audio(tmp_path / "a.wav")
    manifest = _write_csv(
        tmp_path / "m.csv", ["path", "label", "orig_label"], [["a.wav", "background", "siren"]]
    )
    clip = load_manifest(manifest, label_column="orig_label")[0]
    assert clip.label == "siren" and clip.orig_label == "siren"


def _error(call: Callable[[], object], *fragments: str) -> str:
    with pytest.raises(DatasetError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_manifest_errors(tmp_path: Path) -> None:
    _error(lambda: load_manifest(tmp_path / "nope.csv"), "cannot read", "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    _error(lambda: load_manifest(empty), "empty", "path, label")
    no_label = _write_csv(tmp_path / "nolabel.csv", ["path", "group"], [["a.wav", "g"]])
    _error(lambda: load_manifest(no_label), "lacks the column(s) ['label']", "nolabel.csv")
    header_only = _write_csv(tmp_path / "header.csv", ["path", "label"], [])
    _error(lambda: load_manifest(header_only), "no rows")
    blank = _write_csv(tmp_path / "blank.csv", ["path", "label"], [["a.wav", ""]])
    _error(lambda: load_manifest(blank), "blank.csv:2", "empty ['label']")
    bad_duration = _write_csv(
        tmp_path / "dur.csv", ["path", "label", "duration_s"], [["a.wav", "x", "long"]]
    )
    _error(lambda: load_manifest(bad_duration), "dur.csv:2", "'long'")


def test_manifest_missing_files_are_counted_and_named(tmp_path: Path) -> None:
    _write_audio(tmp_path / "here.wav")
    rows = [["here.wav", "x"]] + [[f"gone{i}.wav", "x"] for i in range(7)]
    manifest = _write_csv(tmp_path / "m.csv", ["path", "label"], rows)
    message = _error(lambda: load_manifest(manifest), "7 of 8 audio files do not exist")
    assert "gone0.wav" in message and "and 2 more" in message
    assert len(load_manifest(manifest, check_files=False)) == 8


def test_strict_label_map_names_unknown_labels(tmp_path: Path) -> None:
    manifest = _manifest_tree(tmp_path)
    strict = LabelMap({"dog": "dog_bark"}, default=None)
    message = _error(
        lambda: load_manifest(manifest, label_map=strict), "not in the label map", "'noise' (2x"
    )
    assert "'cry' (1x, first at " + str(manifest) + ":4)" in message


def test_filters_that_leave_nothing(tmp_path: Path) -> None:
    manifest = _manifest_tree(tmp_path)
    _error(lambda: load_manifest(manifest, labels={"gun_shot"}), "none of its 5 clips")


# ---- label map -------------------------------------------------------------------------------


def test_label_map_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "labels.toml"
    path.write_text('default = "background"\n[map]\ndog = "dog_bark"\ncrying_baby = "baby_cry"\n')
    label_map = LabelMap.from_toml(path)
    assert label_map("dog") == "dog_bark" and label_map("rain") == "background"
    assert label_map.labels == ("baby_cry", "background", "dog_bark")
    strict = LabelMap.from_dict({"map": {"dog": "dog_bark"}})
    assert strict.strict and strict.get("rain") is None
    with pytest.raises(DatasetError, match="'rain' is not in the label map"):
        strict("rain")
    bad = tmp_path / "bad.toml"
    bad.write_text("map = 3\n")
    _error(lambda: LabelMap.from_toml(bad), "bad.toml", "'map' table")
    bad.write_text("[map\n")
    _error(lambda: LabelMap.from_toml(bad), "not valid TOML")
    _error(lambda: LabelMap({"dog": ""}), "non-empty")


# ---- folder per class, ESC-50, UrbanSound8K ---------------------------------------------------


def test_folder_per_class(tmp_path: Path) -> None:
    for rel in ["dog/a.wav", "dog/sub/b.flac", "cry/c.ogg", "cry/readme.txt", "empty/.keep"]:
        if rel.endswith((".txt", ".keep")):
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / rel).write_text("not audio")
        else:
            _write_audio(tmp_path / rel)
    clips = load_folder_per_class(tmp_path)
    assert [(c.label, c.path.name) for c in clips] == [
        ("cry", "c.ogg"),
        ("dog", "a.wav"),
        ("dog", "b.flac"),
    ]
    assert clips[2].group == "dog/sub/b"
    mapped = load_folder_per_class(
        tmp_path,
        label_map=LabelMap({"dog": "dog_bark"}),
        group_from=lambda p: p.parts[0],
    )
    assert [c.label for c in mapped] == ["background", "dog_bark", "dog_bark"]
    assert [c.group for c in mapped] == ["cry", "dog", "dog"]
    _error(lambda: load_folder_per_class(tmp_path / "nope"), "does not exist")
    _error(lambda: load_folder_per_class(tmp_path / "empty"), "no class sub-folders")
    (tmp_path / "only_text" / "x").mkdir(parents=True)
    _error(lambda: load_folder_per_class(tmp_path / "only_text"), "holds no audio")


def _esc50_tree(root: Path) -> None:
    header = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
    rows = [
        ["1-100-A-0.wav", 1, 0, "dog", "True", 100, "A"],
        ["1-100-B-0.wav", 1, 0, "dog", "True", 100, "B"],
        ["2-200-A-20.wav", 2, 20, "crying_baby", "True", 200, "A"],
        ["3-300-A-39.wav", 3, 39, "glass_breaking", "False", 300, "A"],
        ["4-400-A-10.wav", 4, 10, "rain", "True", 400, "A"],
    ]
    _write_csv(root / "meta" / "esc50.csv", header, rows)
    for row in rows:
        _write_audio(root / "audio" / str(row[0]), seconds=0.05, rate_hz=44_100)


def test_esc50(tmp_path: Path) -> None:
    _esc50_tree(tmp_path)
    clips = load_esc50(tmp_path)
    assert [c.label for c in clips] == [
        "dog_bark",
        "dog_bark",
        "baby_cry",
        "glass_break",
        "background",
    ]
    assert clips[0].group == clips[1].group != clips[2].group  # takes of one source clip
    assert clips[0].fold == "1" and clips[3].fold == "3"
    assert clips[0].license.startswith("CC BY 3.0") and "NC" in clips[3].license
    assert clips[4].orig_label == "rain"
    assert load_esc50(tmp_path, licenses=["CC BY 3.0"])[-1].orig_label == "rain"
    assert len(load_esc50(tmp_path, labels=set(ESC50_LABEL_MAP.mapping.values()))) == 4
    (tmp_path / "audio" / "3-300-A-39.wav").unlink()
    _error(lambda: load_esc50(tmp_path), "1 of 5 audio files do not exist", "3-300-A-39.wav")
    _error(lambda: load_esc50(tmp_path / "nope"), "cannot read ESC-50 metadata")


def test_urbansound8k(tmp_path: Path) -> None:
    header = ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"]
    rows = [
        ["100-3-0-0.wav", 100, 0.0, 0.5, 1, 1, 3, "dog_bark"],
        ["100-3-0-1.wav", 100, 0.5, 1.0, 2, 1, 3, "dog_bark"],
        ["200-6-0-0.wav", 200, 1.0, 1.25, 1, 2, 6, "gun_shot"],
        ["300-8-0-0.wav", 300, 0.0, 4.0, 1, 2, 8, "siren"],
    ]
    _write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", header, rows)
    for row in rows:
        _write_audio(tmp_path / "audio" / f"fold{row[5]}" / str(row[0]), rate_hz=22_050)
    clips = load_urbansound8k(tmp_path)
    assert [c.label for c in clips] == ["dog_bark", "dog_bark", "gun_shot", "background"]
    assert clips[0].group == clips[1].group == "us8k-100"
    assert [c.fold for c in clips] == ["1", "1", "2", "2"]
    assert clips[2].duration_s == pytest.approx(0.25)
    assert clips[1].extra["salience"] == "2"
    assert clips[3].path == tmp_path / "audio" / "fold2" / "300-8-0-0.wav"
    _write_csv(tmp_path / "metadata" / "UrbanSound8K.csv", ["slice_file_name", "fold"], rows)
    _error(lambda: load_urbansound8k(tmp_path), "lacks the column(s) ['fsID', 'class']")


# ---- splits ------------------------------------------------------------------------------------


def _synthetic_clips(seed: int = 0) -> list[Clip]:
    """Imbalanced labels, groups of 1 to 12 clips (like chunks of recordings)."""
    rng = np.random.default_rng(seed)
    clips = []
    for label, n_groups in [("background", 60), ("dog_bark", 20), ("gun_shot", 5), ("rare", 3)]:
        for g in range(n_groups):
            for c in range(int(rng.integers(1, 13))):
                clips.append(
                    Clip(
                        path=Path(f"/d/{label}/{g}/{c}.wav"),
                        label=label,
                        orig_label=label,
                        group=f"{label}-{g}",
                        fold=f"fold{g % 5}",
                    )
                )
    return clips


@pytest.mark.parametrize("seed", SPLIT_SEEDS)
def test_group_split_never_shares_a_group(seed: int) -> None:
    clips = _synthetic_clips(seed)
    split = split_by_group(clips, val_fraction=0.2, test_fraction=0.1, seed=seed)
    groups = [{c.group for c in part} for part in (split.train, split.val, split.test)]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]
    assert split.shared_groups() == set()
    assert sorted(map(str, (c.path for c in split.train + split.val + split.test))) == sorted(
        str(c.path) for c in clips
    )
    # every label with >= 3 groups (all of them here) is in every part
    for part in (split.train, split.val, split.test):
        assert set(label_counts(part)) == {"background", "dog_bark", "gun_shot", "rare"}
    # big classes land near their fractions
    total = label_counts(clips)["background"]
    assert 0.1 < label_counts(split.val)["background"] / total < 0.3


def test_group_split_is_deterministic_and_seeded() -> None:
    clips = _synthetic_clips()
    a = split_by_group(clips, val_fraction=0.2, seed=1)
    b = split_by_group(clips, val_fraction=0.2, seed=1)
    c = split_by_group(clips, val_fraction=0.2, seed=2)
    assert a == b and a != c
    assert a.test == []


def test_group_split_small_classes() -> None:
    def clip(label: str, group: str) -> Clip:
        return Clip(Path(f"/{group}.wav"), label, label, group)

    # one group: stays in training; two groups with val and test wanted: train + one held-out
    clips = [clip("solo", "s1"), clip("pair", "p1"), clip("pair", "p2")]
    split = split_by_group(clips, val_fraction=0.3, test_fraction=0.3, seed=0)
    assert label_counts(split.train) == Counter({"solo": 1, "pair": 1})
    assert label_counts(split.val + split.test) == Counter({"pair": 1})


def test_group_split_bad_arguments() -> None:
    clips = _synthetic_clips()
    _error(lambda: split_by_group(clips, val_fraction=1.2), "val_fraction must be in [0, 1)")
    _error(lambda: split_by_group(clips, val_fraction=0.5, test_fraction=0.5), "below 1")
    _error(lambda: split_by_group([], val_fraction=0.2), "empty")


def test_fold_split() -> None:
    clips = _synthetic_clips()
    split = split_by_fold(clips, val_folds=["fold0"], test_folds=["fold1"])
    assert {c.fold for c in split.val} == {"fold0"} and {c.fold for c in split.test} == {"fold1"}
    assert {c.fold for c in split.train} == {"fold2", "fold3", "fold4"}
    assert len(split.train) + len(split.val) + len(split.test) == len(clips)
    _error(lambda: split_by_fold(clips, val_folds=["fold9"]), "['fold9'] do not occur", "fold0")
    _error(lambda: split_by_fold(clips, val_folds=["fold0"], test_folds=["fold0"]), "both")
    # a group spread over folds must not straddle the split
    leaky = [*clips, Clip(Path("/x.wav"), "rare", "rare", "rare-0", fold="fold3")]
    _error(lambda: split_by_fold(leaky, val_folds=["fold0"]), "1 group(s) span", "rare-0")
    assert split_by_fold(leaky, val_folds=["fold0"], allow_shared_groups=True).shared_groups()
    no_fold = [Clip(Path("/y.wav"), "x", "x", "g")]
    _error(lambda: split_by_fold(no_fold, val_folds=["a"]), "1 clip(s) have no fold")


def test_take_evenly_and_filter() -> None:
    clips = _synthetic_clips()
    subset = take_evenly(clips, 10)
    assert len(subset) == 10 and subset[0] == clips[0] and len(set(subset)) == 10
    assert len(take_evenly(clips, 10**6)) == len(clips)
    assert filter_clips(clips, keep=lambda c: c.label == "rare") == [
        c for c in clips if c.label == "rare"
    ]


# ---- public API ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["train.audio_io", "train.datasets", "train.cache", "train.data_cli"]
)
def test_all_lists_exactly_the_public_api(name: str) -> None:
    import importlib
    import inspect

    module = importlib.import_module(name)
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    exported = set(module.__all__)
    assert all(hasattr(module, attr) for attr in exported)
    assert defined <= exported, f"public but not in __all__: {sorted(defined - exported)}"
