"""Datasets for training: clips, label maps, the layouts we read, and splits by recording.

Every layout becomes a list of :class:`Clip` (one audio file, its label and the recording it came
from). Layouts:

- a manifest CSV (:func:`load_manifest`): ``path,label`` plus optional ``group``, ``fold`` and any
  other columns; paths relative to the manifest's folder. The shared corpus
  ``../shared/data/edge_sed_real_v1/manifest.csv`` is one.
- one folder per class (:func:`load_folder_per_class`): ``root/<label>/**/*.wav|flac|ogg``.
- ESC-50 (:func:`load_esc50`): ``meta/esc50.csv`` and ``audio/``.
- UrbanSound8K (:func:`load_urbansound8k`): ``metadata/UrbanSound8K.csv`` and ``audio/foldN/``.

A :class:`LabelMap` turns a dataset's own classes into ours (ESC-50 ``dog`` -> ``dog_bark``,
everything unmapped -> ``background``, or an error when it has no default).

Splits keep whole recordings (``group``) or whole folds together, never single clips: chunks of
one recording on both sides of a split would make validation look better than it is.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_detect.errors import DatasetError
from train.audio_io import AUDIO_SUFFIXES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "ESC50_LABEL_MAP",
    "SFX_GROUPS",
    "US8K_LABEL_MAP",
    "Clip",
    "LabelMap",
    "check_files_exist",
    "filter_clips",
    "label_counts",
    "load_esc50",
    "load_folder_per_class",
    "load_manifest",
    "load_urbansound8k",
    "some_of",
    "source_kind",
    "take_evenly",
]

log = logging.getLogger(__name__)

DEFAULT_BACKGROUND = "background"
"""The label that unmapped classes get unless a label map says otherwise."""

MANIFEST_REQUIRED = ("path", "label")
_CLIP_COLUMNS = ("path", "label", "orig_label", "group", "fold", "license", "duration_s", "source")
_EXAMPLES_SHOWN = 5
"""How many offending names an error message lists before saying "and N more"."""


@dataclass(frozen=True)
class Clip:
    """One audio file of a dataset.

    The training engineer's unit of data: its audio comes from :class:`train.cache.FeatureCache`
    (``features(clip.path)`` -> float32 ``(frames, n_mels)``; ``audio(clip.path)`` -> float32
    ``(samples,)`` at 16 kHz).
    """

    path: Path
    """Absolute path of the audio file."""
    label: str
    """Our label, after the label map (e.g. ``dog_bark``)."""
    orig_label: str
    """The dataset's own class (e.g. ESC-50 ``dog``, or the corpus's ``orig_label`` column)."""
    group: str
    """Id of the source recording (or speaker, device); splits never divide a group."""
    fold: str | None = None
    """The dataset's own fold or split tag, if it has one."""
    license: str | None = None
    """License of the audio, if known. Check it before redistributing anything."""
    duration_s: float | None = None
    """Duration in seconds as the dataset's metadata states it (None when unstated)."""
    source: str | None = None
    """Where the audio came from (dataset or repository), if known."""
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)
    """Other metadata columns of the row, as strings (e.g. the corpus's ``notes``, ``rms_dbfs``)."""


