"""Metrics: the registry's text format, a real endpoint on 127.0.0.1, the adapters fed by a real
pipeline run on the fixture model, and ``edge-detect status`` against a real server."""

from __future__ import annotations

import io
import re
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, make_alert

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.audio import write_wav
from edge_detect.cli import main
from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError
from edge_detect.metrics import (
    BLOCK_SECONDS_BUCKETS,
    DetectorMetrics,
    MetricsServer,
    MetricsSink,
    Registry,
    build_metrics_sink,
    instrument,
    parse_listen,
    parse_metrics,
)
from edge_detect.model import load_model
from edge_detect.pipeline import Pipeline
from edge_detect.sources import WavFileSource
from edge_detect.status_cli import format_status, metrics_url
from edge_detect.webhook import WebhookSink
from edge_detect.webhook_endpoint import Backoff, WebhookEndpoint

RATE = 16_000
# The fixture model's baby_cry score rises above 0.215 on a loud 300 Hz tone (tests/test_pipeline).
TONE_DETECTION = {
    "dog_bark": ClassDetection(enabled=False),
    "gun_shot": ClassDetection(enabled=False),
    "baby_cry": ClassDetection(
        threshold_on=0.215, threshold_off=0.214, smoothing_ms=50, confirm_ms=100, refractory_s=1
    ),
}


