"""The training data of a run: manifest -> licence filter -> split by group -> audio in memory."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from edge_detect.errors import DatasetError
from train.cache import FeatureCache
from train.config import TrainConfig
from train.datasets import Clip, label_counts, load_manifest, some_of, source_kind
from train.sequences import ClipAudio, frame_activity

__all__ = [
    "Dataset",
    "Split",
    "load_dataset",
    "ratio_subset",
    "split_by_fold",
    "split_by_group",
    "split_clips",
]


@dataclass
class Dataset:
    """The split, loaded: training, validation and test clips in memory."""

    labels: list[str]
    background_index: int
    parts: dict[str, list[ClipAudio]]
    provenance: dict[str, Any]

    def counts(self, part: str) -> list[int]:
        """Items per class index in ``part``."""
        counts = Counter(item.target for item in self.parts[part])
        return [counts.get(i, 0) for i in range(len(self.labels))]


def _manifest_clips(config: TrainConfig) -> list[Clip]:
    """Every manifest's clips of the configured classes (background labels mapped), pooled."""
    data = config.data
    clips: list[Clip] = []
    for name in data.manifests:
        manifest = config.resolve(name)
        for clip in load_manifest(manifest, labels=[*data.labels, *data.background_labels]):
            if clip.label in data.background_labels:
                clip = dataclasses.replace(clip, label=data.background_label)
            clips.append(clip)
    return clips


def _has_license(clip: Clip, texts: Sequence[str]) -> bool:
    return any(t.lower() in (clip.license or "").lower() for t in texts)


def split_clips(config: TrainConfig) -> tuple[dict[str, list[Clip]], int]:
    """Manifests -> filtered clips -> split by group across all of them -> the training subset:
    the clips of each part (``train``, ``val``, ``test``) as training uses them, and how many
    clips the license filter left out. ``edge-detect data split`` writes these parts as CSVs.

    Background clips under ``data.test_only_licenses`` and every clip of
    ``data.exclude_sources`` join the test part whole (never trained or validated on)."""
    data = config.data
    clips = _manifest_clips(config)
    test_only = [
        c
        for c in clips
        if (_has_license(c, data.test_only_licenses) and c.label == data.background_label)
        or source_kind(c) in data.exclude_sources
    ]
    chosen = {id(c) for c in test_only}
    kept = [
        c
        for c in clips
        if id(c) not in chosen
        and not _has_license(c, data.exclude_licenses)
        and not _has_license(c, data.test_only_licenses)
    ]
    if not kept:
        raise DatasetError(
            f"{data.manifests}: every clip was excluded by license {data.exclude_licenses} "
            f"or test-only license {data.test_only_licenses}"
        )
    split = split_by_group(
        kept,
        val_fraction=data.val_fraction,
        test_fraction=data.test_fraction,
        seed=data.split_seed,
    )
    if split.shared_groups():
        raise DatasetError(f"split leaks groups across parts: {sorted(split.shared_groups())[:5]}")
    parts_clips = split.parts()
    parts_clips["test"] = parts_clips["test"] + test_only
    if data.max_clips_per_class:
        rng = random.Random(data.split_seed)
        limited = []
        for label in data.labels:
            of_label = [c for c in parts_clips["train"] if c.label == label]
            rng.shuffle(of_label)
            limited += of_label[: data.max_clips_per_class]
        parts_clips["train"] = limited
    if data.train_ratio:
        parts_clips["train"] = ratio_subset(
            parts_clips["train"], data.labels, data.train_ratio, data.subset_seed
        )
    return parts_clips, len(clips) - len(kept) - len(test_only)


