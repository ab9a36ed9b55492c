"""MQTT output against a real mosquitto broker started by the test (skipped without it)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import conftest
import pytest

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.errors import ConfigError

mqtt = pytest.importorskip("paho.mqtt.client", reason="the [mqtt] extra is not installed")
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto (apt) is not installed")

from edge_detect.mqtt import MqttSink, mqtt_sink_from_settings  # noqa: E402


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Broker:
    def __init__(self, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def accepting() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        assert wait_until(accepting), "mosquitto did not start"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """Records every message on every topic; resubscribes after reconnecting."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, bool, int]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *a: c.subscribe("#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), msg.qos))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [m[1] for m in self.messages if m[0] == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    yield b
    b.stop()


def make_alert(seq: int, label: str = "dog_bark") -> Alert:
    return conftest.make_alert(seq, label, device="Kitchen Pi")


def test_discovery_events_health_and_status(tmp_path: Path, broker: Broker) -> None:
    sink = MqttSink(
        "127.0.0.1",
        broker.port,
        outbox=tmp_path / "mqtt.sqlite",
        device_name="Kitchen Pi",
        classes=["dog_bark", "baby_cry"],
        publish_timeout_s=2,
    )
    sub = Subscriber(broker.port)
    base = "edge-detect/Kitchen_Pi"
    try:
        disc = "homeassistant/event/Kitchen_Pi/{}/config"
        assert wait_until(lambda: sub.on(disc.format("baby_cry")) and sub.on(f"{base}/status"))
        config = json.loads(sub.on(disc.format("dog_bark"))[-1])
        assert config["state_topic"] == f"{base}/event/dog_bark"
        assert config["event_types"] == ["dog_bark"]
        assert config["availability_topic"] == f"{base}/status"
        assert config["unique_id"] == "Kitchen_Pi_dog_bark"
        assert sub.on(f"{base}/status")[-1] == b"online"
        bark, glass = make_alert(1), make_alert(2, "glass_break")
        health = HealthEvent(id="h1", seq=1, event="heartbeat", time="t", device="Kitchen Pi")
        for message in (bark, health, glass):
            sink.emit(message)
        assert sink.flush(10)
        assert wait_until(lambda: sub.on(f"{base}/event/glass_break"))
        (event,) = sub.on(f"{base}/event/dog_bark")
        assert json.loads(event) == {**bark.to_dict(), "event_type": "dog_bark"}
        assert json.loads(sub.on(f"{base}/health")[0]) == health.to_dict()
        assert sub.on(disc.format("glass_break"))  # a new class announced before its alert
        with sub.lock:
            qos = {m[0]: m[3] for m in sub.messages}
        assert qos[f"{base}/event/dog_bark"] == 1
    finally:
        sink.close()
    assert wait_until(lambda: sub.on(f"{base}/status")[-1:] == [b"offline"])
    sub.close()


def test_broker_down_then_back_delivers_in_order(tmp_path: Path, broker: Broker) -> None:
    sink = MqttSink(
        "127.0.0.1",
        broker.port,
        outbox=tmp_path / "m.sqlite",
        device_name="pi",
        publish_timeout_s=1,
    )
    try:
        assert wait_until(sink._connected.is_set)
        broker.stop()
        assert wait_until(lambda: not sink._connected.is_set())
        alerts = [make_alert(i) for i in range(3)]
        for alert in alerts:
            sink.emit(alert)
        time.sleep(0.3)
        assert sink.outbox.pending_count() == 3  # kept while the broker is away
        broker.start()
        sub = Subscriber(broker.port)
        assert wait_until(sub.client.is_connected)
        assert sink.flush(20)  # reconnected by itself
        topic = "edge-detect/pi/event/dog_bark"
        assert wait_until(lambda: len(sub.on(topic)) == 3)
        assert [json.loads(p)["id"] for p in sub.on(topic)] == [a.id for a in alerts]
        sub.close()
    finally:
        sink.close()


def test_last_will_says_offline_when_the_detector_is_killed(tmp_path: Path, broker: Broker) -> None:
    child = textwrap.dedent(
        f"""
        import time
        from edge_detect.mqtt import MqttSink
        sink = MqttSink("127.0.0.1", {broker.port}, outbox={str(tmp_path / "k.sqlite")!r},
                        device_name="victim")
        while not sink._connected.is_set():
            time.sleep(0.01)
        print("up", flush=True)
        time.sleep(60)
        """
    )
    sub = Subscriber(broker.port)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "up"
        assert wait_until(lambda: sub.on("edge-detect/victim/status")[-1:] == [b"online"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_until(lambda: sub.on("edge-detect/victim/status")[-1:] == [b"offline"])
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()


def test_settings_and_password_never_shown(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    password = "hunter2-very-secret"
    sink = mqtt_sink_from_settings(
        {
            "host": "127.0.0.1",
            "port": broker.port,
            "username": "edge",
            "password": password,
            "device_name": "pi",
            "outbox": str(tmp_path / "s.sqlite"),
            "classes": ["dog_bark"],
        }
    )
    try:
        assert wait_until(sink._connected.is_set)  # the broker allows anonymous and any password
        assert password not in repr(sink) and password not in caplog.text
    finally:
        sink.close()
    for bad, message in [
        ({"port": 1883}, "host is required"),
        ({"host": "h", "port": "1883"}, r"port must be a whole number between 1 and 65535"),
        ({"host": "h", "publish_timeout_s": float("inf")}, "publish_timeout_s must be a finite"),
        ({"host": "h", "tls": "yes"}, "tls must be true or false"),
        ({"host": "h", "passwd": "x"}, "unknown key"),
        ({"host": "h", "password": password, "password_env": "X"}, "only one of"),
        ({"host": "h", "password": 1234}, "value not shown"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            mqtt_sink_from_settings({"outbox": str(tmp_path / "x.sqlite"), **bad})
        assert password not in str(info.value)


def test_a_broker_that_refuses_is_said_loudly_and_recovered_from(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 item 10: a broker refusing connections gave no log line (even with --debug), no
    line in status, while messages queued. Now: a warning naming the broker and the error, a
    health event, the metrics; and the queue is published when the broker comes."""
    from edge_detect.metrics import DetectorMetrics, MetricsSink
    from edge_detect.status_cli import format_status

    broker = Broker(tmp_path)
    broker.stop()  # its port refuses connections
    reports: list[tuple[str, str]] = []
    sink = MqttSink("127.0.0.1", broker.port, outbox=tmp_path / "m.sqlite", device_name="pi")
    sink.bind_health(lambda event, detail: reports.append((event, detail)))
    metrics = DetectorMetrics()
    MetricsSink(metrics).watch([sink])
    alerts = [make_alert(i) for i in range(3)]
    try:
        for alert in alerts:
            sink.emit(alert)
        assert wait_until(lambda: reports)
        status = format_status(metrics.samples(), "http://x")
        broker.start()
        sub = Subscriber(broker.port)
        assert wait_until(sub.client.is_connected)
        assert sink.flush(30)
        topic = "edge-detect/pi/event/dog_bark"
        assert wait_until(lambda: len(sub.on(topic)) == 3)
        sub.close()
    finally:
        sink.close()
        broker.stop()
    assert reports[0][0] == "mqtt_disconnected"
    assert f"127.0.0.1:{broker.port}" in reports[0][1] and "Connection refused" in reports[0][1]
    assert reports[-1][0] == "mqtt_connected"
    assert f"MQTT broker 127.0.0.1:{broker.port}: ConnectionRefusedError" in caplog.text
    assert "mqtt        DISCONNECTED, 0 published, 3 waiting" in status
