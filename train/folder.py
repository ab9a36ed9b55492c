"""Teach it your own sound: a folder with one sub-folder of recordings per class.

``DIR/<class>/*.wav|flac|ogg`` (any depth below the class folder); the folder named
``background`` is the "no event" class. :func:`folder_config` turns such a folder into the
training config of the default preset: it lists the clips (:func:`train.datasets.
load_folder_per_class`), writes them as a manifest CSV into the run folder (the trainer reads
manifests; the CSV also lets ``edge-detect data split`` and ``export`` find the data again) and
sets the labels to the folder's classes.

Small folders make small validation sets, and a validation error measured on a handful of clips
says little: :func:`split_warnings` names every class whose validation part is too small to
choose a checkpoint, with the error bound that its size allows.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_detect.errors import DatasetError
from train.config import TrainConfig, load_config
from train.datasets import load_folder_per_class

__all__ = [
    "BACKGROUND",
    "MIN_CLIPS_PER_CLASS",
    "MIN_VALIDATION_CLIPS",
    "FolderData",
    "folder_config",
    "read_folder",
    "split_warnings",
    "zero_error_bound",
]

log = logging.getLogger(__name__)

BACKGROUND = "background"
"""The sub-folder whose recordings are the "no event" class."""
MIN_CLIPS_PER_CLASS = 3
"""Fewest clips of a class that can be split into training, validation and test at all."""
MIN_VALIDATION_CLIPS = 20
"""Fewer validation clips of a class than this and a checkpoint chosen on them is close to a
guess: 0 errors in 20 clips still allows a true error rate of 14% (95% bound)."""
CONFIDENCE = 0.95
"""Confidence of the error bounds that the warnings quote."""
MANIFEST_NAME = "folder_manifest.csv"
"""The manifest that :func:`folder_config` writes into the run folder."""


@dataclass(frozen=True)
class FolderData:
    """What a class folder holds."""

    root: Path
    labels: list[str]
    """Event classes (sorted), then ``background`` when the folder has one."""
    counts: dict[str, int]
    """Clips per class."""
    has_background: bool

    @property
    def events(self) -> list[str]:
        """The classes that alert (every class but background)."""
        return [label for label in self.labels if label != BACKGROUND]


def read_folder(root: str | Path) -> tuple[FolderData, list[Any]]:
    """The classes of ``root`` and its clips; DatasetError saying what is missing.

    Raises
    ------
    DatasetError
        No such folder, no class sub-folders with audio, no event class (only ``background``),
        or a class with fewer than :data:`MIN_CLIPS_PER_CLASS` clips.
    """
    root = Path(root)
    clips = load_folder_per_class(root)
    counts = Counter(clip.label for clip in clips)
    events = sorted(label for label in counts if label != BACKGROUND)
    if not events:
        raise DatasetError(
            f"{root} holds only {BACKGROUND}/; expected at least one more sub-folder named after "
            f"the sound to detect, e.g. {root}/doorbell/*.wav"
        )
    few = {label: n for label, n in counts.items() if n < MIN_CLIPS_PER_CLASS}
    if few:
        raise DatasetError(
            f"{root}: class(es) {few} have fewer than {MIN_CLIPS_PER_CLASS} clips; every class "
            "needs clips for training, validation and test (dozens make a usable model)"
        )
    has_background = BACKGROUND in counts
    labels = events + ([BACKGROUND] if has_background else [])
    return FolderData(root, labels, dict(counts), has_background), clips


def _write_manifest(clips: list[Any], root: Path, path: Path) -> None:
    """``path,label,group,source`` rows, paths absolute (the run folder may live anywhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "source"])
        for clip in clips:
            writer.writerow([clip.path, clip.label, clip.group, f"folder {root}"])


def folder_config(
    root: str | Path,
    run_dir: Path,
    preset: str | Path,
    overrides: dict[str, Any] | None = None,
) -> tuple[TrainConfig, FolderData]:
    """The training config for the class folder ``root``: ``preset`` with the folder's clips
    (written to ``run_dir/folder_manifest.csv``) and classes, and ``optim.out_dir = run_dir``.

    Licence filters of the preset are cleared: the user's own recordings carry no licence column.
    """
    data, clips = read_folder(root)
    manifest = run_dir / MANIFEST_NAME
    _write_manifest(clips, Path(os.path.abspath(root)), manifest)
    merged: dict[str, Any] = {key: dict(value) for key, value in (overrides or {}).items()}
    merged.setdefault("data", {}).update(
        {
            "manifests": [str(manifest.resolve())],
            "labels": data.labels if data.has_background else [*data.labels, BACKGROUND],
            "background_label": BACKGROUND,
            "exclude_licenses": [],
        }
    )
    merged.setdefault("optim", {})["out_dir"] = str(run_dir.resolve())
    return load_config(preset, merged), data


def zero_error_bound(clips: int, confidence: float = CONFIDENCE) -> float:
    """Largest true error rate that still gives 0 errors in ``clips`` trials with probability
    ``1 - confidence`` (the exact one-sided Clopper-Pearson bound: ``1 - (1 - c) ** (1 / n)``)."""
    if clips <= 0:
        return 1.0
    return 1.0 - (1.0 - confidence) ** (1.0 / clips)


def split_warnings(
    parts: dict[str, list[Any]], labels: list[str], val_fraction: float
) -> list[str]:
    """One sentence per class whose validation part is too small to choose a checkpoint on.

    ``parts`` as :func:`train.trainer.split_clips` returns them; ``val_fraction`` is the
    config's ``data.val_fraction`` (to say how many clips would be enough).
    """
    enough = int(round(MIN_VALIDATION_CLIPS / val_fraction)) if val_fraction > 0 else 0
    advice = (
        f"add clips (about {enough} per class put {MIN_VALIDATION_CLIPS} into validation)"
        if enough
        else "set data.val_fraction above 0"
    )
    val = Counter(clip.label for clip in parts["val"])
    train = Counter(clip.label for clip in parts["train"])
    warnings = []
    for label in labels:
        n = val.get(label, 0)
        if label == BACKGROUND and not train.get(label):
            continue  # no background clips of the user's: the shipped background serves
        if n >= MIN_VALIDATION_CLIPS:
            continue
        if n == 0:
            warnings.append(
                f"class {label!r} has no validation clips: its validation error cannot be "
                f"measured and the checkpoint is chosen on the other classes alone; {advice}"
            )
            continue
        warnings.append(
            f"class {label!r} has only {n} validation clip(s): even a validation error of 0.0 "
            f"there allows a true error of up to {zero_error_bound(n):.0%} "
            f"({CONFIDENCE:.0%} bound), too coarse to choose a checkpoint; {advice}"
        )
    return warnings
