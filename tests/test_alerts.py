"""The alert and health-event JSON lines are a contract with every receiver: their exact bytes
are pinned here, written out by hand (not produced by the code under test). A change to any of
them is a schema change: bump ``ALERT_SCHEMA_VERSION`` and say so in CHANGELOG.md."""

from __future__ import annotations

import io
import json

from conftest import make_alert

from edge_detect.alerts import ALERT_SCHEMA_VERSION, Alert, HealthEvent
from edge_detect.sinks import JsonLinesSink

ALERT = Alert(
    id="0123456789abcdef0123456789abcdef",
    seq=7,
    label="dog_bark",
    score=0.8123,
    start="2026-01-31T12:00:00.250+00:00",
    end="2026-01-31T12:00:00.900+00:00",
    duration_s=0.65,
    device="kitchen-pi",
    model_id="edge-detect-default-31118a106e9b",
    extra={"offset_s": 3.22},
)
ALERT_BYTES = (
    b'{"class":"dog_bark","device":"kitchen-pi","duration_s":0.65,'
    b'"end":"2026-01-31T12:00:00.900+00:00","id":"0123456789abcdef0123456789abcdef",'
    b'"model_id":"edge-detect-default-31118a106e9b","offset_s":3.22,"score":0.8123,"seq":7,'
    b'"start":"2026-01-31T12:00:00.250+00:00","type":"alert","v":1}'
)
HEALTH = HealthEvent(
    id="fedcba9876543210fedcba9876543210",
    seq=2,
    event="microphone_lost",
    time="2026-01-31T12:00:05.000+00:00",
    device="kitchen-pi",
    detail="device 'USB mic' gone",
)
HEALTH_BYTES = (
    b'{"detail":"device \'USB mic\' gone","device":"kitchen-pi","event":"microphone_lost",'
    b'"id":"fedcba9876543210fedcba9876543210","seq":2,"time":"2026-01-31T12:00:05.000+00:00",'
    b'"type":"health","v":1}'
)


def test_schema_version_is_the_one_pinned_here() -> None:
    assert ALERT_SCHEMA_VERSION == 1  # the bytes below are version 1's


def test_alert_json_bytes() -> None:
    assert ALERT.to_json().encode("utf-8") == ALERT_BYTES


def test_alert_with_a_clip_and_non_ascii_device() -> None:
    alert = make_alert(
        1, "baby_cry", score=0.5, device="Küche", alert_id="a" * 32, clip="clips/x.wav"
    )
    assert alert.to_json().encode("utf-8") == (
        b'{"class":"baby_cry","clip":"clips/x.wav","device":"K\xc3\xbcche","duration_s":1.0,'
        b'"end":"2026-01-01T00:01:01+00:00","id":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",'
        b'"model_id":"m","score":0.5,"seq":1,"start":"2026-01-01T00:01:00+00:00",'
        b'"type":"alert","v":1}'
    )


def test_health_event_json_bytes() -> None:
    assert HEALTH.to_json().encode("utf-8") == HEALTH_BYTES


def test_the_stdout_sink_writes_exactly_one_line_per_message() -> None:
    out = io.StringIO()
    sink = JsonLinesSink(out, health=True)
    sink.emit(ALERT)
    sink.emit(HEALTH)
    assert out.getvalue().encode("utf-8") == ALERT_BYTES + b"\n" + HEALTH_BYTES + b"\n"


def test_alert_round_trips_through_its_json() -> None:
    assert Alert.from_dict(json.loads(ALERT_BYTES)) == ALERT
