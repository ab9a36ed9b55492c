"""``edge-detect calibrate``: per-class settings chosen on stored validation scores for a
false-alarm target, written into the model; ``eval stream --plot``; the warning about the
calibration manifest.

The search is tested on constructed scores (known spikes and events, so the right answer is
known); the command end to end on generated audio with the tiny fixture model (its scores mean
nothing, but the pipeline's own alerts must keep to what calibration promised).
"""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import FIXTURES, ROOT
from test_eval_stream import noise_clip, tone_clip

from edge_detect import streams
from edge_detect.audio import write_wav
from edge_detect.calibrate import format_calibration_table
from edge_detect.config import load_config
from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError
from edge_detect.evaluation import Event
from edge_detect.model import load_model
from edge_detect.operating import (
    CALIBRATION_KEY,
    ScoredStreams,
    calibrate,
    calibrate_class,
    lowest_threshold,
    operating_point,
    replay_onsets,
    warn_if_calibrated_on,
    with_threshold,
)

RATE = 16_000
HOP_MS = 10.0
TINY = FIXTURES / "tiny_model.onnx"
FRAMES_PER_S = 100
FREE_S = 360.0  # 0.1 h: at 5 false alarms per hour, none may happen
TARGET = 5.0
FLOOR = 0.1
SPIKE, SPIKE_FRAMES = 0.95, 8  # a short loud click in the event-free audio
WEAK, STRONG = 0.5, 0.95


def _stream(scores: np.ndarray, events: list[Event], ratio: float | None) -> streams.TestStream:
    samples = np.zeros(round(len(scores) / FRAMES_PER_S * RATE), dtype=np.float32)
    return streams.TestStream(samples, RATE, events, ratio, [e.label for e in events], FREE_S)


def constructed_scores(plateau: float | None = None) -> ScoredStreams:
    """One class's scores: an event-free hour-tenth at FLOOR with short clicks at SPIKE every
    30 s (and a 2 s plateau, if given), and an event stream with 1 s events, alternately
    STRONG and WEAK, every 10 s."""
    free = np.full(round(FREE_S * FRAMES_PER_S), FLOOR, dtype=np.float32)
    for start in range(15 * FRAMES_PER_S, len(free), 30 * FRAMES_PER_S):
        free[start : start + SPIKE_FRAMES] = SPIKE
    if plateau is not None:
        free[100 * FRAMES_PER_S : 102 * FRAMES_PER_S] = plateau
    scores = np.full(100 * FRAMES_PER_S, FLOOR, dtype=np.float32)
    events = []
    for i, onset_s in enumerate(range(5, 100, 10)):
        start = onset_s * FRAMES_PER_S
        scores[start : start + FRAMES_PER_S] = STRONG if i % 2 == 0 else WEAK
        events.append(Event("dog_bark", float(onset_s), onset_s + 1.0))
    event_stream = _stream(scores[:, None], events, 0.0)
    free_stream = _stream(free[:, None], [], None)
    return ScoredStreams([(event_stream, [], scores[:, None])], (free_stream, [], free[:, None]))


BASE = ClassDetection(threshold_on=0.5, threshold_off=0.3, smoothing_ms=100.0, confirm_ms=50.0)


def test_the_chosen_setting_meets_the_target_and_finds_what_the_default_misses():
    scored = constructed_scores()
    # the model's own smoothing and confirmation: a click smoothed over 100 ms stays at or
    # above FLOOR + 7/10 of its height for 5 frames (the 50 ms confirmation), so the
    # threshold must rise above that and every WEAK event is missed
    own = lowest_threshold(
        scored.free[2][:, 0], "dog_bark", BASE, HOP_MS, free_hours=0.1, target_per_hour=TARGET
    )
    assert own == pytest.approx(FLOOR + (SPIKE - FLOOR) * 7 / 10, abs=2e-3)
    own_point = operating_point(scored, 0, "dog_bark", with_threshold(BASE, own), HOP_MS)
    assert own_point.false_alarms == 0 and own_point.misses == {"0.0": 5}  # the 5 weak ones

    result = calibrate_class(scored, 0, "dog_bark", BASE, HOP_MS, target_per_hour=TARGET)
    chosen = result.chosen.setting
    assert result.met and result.tried == 9
    # longer smoothing or confirmation hides the clicks: every event found, no false alarm
    assert result.chosen.total_misses == 0 and result.chosen.pooled_miss_rate == 0.0
    assert (chosen.smoothing_ms, chosen.confirm_ms) != (100.0, 50.0)
    assert replay_onsets(scored.free[2][:, 0], "dog_bark", chosen, HOP_MS) == []
    assert result.chosen.false_alarms_per_hour <= TARGET
    assert chosen.threshold_off == pytest.approx(chosen.threshold_on * 0.6)
    assert chosen.refractory_s == BASE.refractory_s
    # lowest threshold: one bisection step lower and the clicks or the floor alert
    lower = with_threshold(chosen, chosen.threshold_on - 1 / 1024)
    assert replay_onsets(scored.free[2][:, 0], "dog_bark", lower, HOP_MS) != []
    # among the settings that find everything, the quickest alert wins
    assert result.chosen.latency_s is not None and result.chosen.latency_s < 0.25