def load_dataset(config: TrainConfig, *, progress: bool = False) -> Dataset:
    """Manifest -> filtered clips -> split by group (:func:`split_clips`) -> audio in memory."""
    data = config.data
    parts_clips, excluded_clips = split_clips(config)
    cache = FeatureCache(
        config.resolve(data.cache_dir) if data.cache_dir else None, config.features
    )
    index = {label: i for i, label in enumerate(data.labels)}
    parts: dict[str, list[ClipAudio]] = {}
    for name, part in parts_clips.items():
        loaded = cache.load_many(part, what="audio", progress=progress)
        parts[name] = [
            ClipAudio(
                clip,
                index[clip.label],
                audio,
                *frame_activity(audio, config.features, config.augment.active_db),
            )
            for clip, audio in zip(loaded.clips, loaded.features, strict=True)
        ]
    train_counts = Counter(item.target for item in parts["train"])
    for label in data.labels:  # no background clips: the shipped background serves
        if train_counts.get(index[label], 0) == 0 and label != data.background_label:
            raise DatasetError(
                f"class {label!r} has no training clips in {data.manifests} after filtering; "
                "check data.labels and data.exclude_licenses"
            )
    learnt = [c for name in ("train", "val") for c in parts[name]]
    provenance = {
        # as configured (relative to the checkout), never an absolute path of this machine
        "manifests": list(data.manifests),
        "manifest_sha256": {
            name: hashlib.sha256(config.resolve(name).read_bytes()).hexdigest()
            for name in data.manifests
        },
        "excluded_licenses": list(data.exclude_licenses),
        "test_only_licenses": list(data.test_only_licenses),
        "excluded_sources": list(data.exclude_sources),
        "excluded_clips": excluded_clips,
        "sources": sorted({c.clip.source or "?" for c in learnt}),
        "licenses": sorted({c.clip.license or "?" for c in learnt}),
        "test_licenses": sorted({c.clip.license or "?" for c in parts["test"]}),
        "clip_counts": {
            name: {
                label: sum(1 for c in part if c.target == i) for i, label in enumerate(data.labels)
            }
            for name, part in parts.items()
        },
        "groups": {name: len({c.clip.group for c in part}) for name, part in parts.items()},
    }
    return Dataset(list(data.labels), index[data.background_label], parts, provenance)