def _get(url: str) -> tuple[int, str, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def _value(text: str, name: str, **labels: str) -> float | None:
    for sample in parse_metrics(text):
        if sample.name == name and dict(sample.labels) == labels:
            return sample.value
    return None


@pytest.fixture
def served() -> tuple[DetectorMetrics, MetricsServer]:
    metrics = DetectorMetrics()
    server = MetricsServer(metrics, "127.0.0.1", 0)
    yield metrics, server
    server.close()


def _alert(label: str, seq: int = 1) -> Alert:
    return make_alert(seq, label, device="test")


def _health(event: str) -> HealthEvent:
    return HealthEvent(id="h", seq=1, event=event, time="2026-01-01T00:00:00+00:00", device="t")


def test_text_format_round_trips_with_escaped_labels() -> None:
    registry = Registry()
    registry.counter("x_total", "Things.\nSecond line", ["name"])
    registry.gauge("y", "A gauge.")
    odd = 'a "quoted" back\\slash\nnewline'
    registry.inc("x_total", 2, {"name": odd})
    registry.inc("x_total", 0.5, {"name": odd})
    registry.set("y", -1.25)
    text = registry.render()
    assert "# HELP x_total Things.\\nSecond line\n# TYPE x_total counter\n" in text
    assert 'x_total{name="a \\"quoted\\" back\\\\slash\\nnewline"} 2.5\n' in text
    assert "y -1.25\n" in text
    assert [(s.name, s.labels, s.value) for s in parse_metrics(text)] == [
        ("x_total", (("name", odd),), 2.5),
        ("y", (), -1.25),
    ]
    with pytest.raises(ValueError, match="only goes up"):
        registry.inc("x_total", -1, {"name": "a"})
    with pytest.raises(ValueError, match=r"takes labels \['name'\]"):
        registry.inc("x_total", 1, {"class": "a"})
    with pytest.raises(ValueError, match="not in the Prometheus text format"):
        parse_metrics("this is not a metric line\n")


def test_histogram_buckets_are_cumulative_and_counts_exact_under_threads() -> None:
    metrics = DetectorMetrics()
    per_thread, threads = 2_000, 8
    durations = [0.0004, 0.003, 0.07, 5.0]  # one below the first bound, one above the last

    def work() -> None:
        for i in range(per_thread):
            metrics.block(durations[i % len(durations)], 0.1)
            metrics.alert("dog_bark")

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    text = metrics.render()
    n = per_thread * threads
    assert _value(text, "edge_detect_audio_blocks_total") == n
    assert _value(text, "edge_detect_alerts_total", **{"class": "dog_bark"}) == n
    assert _value(text, "edge_detect_block_processing_seconds_count") == n
    assert _value(text, "edge_detect_audio_seconds_total") == pytest.approx(0.1 * n)
    expected_sum = sum(durations) * n / len(durations)
    assert _value(text, "edge_detect_block_processing_seconds_sum") == pytest.approx(expected_sum)
    quarter = n // 4
    bucket = "edge_detect_block_processing_seconds_bucket"
    assert _value(text, bucket, le="0.0005") == quarter
    assert _value(text, bucket, le="0.002") == quarter
    assert _value(text, bucket, le="0.005") == 2 * quarter
    assert _value(text, bucket, le="0.1") == 3 * quarter
    assert _value(text, bucket, le="1") == 3 * quarter
    assert _value(text, bucket, le="+Inf") == n
    assert len(BLOCK_SECONDS_BUCKETS) + 1 == sum(1 for s in parse_metrics(text) if s.name == bucket)


def test_endpoint_serves_metrics_and_health_on_localhost(served) -> None:
    metrics, server = served
    assert server.url == f"http://127.0.0.1:{server.port}/metrics"
    status, ctype, text = _get(server.url)
    assert status == 200 and ctype == "text/plain; version=0.0.4; charset=utf-8"
    assert _value(text, "edge_detect_audio_blocks_total") == 0
    assert _value(text, "edge_detect_overflows_total") == 0
    health_url = server.url.replace("/metrics", "/health")
    assert _get(health_url)[0::2] == (503, "no audio processed yet\n")
    metrics.block(0.001, 0.1)
    metrics.microphone(True)
    assert _get(health_url)[0::2] == (200, "ok\n")
    metrics.microphone(False)
    assert _get(health_url)[0::2] == (503, "microphone lost\n")
    assert _get(server.url.replace("/metrics", "/nope"))[0] == 404
    status, _, text = _get(server.url)
    assert _value(text, "edge_detect_microphone_up") == 0
    assert _value(text, "edge_detect_microphone_losses_total") == 1


def test_metrics_sink_counts_alerts_and_follows_the_microphone() -> None:
    metrics = DetectorMetrics()
    metrics.declare_classes(["dog_bark", "baby_cry", "gun_shot"])
    sink = MetricsSink(metrics)
    for i, label in enumerate(["dog_bark", "gun_shot", "dog_bark"], 1):
        sink.emit(_alert(label, i))
    sink.emit(_health("microphone_lost"))
    sink.emit(_health("microphone_lost"))  # still lost: one loss, not two
    text = metrics.render()
    assert _value(text, "edge_detect_alerts_total", **{"class": "dog_bark"}) == 2
    assert _value(text, "edge_detect_alerts_total", **{"class": "gun_shot"}) == 1
    assert _value(text, "edge_detect_alerts_total", **{"class": "baby_cry"}) == 0
    assert _value(text, "edge_detect_microphone_up") == 0
    assert _value(text, "edge_detect_microphone_losses_total") == 1
    sink.emit(_health("microphone_restored"))
    assert _value(metrics.render(), "edge_detect_microphone_up") == 1


def test_metered_pipeline_run_reports_blocks_timing_and_alerts(tmp_path: Path) -> None:
    t = np.arange(RATE) / RATE
    tone = (0.5 * np.sin(2 * np.pi * 300.0 * t)).astype(np.float32)
    quiet = np.random.default_rng(0).normal(0, 0.01, 2 * RATE).astype(np.float32)
    wav = tmp_path / "tone.wav"
    write_wav(wav, np.concatenate([quiet, tone, quiet]), RATE)

    sink = build_metrics_sink({"listen": "127.0.0.1:0"})
    assert sink.server is not None
    model = load_model(FIXTURES / "tiny_model.onnx")
    pipeline = Pipeline(model, [sink], detection=TONE_DETECTION)
    wav_source = WavFileSource(wav, RATE, block_ms=100, realtime=False)
    assert instrument([], wav_source, model.labels) is wav_source  # no metrics configured
    source = instrument([sink], wav_source, model.labels)
    url = sink.server.url
    stats = pipeline.run(source)
    assert pipeline.emitted, "the planted tone should give an alert"

    # The pipeline closed its sinks, and with them the endpoint.
    with pytest.raises(urllib.error.URLError):
        _get(url)
    text = sink.metrics.render()
    assert _value(text, "edge_detect_audio_blocks_total") == stats.blocks == 50
    assert _value(text, "edge_detect_audio_seconds_total") == pytest.approx(stats.audio_s)
    assert _value(text, "edge_detect_block_processing_seconds_count") == stats.blocks
    # Our clock runs from handing a block out to being asked for the next: it contains the
    # pipeline's own per-block timing.
    measured = _value(text, "edge_detect_block_processing_seconds_sum")
    assert measured >= sum(stats.block_seconds) > 0
    assert _value(text, "edge_detect_alerts_total", **{"class": "baby_cry"}) == len(
        pipeline.emitted
    )
    assert _value(text, "edge_detect_alerts_total", **{"class": "dog_bark"}) == 0
    assert _value(text, "edge_detect_microphone_up") is None  # a file is not a microphone


class _MicLike:
    """A source with an overflow counter, like MicrophoneSource, and two blocks of silence."""

    name = "mic-like"
    sample_rate_hz = RATE

    def __init__(self) -> None:
        self.overflows = 0

    def blocks(self):
        from edge_detect.sources import Block

        for _ in range(2):
            self.overflows += 3
            yield Block(np.zeros(1600, np.float32), time.time())

    def stop(self) -> None:
        pass


def test_meter_reads_the_microphones_overflow_counter_once() -> None:
    metrics = DetectorMetrics()
    source = MetricsSink(metrics).meter(_MicLike())
    for _ in source.blocks():
        pass
    assert source.overflows == 6  # other attributes reach the wrapped source
    text = metrics.render()
    assert _value(text, "edge_detect_overflows_total") == 6
    assert _value(metrics.render(), "edge_detect_overflows_total") == 6  # not counted twice
    assert _value(text, "edge_detect_microphone_up") == 1


@pytest.mark.parametrize("throttled", [False, True])
def test_webhook_figures_reach_the_metrics_with_and_without_a_throttle(
    tmp_path: Path, throttled: bool
) -> None:
    """Issue 17 item 3: with [sinks.webhook.throttle] the ThrottledSink wrapper hid the outbox
    depth and delivery figures (metrics probed for ``outbox``/``stats`` attributes). Outputs now
    say what they report (``collect()``), and the wrapper passes its inner output's on."""
    # A real webhook sink aimed at a port where nothing listens: every attempt fails.
    import socket

    from edge_detect.throttle import ThrottledSink, ThrottlePolicy

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    endpoint = WebhookEndpoint(
        url=f"http://127.0.0.1:{dead_port}/hook",
        name="phone",
        backoff=Backoff(initial_s=30.0),
        timeout_s=1.0,
    )
    webhooks = WebhookSink([endpoint], tmp_path / "outbox.sqlite")
    output = ThrottledSink(webhooks, ThrottlePolicy(cooldown_s=60)) if throttled else webhooks
    metrics = DetectorMetrics()
    instrument([output, MetricsSink(metrics)], _MicLike(), ["gun_shot"])
    try:
        output.emit(_alert("gun_shot", 1))
        output.emit(_alert("gun_shot", 2))  # held back by the throttle, when there is one
        deadline = time.monotonic() + 10
        while webhooks.stats["phone"].retries < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        text = metrics.render()
    finally:
        webhooks.close(timeout_s=1)
    assert _value(text, "edge_detect_outbox_depth") == (1 if throttled else 2)
    assert _value(text, "edge_detect_delivery_failures_total", endpoint="phone") == 1
    assert _value(text, "edge_detect_deliveries_total", endpoint="phone") == 0
    assert _value(text, "edge_detect_webhook_endpoint_up", endpoint="phone") == 1
    assert _value(text, "edge_detect_thread_up", thread="webhook phone") == 1
    if throttled:
        assert _value(text, "edge_detect_alerts_throttled_total") == 1


def test_listen_addresses_and_config_errors() -> None:
    assert parse_listen("127.0.0.1:9750") == ("127.0.0.1", 9750)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen(9100) == ("127.0.0.1", 9100)
    for bad in ("localhost", "1.2.3.4:99999", True, None):
        with pytest.raises(ConfigError, match="listen"):
            parse_listen(bad)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['port'\]"):
        build_metrics_sink({"port": 1})
    sink = build_metrics_sink({"enabled": False})
    assert sink.server is None
    sink.close()


def test_busy_port_is_a_clear_config_error(served) -> None:
    _, server = served
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        MetricsServer(DetectorMetrics(), "127.0.0.1", server.port)


def test_status_cli_prints_the_figures_of_a_running_endpoint(served, capsys) -> None:
    metrics, server = served
    metrics.declare_classes(["baby_cry", "dog_bark"])
    metrics.microphone(True)
    for _ in range(10):
        metrics.block(0.0015, 0.1)
    metrics.alert("dog_bark")
    metrics.outbox_depth(2)
    metrics.delivered("phone", 5)
    metrics.delivery_failed("phone", 1)
    assert main(["status", "--url", server.url]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"edge-detect {metrics.samples()[0].label('version')} at {server.url}")
    assert "health      ok\n" in out
    assert "microphone  up, lost 0 time(s) since start\n" in out
    assert "audio       10 blocks, 1 s processed, 0 overflow(s)\n" in out
    assert (
        "processing  1.50 ms per block on average (1.5% of real time); 95% of blocks <= 2 ms\n"
        in out
    )
    assert "alerts      1 in total\n" in out
    assert "  baby_cry           0\n" in out
    assert re.search(r"^  dog_bark           1   last \d+ s ago$", out, re.M), out
    assert "outbox      2 message(s) waiting\n" in out
    assert "webhook     phone: 5 delivered, 1 failed attempt(s), 0 given up\n" in out

    metrics.microphone(False)
    assert main(["status", "--url", server.url]) == 1
    assert "health      microphone lost\n" in capsys.readouterr().out


def test_status_cli_unreachable_endpoint_says_how_to_fix(capsys) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["status", "--url", f"http://127.0.0.1:{port}/metrics", "--timeout", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"no metrics at http://127.0.0.1:{port}/metrics" in captured.err
    assert "systemctl status edge-detect" in captured.err and "[sinks.metrics]" in captured.err
    assert "Traceback" not in captured.err


def test_status_url_comes_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[sinks.metrics]\nlisten = "0.0.0.0:9123"\n')
    assert metrics_url(config=config) == "http://127.0.0.1:9123/metrics"
    assert metrics_url(url="http://x:1/metrics", config=config) == "http://x:1/metrics"
    config.write_text("[sinks]\n")
    assert metrics_url(config=config) == "http://127.0.0.1:9750/metrics"
    config.write_text("not toml [")
    with pytest.raises(ConfigError, match="cannot read the config"):
        metrics_url(config=config)


def test_format_status_flags_stale_audio() -> None:
    metrics = DetectorMetrics()
    metrics.block(0.001, 0.1)
    later = time.time() + 120
    text = format_status(metrics.samples(), "http://h/metrics", now=later)
    assert "health      no audio processed for 2 min\n" in text
    assert io.StringIO(text).readline().startswith("edge-detect ")


@pytest.mark.parametrize("name", ["edge_detect.metrics", "edge_detect.status_cli"])
def test_all_lists_every_public_class_and_function(name: str) -> None:
    import importlib
    import inspect

    module = importlib.import_module(name)
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert all(hasattr(module, attr) for attr in module.__all__)
    assert defined <= set(module.__all__), sorted(defined - set(module.__all__))


def test_status_shows_what_is_degraded() -> None:
    """Supervision and degradation are visible in ``edge-detect status``: a thread down or
    restarted, an endpoint disabled by a 410, messages waiting in memory on a full disk, clips
    waiting to be written, the MQTT broker away."""
    now = 1_000_000.0
    text = "\n".join(
        [
            'edge_detect_info{version="9"} 1',
            f"edge_detect_last_block_timestamp_seconds {now - 1}",
            "edge_detect_outbox_depth 12",
            'edge_detect_outbox_memory_messages{output="webhook"} 10',
            'edge_detect_outbox_memory_messages{output="mqtt"} 0',
            'edge_detect_deliveries_total{endpoint="ha"} 4',
            'edge_detect_delivery_failures_total{endpoint="ha"} 1',
            'edge_detect_dead_letters_total{endpoint="ha"} 0',
            'edge_detect_webhook_endpoint_up{endpoint="ha"} 0',
            "edge_detect_mqtt_connected 0",
            "edge_detect_mqtt_pending 3",
            "edge_detect_mqtt_delivered_total 7",
            "edge_detect_clips_written_total 5",
            "edge_detect_clips_waiting 2",
            "edge_detect_clips_dropped_total 0",
            'edge_detect_thread_up{thread="webhook ha"} 1',
            'edge_detect_thread_restarts_total{thread="webhook ha"} 2',
            'edge_detect_thread_up{thread="clip writer"} 0',
            'edge_detect_thread_restarts_total{thread="clip writer"} 1',
            'edge_detect_thread_up{thread="metrics http"} 1',
            'edge_detect_thread_restarts_total{thread="metrics http"} 0',
        ]
    )
    status = format_status(parse_metrics(text), "http://x", now=now)
    assert (
        "outbox      12 message(s) waiting; 10 kept in memory: the outbox cannot be written"
        in status
    )
    assert (
        "webhook     ha: DISABLED (enable it: edge-detect webhook enable ha); 4 delivered" in status
    )
    assert "mqtt        DISCONNECTED, 7 published, 3 waiting" in status
    assert "clips       5 written, 2 WAITING (the folder cannot be written), 0 dropped" in status
    assert "threads     2 of 3 up, 3 restart(s)" in status
    assert "  clip writer   DOWN (restarting), restarted 1 time(s)" in status
    assert "  webhook ha    up, restarted 2 time(s)" in status
    assert "metrics http" not in status  # a healthy thread is not listed
