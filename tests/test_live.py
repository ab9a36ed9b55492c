"""``edge-detect run --show``: the live view, drawn in a real terminal (tmux) while stdout keeps
carrying only the alerts' JSON lines; plain lines without control codes when not a terminal."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from test_cli_run import RATE, TINY, planted
from vmic import TONE_DETECTION

from edge_detect.audio import write_wav
from edge_detect.config import load_config
from edge_detect.live import CLEAR, LiveView, format_view, level_dbfs
from edge_detect.model import load_model
from edge_detect.pipeline import Pipeline
from edge_detect.sources import WavFileSource


def test_level_is_rms_in_dbfs() -> None:
    assert level_dbfs([0.0] * 10) == -90.0
    assert level_dbfs([1.0, -1.0]) == pytest.approx(0.0)
    assert level_dbfs([0.1] * 100) == pytest.approx(-20.0)


def _tone_pipeline(tmp_path: Path) -> tuple[Pipeline, WavFileSource]:
    config_path = tmp_path / "tone.toml"
    config_path.write_text(TONE_DETECTION)
    config = load_config(config_path)
    model = load_model(TINY)
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(6.0, [(2.0, 1.0)]), RATE)
    pipeline = Pipeline(model, [], detection=config.detection_for(model.detection))
    return pipeline, WavFileSource(wav, RATE, block_ms=100, realtime=False)


def test_view_shows_level_scores_thresholds_and_the_alert(tmp_path: Path) -> None:
    pipeline, source = _tone_pipeline(tmp_path)
    pipeline.run(source)
    lines = format_view(pipeline, -23.4, source.name)
    text = "\n".join(lines)
    assert "-23.4 dBFS" in text
    (cry,) = [line for line in lines if line.startswith("baby_cry ")]
    # threshold_on 0.215 and threshold_off 0.214 share a cell of the bar: on wins
    assert "|" in cry and " 0.215  0.214" in cry
    assert not [line for line in lines if line.startswith(("dog_bark ", "gun_shot "))]  # disabled
    (alert,) = [line for line in lines if "score" in line and line.startswith("  ")]
    assert "baby_cry" in alert and " at 2." in alert


def test_not_a_terminal_gets_plain_lines_once_a_second(tmp_path: Path) -> None:
    pipeline, source = _tone_pipeline(tmp_path)
    out = io.StringIO()
    view = LiveView(pipeline, out)
    pipeline.run(view.watch(source))
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("live: ") for line in lines)
    assert "baby_cry=" in lines[-1] and "alerts 1" in lines[-1]
    assert len(lines) <= 3  # the file runs in well under a second: first, maybe one, last


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed (apt install tmux)")
def test_show_draws_in_a_real_terminal_while_stdout_keeps_the_json_lines(tmp_path: Path) -> None:
    config = tmp_path / "tone.toml"
    config.write_text(TONE_DETECTION)
    wav = tmp_path / "tones.wav"
    write_wav(wav, planted(6.0, [(2.0, 1.0)]), RATE)
    alerts = tmp_path / "alerts.jsonl"
    done = tmp_path / "done"
    command = " ".join(
        shlex.quote(str(a))
        for a in [sys.executable, "-m", "edge_detect", "run", "--show", "--realtime"]
        + ["--input", wav, "--model", TINY, "--config", config]
    )
    shell = f"cd {shlex.quote(str(ROOT))} && {command} > {alerts}; touch {done}; sleep 30"
    session = f"edge-detect-live-{time.monotonic_ns()}"
    tmux = ["tmux", "-L", session]
    subprocess.run(
        [*tmux, "new-session", "-d", "-s", session, "-x", "110", "-y", "30", shell], check=True
    )
    try:
        frames: list[str] = []
        deadline = time.monotonic() + 60
        while not done.exists() and time.monotonic() < deadline:
            pane = subprocess.run(
                [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
            ).stdout
            if "dBFS" in pane and (not frames or pane != frames[-1]):
                frames.append(pane)
            time.sleep(0.1)
        assert done.exists(), "the run did not finish"
        final = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    # 6 s of audio at 5 redraws a second: many different frames, each a whole view
    assert len(frames) >= 10, frames[-1:]
    for frame in frames:
        assert "level" in frame and "baby_cry" in frame and "recent alerts" in frame
    assert "none yet" in frames[0]
    assert "baby_cry     score" in final and "alerts 1" in final
    assert CLEAR not in final  # tmux rendered the control codes, it did not print them
    (alert,) = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert alert["type"] == "alert" and alert["class"] == "baby_cry"