def ratio_subset(
    clips: Sequence[Clip], labels: Sequence[str], ratio: Sequence[int], seed: int
) -> list[Clip]:
    """The largest subset with exactly ``ratio`` clips per class (random clips, by ``seed``)."""
    by_label = {label: [c for c in clips if c.label == label] for label in labels}
    unit = min(len(by_label[label]) // r for label, r in zip(labels, ratio, strict=True))
    if unit == 0:
        raise DatasetError(
            f"the training split cannot give the ratio {list(ratio)} of {list(labels)}: it has "
            f"{[len(by_label[label]) for label in labels]} clips"
        )
    rng = random.Random(seed)
    chosen = {
        id(c)
        for label, r in zip(labels, ratio, strict=True)
        for c in rng.sample(by_label[label], unit * r)
    }
    return [c for c in clips if id(c) in chosen]


@dataclass(frozen=True)
class Split:
    """Clips of the training, validation and test sets (test may be empty)."""

    train: list[Clip]
    val: list[Clip]
    test: list[Clip]

    def parts(self) -> dict[str, list[Clip]]:
        """``{"train": ..., "val": ..., "test": ...}``."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def shared_groups(self) -> set[str]:
        """Groups that occur in more than one part (empty for a correct split)."""
        seen: dict[str, set[str]] = defaultdict(set)
        for name, clips in self.parts().items():
            for clip in clips:
                seen[clip.group].add(name)
        return {group for group, names in seen.items() if len(names) > 1}


def split_by_group(
    clips: Sequence[Clip],
    *,
    val_fraction: float,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> Split:
    """Split by recording: every group goes whole to train, val or test.

    Stratified by label: each group belongs to its most frequent label; per label, groups are
    shuffled (by ``seed``) and handed to test, then val, while that brings the part's share of
    the label's clips closer to its fraction. The first group of each label always goes to a
    held-out part and the last one to train, so a label with at least three groups appears in all
    three parts (with two groups, in train and test, or train and val).

    Parameters
    ----------
    val_fraction, test_fraction : float
        Target share of each label's clips, each in [0, 1), sum below 1.
    seed : int
        Same seed and clips, same split.

    Returns
    -------
    Split, each part in the input order.
    """
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DatasetError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction must be below 1 to leave clips for training, got "
            f"{val_fraction} + {test_fraction}"
        )
    if not clips:
        raise DatasetError("cannot split an empty list of clips")
    members: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        members[clip.group].append(clip)
    groups_of_label: dict[str, list[str]] = defaultdict(list)
    for group in sorted(members):
        counts = label_counts(members[group])
        # most frequent label; ties go to the alphabetically first one, for determinism
        primary = min(counts, key=lambda label: (-counts[label], label))
        groups_of_label[primary].append(group)
    rng = random.Random(seed)
    holdouts = [(name, f) for name, f in (("test", test_fraction), ("val", val_fraction)) if f > 0]
    assignment: dict[str, str] = {}
    for label in sorted(groups_of_label):
        groups = groups_of_label[label]
        rng.shuffle(groups)
        total = sum(len(members[g]) for g in groups)
        taken = {name: 0 for name, _ in holdouts}
        train_has_one = False
        for index, group in enumerate(groups):
            size = len(members[group])
            part = "train"
            last = index == len(groups) - 1
            if not (last and not train_has_one):
                for name, fraction in holdouts:
                    target = fraction * total
                    if taken[name] == 0 or abs(taken[name] + size - target) < abs(
                        taken[name] - target
                    ):
                        part = name
                        break
            if part == "train":
                train_has_one = True
            else:
                taken[part] += size
            assignment[group] = part
    parts: dict[str, list[Clip]] = {"train": [], "val": [], "test": []}
    for clip in clips:
        parts[assignment[clip.group]].append(clip)
    return Split(**parts)


def split_by_fold(
    clips: Sequence[Clip],
    *,
    val_folds: Collection[str],
    test_folds: Collection[str] = (),
    allow_shared_groups: bool = False,
) -> Split:
    """Split by the dataset's own folds: ``val_folds`` to val, ``test_folds`` to test, the rest
    to train.

    Raises
    ------
    DatasetError
        Folds named twice or absent from the clips, clips without a fold, or (unless
        ``allow_shared_groups``) a group that the folds put in more than one part.
    """
    val_set, test_set = {str(f) for f in val_folds}, {str(f) for f in test_folds}
    if not val_set:
        raise DatasetError("split_by_fold needs at least one validation fold")
    if val_set & test_set:
        raise DatasetError(f"fold(s) {sorted(val_set & test_set)} are both val and test folds")
    no_fold = [clip.path for clip in clips if clip.fold is None]
    if no_fold:
        raise DatasetError(
            f"{len(no_fold)} clip(s) have no fold, e.g. {some_of(no_fold)}; "
            "split them by group instead (split_by_group)"
        )
    present = {clip.fold for clip in clips if clip.fold is not None}
    absent = sorted((val_set | test_set) - present)
    if absent:
        raise DatasetError(f"fold(s) {absent} do not occur; the clips have folds {sorted(present)}")
    parts: dict[str, list[Clip]] = {"train": [], "val": [], "test": []}
    for clip in clips:
        part = "val" if clip.fold in val_set else "test" if clip.fold in test_set else "train"
        parts[part].append(clip)
    split = Split(**parts)
    shared = sorted(split.shared_groups())
    if shared and not allow_shared_groups:
        raise DatasetError(
            f"{len(shared)} group(s) span several of these folds, e.g. {some_of(shared)}: "
            "chunks of one recording would sit on both sides of the split. Use split_by_group, "
            "or pass allow_shared_groups=True if the folds are meant that way"
        )
    return split