def test_an_unreachable_target_keeps_the_class_at_threshold_one_and_says_so():
    scored = constructed_scores(plateau=1.0)  # saturated scores: alert at any threshold
    result = calibrate_class(scored, 0, "dog_bark", BASE, HOP_MS, target_per_hour=TARGET)
    assert not result.met
    assert result.chosen.setting.threshold_on == 1.0 and result.chosen.setting.enabled
    assert result.chosen.false_alarms == 1  # the plateau, once (no setting avoids it)
    record = {
        "target_false_alarms_per_hour": TARGET,
        "event_free_hours": 0.1,
        "background_distinct_minutes": 6.0,
        "seed": 0,
        "manifest": "val.csv",
        "ratios_db": [0.0],
        "classes": {"dog_bark": result.to_dict()},
    }
    table = format_calibration_table(record, "m", FIXTURES / "x.onnx")
    row = next(line for line in table.splitlines() if line.startswith("dog_bark"))
    assert row.split()[1:3] == ["NO", "1.000"]
    assert "NOT MET for dog_bark" in table


@pytest.mark.parametrize("target", [0.0, -1.0])
def test_a_target_not_above_zero_is_refused(target):
    model = load_model(TINY)
    with pytest.raises(ConfigError, match="must be > 0"):
        calibrate(model, load_config(None), constructed_scores(), target_per_hour=target)


