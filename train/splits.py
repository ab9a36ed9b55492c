"""The training data of a run: manifest -> licence filter -> split by group -> audio in memory."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge_detect.errors import DatasetError
from train.cache import FeatureCache
from train.config import TrainConfig
from train.datasets import Clip, load_manifest, source_kind, split_by_group
from train.sequences import ClipAudio, frame_activity

__all__ = ["Dataset", "load_dataset", "ratio_subset", "split_clips"]


@dataclass
class Dataset:
    """The split, loaded: training, validation and test clips in memory."""

    labels: list[str]
    background_index: int
    parts: dict[str, list[ClipAudio]]
    provenance: dict[str, Any]

    def counts(self, part: str) -> list[int]:
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
