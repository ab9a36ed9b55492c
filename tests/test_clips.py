"""Clips: exactly the audio around the alert, in any block size, with retention."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edge_detect.audio import read_wav
from edge_detect.clips import ClipRecorder
from edge_detect.errors import ConfigError

RATE_HZ = 16_000
QUANT = 1.0 / 32767  # 16-bit WAV


def ramp(n: int) -> np.ndarray:
    """Distinct, slowly varying samples, so any misplaced block shows."""
    return (np.arange(n, dtype=np.float32) % 30_000) / 30_000 - 0.5


@pytest.mark.parametrize("block", [1, 160, 1600, 40_000])
def test_clip_holds_pre_and_post_roll_whatever_the_block_size(tmp_path: Path, block: int) -> None:
    audio = ramp(RATE_HZ * 4)
    alert_at = RATE_HZ * 2 + 123  # sample index at which the alert is made
    rec = ClipRecorder(tmp_path, RATE_HZ, pre_roll_s=1.0, post_roll_s=0.5)
    path = None
    pos = 0
    while pos < len(audio):
        end = min(len(audio), pos + block, alert_at if pos < alert_at else len(audio))
        rec.push(audio[pos:end])
        pos = end
        if pos == alert_at:
            path = rec.start_clip("a1b2c3d4e5f6a7b8", "dog bark/!")
    rec.close()
    assert path is not None and path.name.endswith("_dog_bark_a1b2c3d4e5f6.wav")
    clip = read_wav(path)
    expected = audio[alert_at - RATE_HZ : alert_at + RATE_HZ // 2]
    assert clip.sample_rate_hz == RATE_HZ and len(clip.samples) == len(expected)
    assert np.max(np.abs(clip.samples - expected)) <= QUANT
    assert not list(tmp_path.glob(".*.tmp"))


def test_early_alert_and_close_write_what_there_is(tmp_path: Path) -> None:
    rec = ClipRecorder(tmp_path, RATE_HZ, pre_roll_s=2.0, post_roll_s=2.0)
    rec.push(ramp(RATE_HZ // 2))  # only 0.5 s heard before the alert
    path = rec.start_clip("id1", "baby_cry")
    rec.push(ramp(RATE_HZ // 4))  # and 0.25 s after it, then the detector stops
    rec.close()
    assert len(read_wav(path).samples) == RATE_HZ // 2 + RATE_HZ // 4


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    rec = ClipRecorder(tmp_path, RATE_HZ, pre_roll_s=0.1, post_roll_s=0.0, max_clips=2)
    paths = []
    for i in range(4):
        rec.push(ramp(RATE_HZ))
        paths.append(rec.start_clip(f"id{i}", "gunshot"))
        deadline = time.monotonic() + 5
        while rec.written < i + 1 and time.monotonic() < deadline:  # distinct file times
            time.sleep(0.005)
    rec.close()
    assert sorted(p.name for p in tmp_path.glob("*.wav")) == sorted(p.name for p in paths[2:])
    one_clip = paths[3].stat().st_size
    by_size = ClipRecorder(tmp_path / "b", RATE_HZ, pre_roll_s=0.1, post_roll_s=0, max_bytes=1)
    for i in range(3):
        by_size.push(ramp(RATE_HZ))
        by_size.start_clip(f"id{i}", "gunshot")
    by_size.close()
    kept = list((tmp_path / "b").glob("*.wav"))
    assert len(kept) == 1 and kept[0].stat().st_size == one_clip  # the newest always stays


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="pre_roll_s >= 0"):
        ClipRecorder("/tmp/never-created-clips", RATE_HZ, pre_roll_s=-1)


def test_clip_folder_parents_are_not_created(tmp_path: Path) -> None:
    """Issue 15 item 12: a typo in [clips] directory made a tree of folders anywhere."""
    with pytest.raises(ConfigError, match="does not exist"):
        ClipRecorder(tmp_path / "no" / "such" / "clips", RATE_HZ)
    assert not (tmp_path / "no").exists()
    ClipRecorder(tmp_path / "clips", RATE_HZ).close()  # one new level is fine
    assert (tmp_path / "clips").is_dir()


def test_a_full_disk_leaves_no_empty_file_and_clips_wait_until_space_returns(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 item 7: clips named in alerts were never written on a full disk, and 0-byte
    ``.tmp`` files were left. Now they wait in memory and are written when space returns."""
    from conftest import fill_disk

    reports: list[tuple[str, str]] = []
    rec = ClipRecorder(small_disk / "clips", RATE_HZ, pre_roll_s=1.0, post_roll_s=0.0)
    rec.report = lambda event, detail: reports.append((event, detail))
    filler = fill_disk(small_disk)
    try:
        rec.push(ramp(RATE_HZ * 2))
        path = rec.start_clip("a1b2c3d4e5f6a7b8", "dog_bark")
        deadline = time.monotonic() + 10
        while not reports and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [e for e, _ in reports] == ["clips_unwritable"]
        assert list((small_disk / "clips").iterdir()) == []  # no .tmp left behind
        figures = {n: v for n, _, v in rec.collect()}
        assert figures["edge_detect_clips_waiting"] == 1
    finally:
        filler.unlink()
    deadline = time.monotonic() + 15
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rec.close()
    assert read_wav(path).duration_s == pytest.approx(1.0)
    assert [e for e, _ in reports] == ["clips_unwritable", "clips_writable"]
    assert "No space left on device" in caplog.text
