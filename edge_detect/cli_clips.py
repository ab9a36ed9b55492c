"""``edge-detect clips``: look at the clips saved around alerts and turn false alarms into
training data.

``edge-detect run`` keeps the audio around every alert when ``[clips] directory`` is set (see
:mod:`edge_detect.clips`); each file is named ``<UTC time>_<class>_<first 12 characters of the
alert id>.wav``. ``clips list`` shows them; ``clips false`` takes the ones you say were false
alarms (by alert id, by time range, optionally by class) and copies them into the
``background/`` sub-folder of a ``train --data`` folder, so that the next ``edge-detect train
--data DIR`` learns that these sounds are not events. Copies are never overwritten, so marking
the same alert twice adds it once.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_detect.clips import CLIP_STAMP_FORMAT, CLIP_SUFFIX
from edge_detect.config import load_config
from edge_detect.errors import ConfigError

__all__ = ["SavedClip", "copy_false_alarms", "find_clips", "register", "select_clips"]

log = logging.getLogger(__name__)

BACKGROUND = "background"
"""The sub-folder of a ``train --data`` folder that holds "no event" recordings."""
FALSE_ALARM_PREFIX = "false_alarm_"
"""Name prefix of copied clips, so they can be told from recordings of the place."""
MIN_ID_CHARS = 4
"""Shortest alert-id prefix accepted (shorter ones match too much by chance)."""
_NAME = re.compile(r"^(?P<stamp>\d{8}T\d{6})_(?P<label>.+)_(?P<id>[A-Za-z0-9-]+)$")


@dataclass(frozen=True)
class SavedClip:
    """One clip file written around an alert."""

    path: Path
    time: datetime
    """When the alert was made (UTC, to the second)."""
    label: str
    """The alert's class as written in the file name."""
    alert_id: str
    """The first characters of the alert's id."""


