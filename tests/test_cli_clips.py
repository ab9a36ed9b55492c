"""``edge-detect clips``: the clips that ``run`` saved around alerts become background recordings
of a ``train --data`` folder when the user marks the alerts as false.

The clips come from a real run (the committed tiny model alerting on planted tones, as in
tests/test_cli_run.py) and are chosen by the ids printed in the alerts' JSON lines.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from test_cli_run import RATE, TINY, edge_detect, lines, planted
from vmic import TONE_DETECTION

from edge_detect.audio import read_wav, write_wav
from edge_detect.cli_clips import SavedClip, find_clips, select_clips
from edge_detect.errors import ConfigError


@pytest.fixture
def alerted(tmp_path: Path) -> tuple[Path, list[dict]]:
    """A run with three alerts (tones at 3, 8 and 13 s) and their clips; the config file."""
    clips = tmp_path / "clips"
    config = tmp_path / "run.toml"
    config.write_text(
        TONE_DETECTION + f'[clips]\ndirectory = "{clips}"\npre_roll_s = 1.0\npost_roll_s = 1.0\n'
    )
    wav = tmp_path / "tones.wav"
    write_wav(wav, planted(16.0, [(3.0, 1.0), (8.0, 1.0), (13.0, 1.0)]), RATE)
    result = edge_detect("run", "--input", wav, "--model", TINY, "--config", config)
    assert result.returncode == 0, result.stderr
    alerts = lines(result.stdout)
    assert len(alerts) == 3 and all(Path(a["clip"]).is_file() for a in alerts)
    return config, alerts


def test_marked_false_alarms_are_copied_into_the_folders_background(
    alerted: tuple[Path, list[dict]], tmp_path: Path
) -> None:
    config, alerts = alerted
    data = tmp_path / "my_sounds"
    first, third = alerts[0]["id"], alerts[2]["id"][:8]
    result = edge_detect(
        "clips", "false", "--config", config, "--data", data, "--id", first, "--id", third
    )
    assert result.returncode == 0, result.stderr
    copied = sorted((data / "background").iterdir())
    assert [p.name for p in copied] == sorted(
        "false_alarm_" + Path(alerts[i]["clip"]).name for i in (0, 2)
    )
    assert result.stdout.split() == [str(p) for p in copied]
    original = read_wav(alerts[0]["clip"])
    copy = read_wav(data / "background" / ("false_alarm_" + Path(alerts[0]["clip"]).name))
    np.testing.assert_array_equal(copy.samples, original.samples)
    # marking the same alert again adds nothing
    again = edge_detect("clips", "false", "--config", config, "--data", data, "--id", first)
    assert again.returncode == 0 and again.stdout == ""
    assert len(list((data / "background").iterdir())) == 2


def test_list_shows_time_class_and_id_of_every_clip(alerted: tuple[Path, list[dict]]) -> None:
    config, alerts = alerted
    result = edge_detect("clips", "list", "--config", config)
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()
    assert len(rows) == 3
    for row, alert in zip(rows, sorted(alerts, key=lambda a: a["clip"]), strict=True):
        assert alert["id"][:12] in row and "baby_cry" in row and row.endswith(alert["clip"])


def _clip(tmp_path: Path, when: str, label: str, alert_id: str) -> SavedClip:
    time = datetime.fromisoformat(when).replace(tzinfo=timezone.utc)
    return SavedClip(tmp_path / f"{alert_id}.wav", time, label, alert_id)


def test_select_by_time_range_and_class(tmp_path: Path) -> None:
    clips = [
        _clip(tmp_path, "2026-11-30T17:00:05", "dog_bark", "aaaa11112222"),
        _clip(tmp_path, "2026-11-30T17:30:00", "baby_cry", "bbbb11112222"),
        _clip(tmp_path, "2026-11-30T17:45:10", "dog_bark", "cccc11112222"),
        _clip(tmp_path, "2026-11-30T19:00:00", "dog_bark", "dddd11112222"),
    ]
    since = datetime(2026, 11, 30, 17, 0, 5, 400_000, tzinfo=timezone.utc)  # an alert's ms
    until = datetime(2026, 11, 30, 18, 0, tzinfo=timezone.utc)
    chosen = select_clips(clips, since=since, until=until, label="dog_bark")
    assert [c.alert_id for c in chosen] == ["aaaa11112222", "cccc11112222"]
    assert [c.alert_id for c in select_clips(clips, ids=["bbbb1111222233334444"])] == [
        "bbbb11112222"
    ]
    with pytest.raises(ConfigError, match="give --id, --since/--until or --class"):
        select_clips(clips)
    with pytest.raises(ConfigError, match="too short"):
        select_clips(clips, ids=["ab"])


def test_user_mistakes_get_one_line(tmp_path: Path) -> None:
    missing = edge_detect("clips", "list", "--clips", tmp_path / "nope")
    assert missing.returncode == 2
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .startswith(f"edge-detect: error: clip folder {tmp_path / 'nope'} does not exist")
    )
    (tmp_path / "clips").mkdir()
    none = edge_detect(
        "clips", "false", "--clips", tmp_path / "clips", "--data", tmp_path / "d", "--id", "abcd"
    )
    assert none.returncode == 2 and "no clip in" in none.stderr and "Traceback" not in none.stderr
    bad_time = edge_detect(
        "clips", "false", "--clips", tmp_path / "clips", "--data", tmp_path / "d", "--since", "x"
    )
    assert bad_time.returncode == 2 and "is not a time; expected ISO 8601" in bad_time.stderr
    assert find_clips(tmp_path / "clips") == []
