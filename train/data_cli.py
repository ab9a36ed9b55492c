"""``edge-detect data``: look at a dataset, fill the feature cache, write a model's split.

``edge-detect data stats --manifest CSV`` loads the manifest, computes (or reads from the cache)
the log-mel features of every clip, and prints per-label counts, decoded durations and distinct
recordings (groups) on stdout. Unreadable clips are skipped and counted unless ``--strict``.

``edge-detect data split --config PRESET_OR_CHECKPOINT --out DIR`` writes the training,
validation and test clips exactly as ``train/splits.py`` splits them (:func:`train.splits.
split_clips`) as ``DIR/{train,val,test}.csv``: the manifest's own columns and rows, paths
rewritten to resolve from ``DIR``. Given a checkpoint, the split of an existing model is
recovered from the training config it carries (for calibrating on its validation part and
testing on its test part).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from edge_detect.errors import CheckpointError, ConfigError, DatasetError

__all__ = ["register", "split_config", "stats_table", "write_split"]

log = logging.getLogger(__name__)

SECONDS_PER_MINUTE = 60.0


def register(subparsers: Any, formatter: type[argparse.HelpFormatter]) -> None:
    """Add ``data`` (with ``data stats``) to the ``edge-detect`` parser."""
    from train.cache import CACHE_ENV, default_cache_root

    data = subparsers.add_parser(
        "data",
        help="(workstation) inspect datasets and fill the feature cache",
        description=__doc__,
        formatter_class=formatter,
    )
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    stats = commands.add_parser(
        "stats",
        help="per-label counts, durations and groups of a manifest; fills the feature cache",
        description=(
            "Print per-label clip counts, durations (decoded audio, minutes) and distinct groups "
            "of a manifest CSV, computing and caching the log-mel features of every clip. "
            "The second run reads the cache and is much faster.\n\n"
            "example: edge-detect data stats "
            "--manifest ../shared/data/edge_sed_real_v1/manifest.csv"
        ),
        formatter_class=formatter,
    )
    stats.add_argument(
        "--manifest",
        required=True,
        type=Path,
        default=argparse.SUPPRESS,
        help="manifest CSV (path,label[,group,fold,...], paths relative to its folder), or a "
        "folder with one sub-folder of audio per class (as 'train --data' takes)",
    )
    stats.add_argument(
        "--cache",
        type=Path,
        default=default_cache_root(),
        help=f"feature cache folder (${CACHE_ENV} moves the default)",
    )
    stats.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable clip instead of skipping",
    )
    stats.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="use only N clips spread evenly over the manifest (a quick look)",
    )
    stats.add_argument(
        "--label-column",
        default="label",
        help="manifest column the labels come from (e.g. orig_label for the fine classes)",
    )
    stats.add_argument(
        "--label-map",
        type=Path,
        default=None,
        metavar="TOML",
        help="TOML label map ([map] orig = label, optional default = 'background'); "
        "none: the manifest's labels as they are",
    )
    stats.add_argument(
        "--feature-config",
        type=Path,
        default=None,
        metavar="TOML",
        help="TOML with FeatureConfig fields (top level or a [features] table); "
        "none: the shared front end",
    )
    stats.set_defaults(func=_run_stats)
    split = commands.add_parser(
        "split",
        help="write the train/val/test CSVs of a preset's or a checkpoint's split",
        description=(
            "Write DIR/train.csv, val.csv and test.csv: the clips of each part exactly as "
            "'edge-detect train' splits them (by group, license filter, training subset), with "
            "the manifest's columns and paths that resolve from DIR. A checkpoint (.pt) gives "
            "the split of the model trained from it.\n\nexample: edge-detect data split "
            "--config runs/default/checkpoint.pt --out /tmp/split"
        ),
        formatter_class=formatter,
    )
    split.add_argument(
        "--config",
        required=True,
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML preset, or a checkpoint .pt (its stored training config)",
    )
    split.add_argument(
        "--out", required=True, type=Path, default=argparse.SUPPRESS, help="output folder"
    )
    split.set_defaults(func=_run_split)
    data.set_defaults(func=_usage(data))


def _usage(parser: argparse.ArgumentParser) -> Any:
    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler


def _feature_config(path: Path | None) -> Any:
    from edge_detect.features import FeatureConfig

    if path is None:
        return FeatureConfig()
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read feature config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"feature config {path} is not valid TOML: {exc}") from None
    return FeatureConfig.from_dict(data.get("features", data))


def stats_table(
    labels: list[str], durations_s: list[float], groups: list[str], skipped: int
) -> str:
    """Markdown table: label, clips, duration (min), distinct groups; a total row; skipped count.

    ``labels[i]``, ``durations_s[i]`` and ``groups[i]`` describe the i-th readable clip.
    """
    per_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        per_label[label].append(i)
    lines = [
        "| label | clips | duration (min) | distinct groups |",
        "|---|---:|---:|---:|",
    ]
    for label in sorted(per_label, key=lambda name: (-len(per_label[name]), name)):
        rows = per_label[label]
        minutes = sum(durations_s[i] for i in rows) / SECONDS_PER_MINUTE
        lines.append(
            f"| {label} | {len(rows)} | {minutes:.1f} | {len({groups[i] for i in rows})} |"
        )
    total_minutes = sum(durations_s) / SECONDS_PER_MINUTE
    lines.append(f"| **total** | {len(labels)} | {total_minutes:.1f} | {len(set(groups))} |")
    lines.append("")
    lines.append(f"skipped clips (unreadable): {skipped}")
    return "\n".join(lines)


def _run_stats(args: argparse.Namespace) -> int:
    """Handler of ``edge-detect data stats``."""
    from train.cache import FeatureCache
    from train.datasets import (
        LabelMap,
        check_files_exist,
        load_folder_per_class,
        load_manifest,
        take_evenly,
    )

    started = time.perf_counter()
    label_map = LabelMap.from_toml(args.label_map) if args.label_map else None
    if args.manifest.is_dir():  # a train --data folder: DIR/<class>/*.wav|flac|ogg
        clips = load_folder_per_class(
            args.manifest, label_map=label_map, check_files=args.limit is None
        )
    else:
        clips = load_manifest(
            args.manifest,
            label_map=label_map,
            label_column=args.label_column,
            check_files=args.limit is None,
        )
    if args.limit is not None:  # check only the files we will read
        clips = take_evenly(clips, args.limit)
        check_files_exist(clips, f"manifest {args.manifest}")
    cache = FeatureCache(args.cache, _feature_config(args.feature_config))
    # load=False: the table needs the entries to exist, not 200 MB of features in memory
    result = cache.load_many(clips, strict=args.strict, progress=sys.stderr.isatty(), load=False)
    table = stats_table(
        [clip.label for clip in result.clips],
        result.durations_s,
        [clip.group for clip in result.clips],
        len(result.skipped),
    )
    print(f"{args.manifest}\n\n{table}")
    elapsed = time.perf_counter() - started
    log.info(
        "%d clips in %.2f s: %d features computed, %d read from the cache (%s), %d skipped",
        len(clips),
        elapsed,
        result.misses,
        result.hits,
        cache.feature_dir,
        len(result.skipped),
    )
    return 0


SPLIT_PARTS = ("train", "val", "test")


def split_config(path: Path) -> tuple[Any, dict[str, Any]]:
    """The training config of a TOML preset or of a checkpoint, and the checkpoint's data
    provenance (empty for a preset)."""
    from train.config import TrainConfig, load_config

    if path.suffix.lower() == ".toml":
        return load_config(path), {}
    from train.checkpoint import load_checkpoint

    data = load_checkpoint(path)
    if not isinstance(data.get("train_config"), dict):
        raise CheckpointError(
            f"checkpoint {path} carries no training config, so its split cannot be recovered; "
            "pass the TOML preset it was trained from instead"
        )
    try:
        config = TrainConfig.from_dict(data["train_config"])
    except ConfigError as exc:
        raise CheckpointError(
            f"checkpoint {path}: its training config is not usable: {exc}"
        ) from None
    provenance = data.get("data")
    return config, provenance if isinstance(provenance, dict) else {}


def write_split(config: Any, out: Path) -> dict[str, int]:
    """Write ``out/{train,val,test}.csv`` for ``config``'s split; clips per part.

    Rows are the manifests' own rows (the columns of all of them, in the part's order) with
    ``path`` relative to ``out``, the label as training sees it (``data.background_labels``
    mapped to background) and a ``source_kind`` column (:func:`train.datasets.source_kind`):
    the kind of sound, by which ``eval stream`` reports false alarms.
    """
    from train.datasets import source_kind
    from train.splits import split_clips

    parts, _ = split_clips(config)
    fields: list[str] = []
    by_path: dict[str, dict[str, str]] = {}
    for name in config.data.manifests:
        manifest = config.resolve(name)
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields += [f for f in reader.fieldnames or [] if f not in fields]
            for row in reader:
                if row.get("path"):
                    by_path[os.path.abspath(manifest.parent / row["path"])] = dict(row)
    fields += [] if "source_kind" in fields else ["source_kind"]
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name in SPLIT_PARTS:
        target = out / f"{name}.csv"
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            for clip in parts[name]:
                found = by_path.get(os.path.abspath(clip.path))
                if found is None:  # pragma: no cover - split_clips read these very manifests
                    raise DatasetError(f"{clip.path} is not a row of {config.data.manifests}")
                row = found
                relative = os.path.relpath(clip.path, out.resolve())
                kind = source_kind(clip)
                writer.writerow({**row, "path": relative, "label": clip.label, "source_kind": kind})
        counts[name] = len(parts[name])
    return counts


def _run_split(args: argparse.Namespace) -> int:
    """Handler of ``edge-detect data split``."""
    from train.checkpoint import file_sha256

    config, provenance = split_config(args.config)
    recorded = provenance.get("manifest_sha256")
    if isinstance(recorded, str):  # checkpoints from before data.manifests
        recorded = {config.data.manifests[0]: recorded}
    for name, sha in (recorded or {}).items():
        manifest = config.resolve(name)
        if manifest.is_file() and file_sha256(manifest) != sha:
            log.warning(
                "%s changed since %s was trained (SHA-256 differs from the checkpoint's): the "
                "split written is that of today's manifest, not necessarily the model's",
                manifest,
                args.config,
            )
    counts = write_split(config, args.out)
    expected = provenance.get("clip_counts")
    if isinstance(expected, dict):
        stored = {name: sum(expected.get(name, {}).values()) for name in SPLIT_PARTS}
        if counts != stored:
            log.warning(
                "clips per part %s differ from those %s recorded at training %s (unreadable "
                "clips are dropped when training loads audio)",
                counts,
                args.config,
                stored,
            )
    for name in SPLIT_PARTS:
        print(f"{args.out / (name + '.csv')}: {counts[name]} clips")
    return 0