# -- the command, end to end ----------------------------------------------------------------
@pytest.fixture
def corpus(tmp_path):
    """Tone clips as dog_bark and gun_shot, noise of three levels as background."""
    rows = [("path", "label")]
    for i, amplitude in enumerate([0.5, 0.2]):
        for label in ("dog_bark", "gun_shot"):
            write_wav(tmp_path / f"{label}{i}.wav", tone_clip(amplitude), RATE)
            rows.append((f"{label}{i}.wav", label))
    for i in range(3):
        write_wav(tmp_path / f"noise{i}.wav", noise_clip(4.0, i) * (1 + 10 * i), RATE)
        rows.append((f"noise{i}.wav", "background"))
    with (tmp_path / "val.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return tmp_path


def edge_detect(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "edge_detect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


STREAM_ARGS = ("--snr-db", "0", "6", "--background-minutes", "1", "--seed", "4")


def test_calibrated_model_loads_with_the_new_settings_and_keeps_to_the_target(corpus):
    out, report = corpus / "calibrated.onnx", corpus / "calibration.json"
    result = edge_detect(
        "calibrate", "--model", TINY, "--manifest", corpus / "val.csv", *STREAM_ARGS,
        "--target-fa-per-hour", "30", "--out", out, "--json", report,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "repeat 0.2 min of distinct background" in result.stderr  # 3 x 4 s of noise
    record = json.loads(report.read_text())
    calibrated = load_model(out)
    assert calibrated.model_id == record["model_id"] != load_model(TINY).model_id
    stored = json.loads(calibrated.metadata[CALIBRATION_KEY])
    assert stored["manifest"] == "val.csv" and stored["seed"] == 4
    assert stored["target_false_alarms_per_hour"] == 30.0
    assert stored["ratios_db"] == [0.0, 6.0] and stored["event_free_hours"] == round(1 / 60, 4)
    assert stored["source_model_sha256"] == load_model(TINY).sha256
    manifest_bytes = (corpus / "val.csv").read_bytes()
    assert stored["manifest_sha256"] == hashlib.sha256(manifest_bytes).hexdigest()
    assert set(stored["classes"]) == {"dog_bark", "baby_cry", "gun_shot"}
    for label, row in stored["classes"].items():
        assert calibrated.detection[label] == ClassDetection.from_dict(row["setting"])
        assert calibrated.detection[label] != load_model(TINY).detection[label]
        line = next(line for line in result.stdout.splitlines() if line.startswith(label))
        met = "yes" if row["met"] else "NO"
        assert line.split()[1:3] == [met, f"{row['setting']['threshold_on']:.3f}"]
    assert calibrated.detection["background"] == load_model(TINY).detection["background"]
    # the pipeline itself, on the very stream calibrated on, keeps to the promise; and the
    # evaluation says these are calibration figures, not a test
    evaluated = edge_detect(
        "eval", "stream", "--model", out, "--manifest", corpus / "val.csv", *STREAM_ARGS,
        "--json", corpus / "eval.json",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "was calibrated on (same SHA-256)" in evaluated.stderr
    assert "Never tune on the test stream" in evaluated.stderr
    summary = json.loads((corpus / "eval.json").read_text())
    for label, row in stored["classes"].items():
        fa = summary["false_alarms"][label]["per_hour"]
        assert fa == row["val_false_alarms_per_hour"]  # replayed == what the pipeline did
        if row["met"]:
            assert fa <= 30.0


def test_bad_input_gets_clear_errors(corpus, tmp_path):
    base = ("calibrate", "--model", TINY, "--background-minutes", "0.5")
    out = tmp_path / "out.onnx"
    (corpus / "events_only.csv").write_text("path,label\ndog_bark0.wav,dog_bark\n")
    out.write_bytes(b"taken")
    fresh = ("--out", tmp_path / "a.onnx")
    val = ("--manifest", corpus / "val.csv")
    cases = [
        (("--manifest", tmp_path / "missing.csv", *fresh), "cannot read manifest"),
        (("--manifest", corpus / "events_only.csv", *fresh), "no background clips"),
        ((*val, "--target-fa-per-hour", "0", *fresh), "must be > 0"),
        ((*val, "--out", out), "exists; choose another file or pass --force"),
        ((*val, "--out", TINY), "is the input model; pass --in-place"),
        ((*val, "--background-minutes", "0", *fresh), "needs event-free audio"),
    ]
    for args, message in cases:
        result = edge_detect(*base, *args)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert out.read_bytes() == b"taken" and not (tmp_path / "a.onnx").exists()


def test_without_onnx_the_error_names_the_install(corpus, tmp_path):
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "from edge_detect.cli import main\n"
        f"sys.exit(main(['calibrate', '--model', {str(TINY)!r}, '--manifest', "
        f"{str(corpus / 'val.csv')!r}, '--out', {str(tmp_path / 'o.onnx')!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode != 0
    assert "pip install 'edge-detect[calibrate]'" in result.stderr
    assert "pip install onnx" in result.stderr and "Traceback" not in result.stderr


def test_no_warning_for_another_manifest(corpus, tmp_path):
    out = tmp_path / "cal.onnx"
    result = edge_detect(
        "calibrate", "--model", TINY, "--manifest", corpus / "val.csv", *STREAM_ARGS,
        "--out", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    model = load_model(out)
    assert warn_if_calibrated_on(model, corpus / "val.csv")
    other = corpus / "test.csv"
    other.write_text((corpus / "val.csv").read_text().replace("noise2", "noise1"))
    assert not warn_if_calibrated_on(model, other)
    assert not warn_if_calibrated_on(load_model(TINY), corpus / "val.csv")


def test_plot_file_is_written_and_curves_are_in_the_json(corpus, tmp_path):
    pytest.importorskip("matplotlib")
    plot, report = tmp_path / "curves.png", tmp_path / "stream.json"
    result = edge_detect(
        "eval", "stream", "--model", TINY, "--manifest", corpus / "val.csv", *STREAM_ARGS,
        "--json", report, "--plot", plot,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    curves = json.loads(report.read_text())["curves"]
    assert set(curves) == {"dog_bark", "baby_cry", "gun_shot"}
    for label, curve in curves.items():
        points = curve["points"]
        assert [p["threshold_on"] for p in points] == sorted(p["threshold_on"] for p in points)
        assert all(set(p["miss_rate"]) == {"0.0", "6.0"} for p in points)
        # the tiny model's scores never reach 0.999: nothing alerts, everything is missed
        assert points[-1]["false_alarms_per_hour"] == 0.0
        # (baby_cry has no events in this manifest: no miss rate at all)
        expected = None if label == "baby_cry" else 1.0
        assert points[-1]["miss_rate"] == {"0.0": expected, "6.0": expected}
        # the lowest threshold alerts on the event-free stream (scores sit near 0.25)
        assert points[0]["false_alarms_per_hour"] > 0
        assert curve["current"]["threshold_on"] == curve["setting"]["threshold_on"]
    no_free = edge_detect(
        "eval", "stream", "--model", TINY, "--manifest", corpus / "val.csv",
        "--background-minutes", "0", "--plot", plot,
    )  # fmt: skip
    assert no_free.returncode != 0 and "--plot needs an event-free stream" in no_free.stderr


def test_with_threshold_keeps_the_off_ratio():
    moved = with_threshold(BASE, 0.8)
    assert moved.threshold_off == pytest.approx(0.48)
    assert replace(moved, threshold_on=0.5, threshold_off=0.3) == BASE