@dataclass(frozen=True)
class LabelMap:
    """Map a dataset's classes to our labels.

    ``mapping[orig] -> label``; classes not in ``mapping`` get ``default``, or raise
    :class:`DatasetError` when ``default`` is None (a strict map).
    """

    mapping: Mapping[str, str]
    default: str | None = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        bad = [
            (k, v)
            for k, v in self.mapping.items()
            if not (isinstance(k, str) and isinstance(v, str) and k and v)
        ]
        if bad:
            raise DatasetError(
                f"label map entries must map non-empty strings to non-empty strings, got {bad[:3]}"
            )
        if self.default is not None and (not isinstance(self.default, str) or not self.default):
            raise DatasetError(
                f"label map default must be a non-empty string, got {self.default!r}"
            )

    @property
    def strict(self) -> bool:
        """True when unmapped classes are an error rather than ``default``."""
        return self.default is None

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label this map can produce, sorted."""
        out = set(self.mapping.values())
        if self.default is not None:
            out.add(self.default)
        return tuple(sorted(out))

    def get(self, orig_label: str) -> str | None:
        """The label for ``orig_label``, or None when it is unmapped and the map is strict."""
        return self.mapping.get(orig_label, self.default)

    def __call__(self, orig_label: str) -> str:
        """The project label of a corpus label; an unknown label is an error naming it."""
        label = self.get(orig_label)
        if label is None:
            raise DatasetError(
                f"label {orig_label!r} is not in the label map (known: {sorted(self.mapping)}); "
                "add it to the map or give the map a default"
            )
        return label

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelMap:
        """Build from ``{"map": {orig: label, ...}, "default": "background"}``.

        Leave out ``default`` (or set it to ``""``) for a strict map.
        """
        if not isinstance(data, Mapping):
            raise DatasetError(f"a label map must be a table/dict, got {type(data).__name__}")
        unknown = sorted(set(data) - {"map", "default"})
        if unknown or not isinstance(data.get("map"), Mapping):
            raise DatasetError(
                "a label map needs a 'map' table of orig_label = label and optionally a "
                f"'default' label; got keys {sorted(data)}"
            )
        default = data.get("default") or None
        return cls(dict(data["map"]), default)

    @classmethod
    def from_toml(cls, path: str | Path) -> LabelMap:
        """Read a TOML file with a ``[map]`` table and an optional top-level ``default``."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DatasetError(f"cannot read label map {path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise DatasetError(f"label map {path} is not valid TOML: {exc}") from None
        try:
            return cls.from_dict(data)
        except DatasetError as exc:
            raise DatasetError(f"label map {path}: {exc}") from None


ESC50_LABEL_MAP = LabelMap(
    {"dog": "dog_bark", "crying_baby": "baby_cry", "glass_breaking": "glass_break"},
    DEFAULT_BACKGROUND,
)
"""ESC-50 categories we detect; the other 47 become background."""

US8K_LABEL_MAP = LabelMap({"dog_bark": "dog_bark", "gun_shot": "gun_shot"}, DEFAULT_BACKGROUND)
"""UrbanSound8K classes we detect; the other 8 become background."""


def some_of(items: Sequence[object]) -> str:
    """The first few items, comma-separated, and how many more (for error messages)."""
    shown = ", ".join(str(item) for item in items[:_EXAMPLES_SHOWN])
    more = len(items) - _EXAMPLES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def filter_clips(
    clips: Iterable[Clip],
    *,
    labels: Collection[str] | None = None,
    licenses: Collection[str] | None = None,
    keep: Callable[[Clip], bool] | None = None,
) -> list[Clip]:
    """Keep the clips that pass every given filter.

    Parameters
    ----------
    labels : collection of str, optional
        Keep clips whose (mapped) label is one of these.
    licenses : collection of str, optional
        Keep clips whose license contains one of these strings, case-insensitively
        (e.g. ``["CC BY 4.0", "GPL"]``); clips without a license are dropped.
    keep : callable, optional
        Any other predicate on a clip.
    """
    wanted_licenses = [text.lower() for text in licenses] if licenses is not None else None
    out = []
    for clip in clips:
        if labels is not None and clip.label not in labels:
            continue
        if wanted_licenses is not None and not (
            clip.license and any(text in clip.license.lower() for text in wanted_licenses)
        ):
            continue
        if keep is not None and not keep(clip):
            continue
        out.append(clip)
    return out


def _map_label(
    label_map: LabelMap | None, orig: str, where: str, unmapped: dict[str, list[str]]
) -> str | None:
    if label_map is None:
        return orig
    label = label_map.get(orig)
    if label is None:
        unmapped[orig].append(where)
    return label


def _raise_unmapped(unmapped: dict[str, list[str]], label_map: LabelMap, what: str) -> None:
    if not unmapped:
        return
    details = [
        f"{orig!r} ({len(places)}x, first at {places[0]})" for orig, places in unmapped.items()
    ]
    raise DatasetError(
        f"{what}: {sum(map(len, unmapped.values()))} clip(s) have labels not in the label map: "
        f"{some_of(details)}. Known labels: {sorted(label_map.mapping)}. Add them to the map, "
        f"or give the map a default (e.g. default = {DEFAULT_BACKGROUND!r})"
    )


def check_files_exist(clips: Sequence[Clip], what: str = "dataset") -> None:
    """Raise DatasetError saying how many (and which) of the clips' audio files do not exist."""
    missing = [clip.path for clip in clips if not clip.path.is_file()]
    if missing:
        raise DatasetError(
            f"{what}: {len(missing)} of {len(clips)} audio files do not exist: "
            f"{some_of(missing)}. Check the paths (relative to the manifest's folder) "
            "or that the dataset was fully downloaded"
        )


def _finish(
    clips: list[Clip],
    what: str,
    *,
    labels: Collection[str] | None,
    licenses: Collection[str] | None,
    check_files: bool,
) -> list[Clip]:
    """Apply filters, then check that the audio files exist and something is left."""
    if not clips:
        raise DatasetError(f"{what} lists no clips; expected at least one")
    kept = filter_clips(clips, labels=labels, licenses=licenses)
    if not kept:
        raise DatasetError(
            f"{what}: none of its {len(clips)} clips pass the filters (labels={labels}, "
            f"licenses={licenses}); labels present: {sorted(label_counts(clips))}"
        )
    if check_files:
        check_files_exist(kept, what)
    seen: Counter[Path] = Counter(clip.path for clip in kept)
    duplicates = [path for path, n in seen.items() if n > 1]
    if duplicates:
        log.warning("%s lists %d file(s) twice: %s", what, len(duplicates), some_of(duplicates))
    return kept


def _read_csv(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts; DatasetError naming the file for every problem."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in (reader.fieldnames or [])]
            if not header:
                raise DatasetError(
                    f"{what} {path} is empty; expected a CSV header with columns "
                    f"{', '.join(required)}"
                )
            reader.fieldnames = header
            missing = [name for name in required if name not in header]
            if missing:
                raise DatasetError(
                    f"{what} {path} lacks the column(s) {missing}; expected at least "
                    f"{list(required)}, found {header}"
                )
            rows = [
                {k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader
            ]
    except OSError as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{what} {path} is not a readable UTF-8 CSV file: {exc}") from None
    if not rows:
        raise DatasetError(f"{what} {path} has a header but no rows; expected one row per clip")
    return rows


def _parse_duration(text: str, where: str) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(
            f"{where}: duration_s {text!r} is not a number of seconds; fix or empty the cell"
        ) from None
    return value


def _absolute(folder: Path, relative: str) -> Path:
    # normpath, not resolve(): keep symlinked dataset folders as the user named them
    return Path(os.path.normpath(os.path.join(folder, relative)))


def load_manifest(
    path: str | Path,
    *,
    label_map: LabelMap | None = None,
    label_column: str = "label",
    labels: Collection[str] | None = None,
    licenses: Collection[str] | None = None,
    check_files: bool = True,
) -> list[Clip]:
    """Read a manifest CSV into clips.

    Parameters
    ----------
    path : str or Path
        CSV with columns ``path`` and ``label`` (required), optionally ``group``, ``fold``,
        ``orig_label``, ``license``, ``duration_s``, ``source`` and any others (kept in
        ``Clip.extra``). ``path`` is relative to the manifest's folder (or absolute).
    label_map : LabelMap, optional
        Applied to ``label_column``; without one the column's values are the labels.
    label_column : str
        The column the labels come from, e.g. ``orig_label`` to remap the corpus's fine classes.
    labels, licenses : optional
        Filters, see :func:`filter_clips`.
    check_files : bool
        Raise if any listed audio file does not exist.

    Returns
    -------
    list of Clip, in the manifest's order. A row without ``group`` is its own group.

    Raises
    ------
    DatasetError
        Missing file or columns, no rows, empty cells, a label not in a strict label map, files
        that do not exist (with how many and which), or no clip passing the filters.
    """
    path = Path(path)
    what = f"manifest {path}"
    required = list(MANIFEST_REQUIRED) + ([label_column] if label_column != "label" else [])
    rows = _read_csv(path, required, "manifest")
    folder = path.parent
    has_group = "group" in rows[0]
    if not has_group:
        log.info("%s has no 'group' column: every clip is its own group", path)
    clips: list[Clip] = []
    unmapped: dict[str, list[str]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{path}:{line}"
        empty = [name for name in required if not row.get(name)]
        if empty:
            raise DatasetError(f"{where}: empty {empty}; every row needs a path and a label")
        orig = row[label_column]
        label = _map_label(label_map, orig, where, unmapped)
        if label is None:
            continue
        clips.append(
            Clip(
                path=_absolute(folder, row["path"]),
                label=label,
                orig_label=row.get("orig_label") or orig,
                group=row.get("group") or row["path"],
                fold=row.get("fold") or None,
                license=row.get("license") or None,
                duration_s=_parse_duration(row.get("duration_s", ""), where),
                source=row.get("source") or None,
                extra={k: v for k, v in row.items() if k not in _CLIP_COLUMNS},
            )
        )
    if label_map is not None:
        _raise_unmapped(unmapped, label_map, what)
    return _finish(clips, what, labels=labels, licenses=licenses, check_files=check_files)


def load_folder_per_class(
    root: str | Path,
    *,
    label_map: LabelMap | None = None,
    labels: Collection[str] | None = None,
    group_from: Callable[[Path], str] | None = None,
    check_files: bool = True,
) -> list[Clip]:
    """Read ``root/<class>/**/*.{wav,flac,ogg}``: the folder name is the class.

    Parameters
    ----------
    group_from : callable, optional
        ``group_from(path relative to root) -> group id``. Default: the file's path without its
        suffix, i.e. every file is its own recording. Give one when several files come from one
        recording (e.g. ``lambda p: p.stem.split("-")[0]`` for ``<recording>-<chunk>.wav``).

    Returns
    -------
    list of Clip sorted by path; ``fold``, ``license`` and ``duration_s`` are None.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder {root} does not exist; expected one sub-folder of audio per class"
        )
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DatasetError(
            f"{root} has no class sub-folders; expected {root}/<label>/<file>.wav (or .flac, .ogg)"
        )
    clips: list[Clip] = []
    unmapped: dict[str, list[str]] = defaultdict(list)
    for class_dir in class_dirs:
        files = sorted(
            p for p in class_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
        )
        for file in files:
            label = _map_label(label_map, class_dir.name, str(file), unmapped)
            if label is None:
                continue
            relative = file.relative_to(root)
            group = group_from(relative) if group_from else str(relative.with_suffix(""))
            clips.append(
                Clip(
                    path=Path(os.path.abspath(file)),
                    label=label,
                    orig_label=class_dir.name,
                    group=group,
                )
            )
    if label_map is not None:
        _raise_unmapped(unmapped, label_map, f"folder dataset {root}")
    if not clips:
        raise DatasetError(
            f"{root} holds no audio files ({', '.join(AUDIO_SUFFIXES)}) in its class folders "
            f"{[d.name for d in class_dirs][:_EXAMPLES_SHOWN]}"
        )
    return _finish(
        clips, f"folder dataset {root}", labels=labels, licenses=None, check_files=check_files
    )


ESC50_LICENSE = "CC BY-NC 3.0 (ESC-50; K. J. Piczak 2015)"
ESC10_LICENSE = "CC BY 3.0 (ESC-10 subset of ESC-50; K. J. Piczak 2015)"
ESC50_CLIP_S = 5.0


def load_esc50(
    root: str | Path,
    *,
    label_map: LabelMap | None = ESC50_LABEL_MAP,
    labels: Collection[str] | None = None,
    licenses: Collection[str] | None = None,
    check_files: bool = True,
) -> list[Clip]:
    """Read ESC-50 (``meta/esc50.csv`` + ``audio/<filename>``).

    ``group`` is the freesound source clip (``src_file``), so takes of one recording stay
    together; ``fold`` is ESC-50's fold (``"1"`` .. ``"5"``); ESC-10 clips carry CC BY, the
    others CC BY-NC. The default label map keeps ``dog``, ``crying_baby`` and ``glass_breaking``.
    """
    root = Path(root)
    meta = root / "meta" / "esc50.csv"
    what = f"ESC-50 metadata {meta}"
    rows = _read_csv(meta, ("filename", "fold", "category"), "ESC-50 metadata")
    clips: list[Clip] = []
    unmapped: dict[str, list[str]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        orig = row["category"]
        label = _map_label(label_map, orig, f"{meta}:{line}", unmapped)
        if label is None:
            continue
        esc10 = row.get("esc10", "").lower() == "true"
        clips.append(
            Clip(
                path=_absolute(root / "audio", row["filename"]),
                label=label,
                orig_label=orig,
                group="esc50-" + (row.get("src_file") or row["filename"]),
                fold=row["fold"] or None,
                license=ESC10_LICENSE if esc10 else ESC50_LICENSE,
                duration_s=ESC50_CLIP_S,
                source="ESC-50",
                extra={k: v for k, v in row.items() if k in ("target", "esc10", "take")},
            )
        )
    if label_map is not None:
        _raise_unmapped(unmapped, label_map, what)
    return _finish(clips, what, labels=labels, licenses=licenses, check_files=check_files)


US8K_LICENSE = "CC BY-NC 3.0 (UrbanSound8K; Salamon, Jacoby & Bello 2014)"


def load_urbansound8k(
    root: str | Path,
    *,
    label_map: LabelMap | None = US8K_LABEL_MAP,
    labels: Collection[str] | None = None,
    licenses: Collection[str] | None = None,
    check_files: bool = True,
) -> list[Clip]:
    """Read UrbanSound8K (``metadata/UrbanSound8K.csv`` + ``audio/fold<N>/<slice_file_name>``).

    ``group`` is the freesound recording (``fsID``), ``fold`` the official fold (``"1"`` ..
    ``"10"``; UrbanSound8K asks for fold-wise cross-validation), ``duration_s`` is
    ``end - start``, and ``salience`` (1 foreground, 2 background) is kept in ``extra``.
    """
    root = Path(root)
    meta = root / "metadata" / "UrbanSound8K.csv"
    what = f"UrbanSound8K metadata {meta}"
    rows = _read_csv(meta, ("slice_file_name", "fsID", "fold", "class"), "UrbanSound8K metadata")
    clips: list[Clip] = []
    unmapped: dict[str, list[str]] = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        where = f"{meta}:{line}"
        orig = row["class"]
        label = _map_label(label_map, orig, where, unmapped)
        if label is None:
            continue
        duration = None
        if row.get("start") and row.get("end"):
            start = _parse_duration(row["start"], where)
            end = _parse_duration(row["end"], where)
            duration = None if start is None or end is None else end - start
        clips.append(
            Clip(
                path=_absolute(root / "audio" / f"fold{row['fold']}", row["slice_file_name"]),
                label=label,
                orig_label=orig,
                group="us8k-" + row["fsID"],
                fold=row["fold"] or None,
                license=US8K_LICENSE,
                duration_s=duration,
                source="UrbanSound8K",
                extra={k: v for k, v in row.items() if k in ("salience", "classID")},
            )
        )
    if label_map is not None:
        _raise_unmapped(unmapped, label_map, what)
    return _finish(clips, what, labels=labels, licenses=licenses, check_files=check_files)


SFX_GROUPS: dict[str, tuple[str, ...]] = {
    "animals": (
        "horse", "sheep_goat", "cow", "bird", "wild_animal", "chicken", "pig", "wolf", "bat",
        "frog", "insect", "animal_death", "dog_bark",
    ),
    "impacts": (
        "impact", "falling_object", "crash", "wood_break", "glass_break", "tree_fall",
        "building_collapse", "tree_chop", "pickaxe_mining", "tools", "weapon_melee_bow",
    ),
    "explosions_weapons": (
        "explosion", "cannon", "machine_gun", "tank_cannon_shot", "shotgun", "rocket_launch",
        "firework", "ricochet", "siege_engine", "gun_reload",
    ),
    "vehicles_machines": ("engine", "aircraft", "train", "horn", "machine", "siren"),
    "voices_crowds": ("scream", "laugh", "crowd", "snore"),
    "nature_weather": ("water", "fire", "thunder", "wind", "rain", "weather", "ambience"),
    "footsteps_work": ("footsteps", "door", "farming"),
}  # fmt: skip
"""The 54 kinds of ``edge_sed_extra_v1``'s sound effects (``orig_label``) in a few groups, so
that a kind of sound has minutes of audio behind its false-alarm figure, not seconds."""
_SFX_GROUP = {kind: group for group, kinds in SFX_GROUPS.items() for kind in kinds}


def source_kind(clip: Clip) -> str:
    """The kind of sound a clip is, as false alarms are reported per kind: the corpus folder
    (``audio/<folder>/...``) and the coarse original class, e.g. ``us8k:street_music``,
    ``gcompris_voices:speech``, ``wesnoth_music:music``, ``debian_sfx:animals``."""
    parts = clip.path.parts
    folder = parts[parts.index("audio") + 1] if "audio" in parts[:-1] else clip.path.parent.name
    orig = clip.orig_label or clip.label
    kind = _SFX_GROUP.get(orig, orig) if folder == "debian_sfx" else orig.split(":")[0]
    return f"{folder}:{kind}"


def label_counts(clips: Iterable[Clip]) -> Counter[str]:
    """Number of clips per label."""
    return Counter(clip.label for clip in clips)


def take_evenly(clips: Sequence[Clip], count: int) -> list[Clip]:
    """``count`` clips spread evenly over ``clips`` (all of them when ``count >= len``).

    A quick, deterministic subset for smoke runs that still visits every part of a manifest.
    """
    if count <= 0:
        raise DatasetError(f"a subset needs a positive number of clips, got {count}")
    if count >= len(clips):
        return list(clips)
    step = len(clips) / count
    return [clips[int(i * step)] for i in range(count)]
