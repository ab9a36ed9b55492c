"""The whole runtime path (source -> features -> model -> detection -> alerts) on the fixture
model: chunk-size invariance, the recurrent-state policy over an hour of audio, sinks, timing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import FIXTURES

from edge_detect.audio import write_wav
from edge_detect.detect import ClassDetection
from edge_detect.model import load_model
from edge_detect.pipeline import STATS_WINDOW, Pipeline, StatePolicy
from edge_detect.sinks import JsonLinesSink
from edge_detect.sources import Block, WavFileSource

RATE = 16_000
TINY = FIXTURES / "tiny_model.onnx"
# The fixture model has random weights; on low noise its baby_cry score stays <= 0.2135 and a
# loud 300 Hz tone lifts it to >= 0.215 (measured; the margins are 1000x the float error).
TONE_HZ = 300.0
TONE_DETECTION = {
    "dog_bark": ClassDetection(enabled=False),
    "gun_shot": ClassDetection(enabled=False),
    "baby_cry": ClassDetection(
        threshold_on=0.215, threshold_off=0.214, smoothing_ms=50, confirm_ms=100, refractory_s=1
    ),
}


def tone(seconds: float) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)


class PlantedSource:
    """Low noise with loud tones planted at given times, generated block by block (no memory)."""

    name = "synthetic"
    sample_rate_hz = RATE

    def __init__(self, duration_s: float, plants: list[float], block_ms: float = 100.0) -> None:
        self.total = round(duration_s * RATE)
        self.block = round(block_ms * RATE / 1000)
        self.plants = [(round(p * RATE), tone(1.0)) for p in plants]
        self.rng = np.random.default_rng(1)

    def stop(self) -> None:
        pass

    def blocks(self) -> Iterator[Block]:
        for begin in range(0, self.total, self.block):
            end = min(begin + self.block, self.total)
            x = self.rng.normal(0, 0.01, end - begin).astype(np.float32)
            for start, burst in self.plants:
                lo, hi = max(begin, start), min(end, start + len(burst))
                if lo < hi:
                    x[lo - begin : hi - begin] += burst[lo - start : hi - start]
            yield Block(x, 1_000_000.0 + end / RATE)


@pytest.fixture(scope="module")
def model():
    return load_model(TINY)


def test_block_size_does_not_change_scores_or_alerts(model, tmp_path):
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.01, 12 * RATE).astype(np.float32)
    for start_s in (2.0, 7.3):
        i = round(start_s * RATE)
        audio[i : i + RATE] += tone(1.0)
    wav = tmp_path / "planted.wav"
    write_wav(wav, audio, RATE)
    results = []
    for block_ms in (10, 100, 250, 1000):
        pipeline = Pipeline(model, [], detection=TONE_DETECTION, keep_scores=True)
        pipeline.run(WavFileSource(wav, RATE, block_ms=block_ms, realtime=False))
        alerts = [(a.label, a.extra["offset_s"], a.duration_s) for a in pipeline.emitted]
        results.append((np.concatenate(pipeline.scores), alerts))
    reference_scores, reference_alerts = results[0]
    assert [a[0] for a in reference_alerts] == ["baby_cry", "baby_cry"]
    assert [a[1] for a in reference_alerts] == pytest.approx([2.0, 7.3], abs=0.3)
    for scores, alerts in results[1:]:
        assert scores.shape == reference_scores.shape == (1198, 4)
        np.testing.assert_allclose(scores, reference_scores, atol=1e-5)
        assert alerts == reference_alerts


def test_alert_and_health_lines_on_the_json_sink(model):
    out = io.StringIO()
    pipeline = Pipeline(
        model, [JsonLinesSink(out, health=True)], detection=TONE_DETECTION, device_name="pi-1"
    )
    stats = pipeline.run(PlantedSource(6.0, [2.0]))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(m["type"], m.get("event") or m.get("class")) for m in lines] == [
        ("health", "started"),
        ("alert", "baby_cry"),
        ("health", "stopping"),
    ]
    alert = lines[1]
    assert alert["device"] == "pi-1" and alert["seq"] == 1 and alert["v"] == 1
    assert alert["model_id"] == model.model_id
    assert alert["offset_s"] == pytest.approx(2.0, abs=0.3)
    # block end times start at 1e6 s since the epoch: 1970-01-12T13:46:40 UTC
    assert alert["start"].startswith("1970-01-12T13:46:4") and alert["start"].endswith("+00:00")
    assert stats.alerts == 1 and stats.audio_s == pytest.approx(6.0)


def test_alert_on_end_reports_the_whole_event(model):
    pipeline = Pipeline(model, [], detection=TONE_DETECTION, alert_on="end")
    pipeline.run(PlantedSource(6.0, [2.0]))
    (alert,) = pipeline.emitted
    assert alert.duration_s == pytest.approx(1.0, abs=0.2)


@pytest.mark.slow
def test_state_policy_over_one_hour_never_misses_an_event(model):
    """An hour of audio with 55 planted events, run as fast as possible with the policy on."""
    rng = np.random.default_rng(7)
    plants = sorted(30.0 + 64.0 * k + float(rng.uniform(0, 30)) for k in range(55))
    policy = StatePolicy(quiet_s=5.0, interval_s=60.0, max_interval_s=1800.0, warmup_s=2.0)
    pipeline = Pipeline(model, [], detection=TONE_DETECTION, state_policy=policy)
    stats = pipeline.run(PlantedSource(3600.0, plants))
    assert stats.audio_s == pytest.approx(3600.0)
    found = [a.extra["offset_s"] for a in pipeline.emitted]
    assert len(found) == len(plants), (found, plants)
    assert np.abs(np.array(found) - np.array(plants)).max() < 0.3
    # about one re-synchronisation a minute, each after >= quiet_s with no planted event
    assert 50 <= stats.resyncs <= 60
    fps = model.feature_config.frames_per_second
    for frame in stats.resync_frames:
        t = frame / fps
        assert not any(p - 0.1 < t and t - policy.quiet_s < p + 1.0 + 0.2 for p in plants), t
    # events that begin right after a re-synchronisation (0.5-2.6 s here) were found too
    resync_s = [frame / fps for frame in stats.resync_frames]
    gaps = [min(p - t for t in resync_s if t < p) for p in plants if resync_s[0] < p]
    assert sum(gap < 3.0 for gap in gaps) >= 3
    state = model.get_state()
    assert np.all(np.isfinite(state.h)) and np.all(np.isfinite(state.c))
    assert stats.max_abs_state < 50.0


def test_state_is_resynchronised_even_without_quiet(model):
    # a tone every 3 s keeps the stream busy: only max_interval_s triggers
    plants = [float(t) for t in range(1, 120, 3)]
    policy = StatePolicy(quiet_s=5.0, interval_s=10.0, max_interval_s=30.0, warmup_s=1.0)
    pipeline = Pipeline(model, [], detection=TONE_DETECTION, state_policy=policy)
    stats = pipeline.run(PlantedSource(121.0, plants))
    # every 30 s (3000 frames), checked at the end of the block (10 frames) that reaches it
    assert [f // 10 * 10 for f in stats.resync_frames] == [3000, 6000, 9000, 12000]
    assert len(pipeline.emitted) == len(plants)


def test_heartbeat_every_n_seconds_of_audio(model):
    out = io.StringIO()
    pipeline = Pipeline(model, [JsonLinesSink(out, health=True)], heartbeat_s=2.0)
    pipeline.run(PlantedSource(7.0, []))
    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["started", "heartbeat", "heartbeat", "heartbeat", "stopping"]


def test_run_stats_stay_bounded_on_an_endless_stream(model):
    # one timing per block grew a weeks-long detector by 28 MB a day (bench/stability.py); the
    # stats keep the latest STATS_WINDOW blocks and a running total instead
    blocks = STATS_WINDOW + 500
    pipeline = Pipeline(model, [], detection=TONE_DETECTION)
    stats = pipeline.run(PlantedSource(blocks * 0.01, [], block_ms=10.0))
    assert stats.blocks == blocks
    assert len(stats.block_seconds) == STATS_WINDOW
    assert stats.busy_s > sum(stats.block_seconds) > 0


class Collect:
    """A sink that keeps every message."""

    def __init__(self) -> None:
        self.messages: list = []

    def emit(self, message) -> None:
        self.messages.append(message)

    def close(self) -> None:
        pass


def test_non_finite_scores_at_run_time_never_become_an_alert(tmp_path):
    """Issue 15 item 4: a model whose scores turn NaN on loud input (silence, which the load
    check runs, gives probabilities) raised alerts with ``"score": NaN``."""
    onnx = pytest.importorskip("onnx")
    from test_model_loader import poison_scores

    proto = onnx.load(str(TINY))
    poison_scores(proto, loud_above=0.0)  # the tone's log-mel reaches ~4, the noise's ~-5.7
    path = tmp_path / "nan_when_loud.onnx"
    onnx.save(proto, str(path))
    poisoned = load_model(path)
    sink = Collect()
    pipeline = Pipeline(poisoned, [sink], detection=TONE_DETECTION)
    stats = pipeline.run(PlantedSource(12.0, [2.0, 7.0]))
    alerts = [m for m in sink.messages if m.__class__.__name__ == "Alert"]
    health = [m.event for m in sink.messages if m.__class__.__name__ == "HealthEvent"]
    # the frames it could not score count as nothing heard; what the model says after the tone
    # (its memory of it, with finite scores) may still alert
    assert all(0.0 <= a.score <= 1.0 for a in alerts), alerts
    assert health == ["started", "model_output_invalid", "stopping"]  # once, not per block
    assert stats.invalid_frames > 0 and stats.audio_s == pytest.approx(12.0)
    for message in sink.messages:
        json.loads(message.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