def find_clips(directory: str | Path) -> list[SavedClip]:
    """The clip files of ``directory``, oldest first; files of other names are left out."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(
            f"clip folder {directory} does not exist; expected the [clips] directory of the "
            "config that 'edge-detect run' used"
        )
    clips = []
    for path in sorted(directory.glob("*" + CLIP_SUFFIX)):
        match = _NAME.match(path.stem)
        if not match or not path.is_file():
            continue
        when = datetime.strptime(match["stamp"], CLIP_STAMP_FORMAT).replace(tzinfo=timezone.utc)
        clips.append(SavedClip(path, when, match["label"], match["id"]))
    return sorted(clips, key=lambda clip: (clip.time, clip.path.name))


def _parse_time(text: str, flag: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r} is not a time; expected ISO 8601 such as 2026-11-30T17:05:00 "
            "(UTC unless it names a zone, e.g. +01:00), as in an alert's 'start'"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def select_clips(
    clips: list[SavedClip],
    *,
    ids: list[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    label: str | None = None,
) -> list[SavedClip]:
    """The clips matching every given criterion: an alert id (or its first characters) among
    ``ids``, a time in ``[since, until]`` (the clip's time: when its alert was sent, to the
    second; an event's ``start`` is a little earlier), the class ``label``."""
    if not (ids or since or until or label):
        raise ConfigError("say which alerts were false: give --id, --since/--until or --class")
    for alert_id in ids or []:
        if len(alert_id) < MIN_ID_CHARS:
            raise ConfigError(
                f"alert id {alert_id!r} is too short; give at least {MIN_ID_CHARS} characters of "
                "the alert's 'id' (the clip's file name holds the first 12)"
            )
    chosen = []
    for clip in clips:
        if ids and not any(
            clip.alert_id.startswith(a[:12]) or a.startswith(clip.alert_id) for a in ids
        ):
            continue
        if since and clip.time < since.replace(microsecond=0):
            continue
        if until and clip.time > until:
            continue
        if label and clip.label != label:
            continue
        chosen.append(clip)
    return chosen


def copy_false_alarms(clips: list[SavedClip], data_dir: str | Path) -> list[Path]:
    """Copy ``clips`` into ``data_dir/background/`` (created); returns the new files (a clip
    copied before is skipped)."""
    target_dir = Path(data_dir) / BACKGROUND
    target_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for clip in clips:
        target = target_dir / (FALSE_ALARM_PREFIX + clip.path.name)
        if target.exists():
            log.info("%s is already in %s", clip.path.name, target_dir)
            continue
        shutil.copy2(clip.path, target)
        written.append(target)
    return written


def _clips_dir(args: argparse.Namespace) -> Path:
    if args.clips:
        return Path(args.clips)
    config = load_config(args.config)
    if config.clips_dir is None:
        raise ConfigError(
            "no clip folder: give --clips DIR, or --config with the [clips] directory that "
            "'edge-detect run' used (clips are saved only when it is set)"
        )
    return Path(config.clips_dir)


def _describe(clip: SavedClip) -> str:
    return f"{clip.time.isoformat()}  {clip.label:12}  {clip.alert_id:12}  {clip.path}"


def list_command(args: argparse.Namespace) -> int:
    clips = find_clips(_clips_dir(args))
    for clip in clips:
        print(_describe(clip))
    log.info("%d clip(s)", len(clips))
    return 0


def false_command(args: argparse.Namespace) -> int:
    folder = _clips_dir(args)
    clips = find_clips(folder)
    chosen = select_clips(
        clips,
        ids=args.id,
        since=_parse_time(args.since, "--since") if args.since else None,
        until=_parse_time(args.until, "--until") if args.until else None,
        label=args.label,
    )
    if not chosen:
        raise ConfigError(
            f"no clip in {folder} matches (it holds {len(clips)} clip(s); "
            "'edge-detect clips list' shows them with their times, classes and ids)"
        )
    written = copy_false_alarms(chosen, args.data)
    for path in written:
        print(path)
    log.info(
        "%d false alarm(s) copied into %s (%d already there); the next 'edge-detect train "
        "--data %s' learns them as background",
        len(written),
        Path(args.data) / BACKGROUND,
        len(chosen) - len(written),
        args.data,
    )
    return 0


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips", metavar="DIR", help="the clip folder ([clips] directory)")
    parser.add_argument(
        "--config", metavar="TOML", help="runtime config whose [clips] directory to read"
    )


def register(subparsers: argparse._SubParsersAction, formatter: Any) -> None:
    """Add ``edge-detect clips`` (list, false) to the CLI's subcommands."""
    clips = subparsers.add_parser(
        "clips",
        help="list the clips saved around alerts; copy false alarms into a training folder",
        description=__doc__,
        formatter_class=formatter,
    )
    kinds = clips.add_subparsers(dest="clips_command", metavar="CLIPS_COMMAND")
    listing = kinds.add_parser(
        "list",
        help="the saved clips: time (UTC), class, alert id, file",
        formatter_class=formatter,
    )
    _add_source_arguments(listing)
    listing.set_defaults(func=list_command)
    false = kinds.add_parser(
        "false",
        help="copy the clips of false alarms into DATA/background/ for the next train --data",
        description=(
            "Copy the clips of alerts that were false alarms into the background/ sub-folder of "
            "a 'train --data' folder. Choose them by alert id (the 'id' of the alert's JSON "
            "line, or its first characters), by time range, by class, or a combination.\n\n"
            "examples:\n"
            "  edge-detect clips false --clips /var/lib/edge-detect/clips --data my_sounds "
            "--id 3f2a9c\n"
            "  edge-detect clips false --config /etc/edge-detect/config.toml --data my_sounds "
            "--since 2026-11-30T17:00 --until 2026-11-30T18:00 --class dog_bark"
        ),
        formatter_class=formatter,
    )
    _add_source_arguments(false)
    false.add_argument(
        "--data", required=True, metavar="DIR", help="the train --data folder to add them to"
    )
    false.add_argument(
        "--id", action="append", metavar="ID", help="an alert id or its first characters (repeat)"
    )
    false.add_argument(
        "--since",
        metavar="TIME",
        help="clips saved at or after this ISO 8601 time (when the alert was sent, as 'clips "
        "list' shows it; UTC unless a zone is given)",
    )
    false.add_argument("--until", metavar="TIME", help="clips saved at or before this time")
    false.add_argument("--class", dest="label", metavar="CLASS", help="alerts of this class only")
    false.set_defaults(func=false_command)
    clips.set_defaults(func=lambda args: clips.print_help(sys.stderr) or 2)
