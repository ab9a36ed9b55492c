"""Flood control: tables of alert times in, sent messages out; then the sink with real time."""

from __future__ import annotations

import io
import json
import time

import pytest
from conftest import make_alert

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.errors import ConfigError
from edge_detect.sinks import JsonLinesSink
from edge_detect.throttle import (
    ThrottledSink,
    ThrottlePolicy,
    describe_duration,
    throttle_from_settings,
)


def alert(seq: int, label: str = "dog_bark", score: float = 0.8) -> Alert:
    """Ids that say which alert got through (the tables below name them)."""
    return make_alert(seq, label, score=score, device="pi", alert_id=f"{label}-{seq}")


def run(policy: ThrottlePolicy, steps: list[tuple[float, str | None]]) -> list[str]:
    """Each step is (time, label to offer) or (time, None) for a timer tick.

    Returns what was sent: alert ids, or 'summary:<class>:<count>'.
    """
    sent: list[str] = []
    for seq, (now, label) in enumerate(steps):
        out = policy.due(now) if label is None else policy.offer(alert(seq, label), now)
        for message in out:
            extra = message.extra
            sent.append(f"summary:{message.label}:{extra['suppressed']}" if extra else message.id)
    return sent


@pytest.mark.parametrize(
    ("policy", "steps", "expected"),
    [
        # Cooldown 60 s: one alert, then one summary when the minute is over.
        (
            ThrottlePolicy(cooldown_s=60),
            [(0, "dog_bark"), (5, "dog_bark"), (30, "dog_bark"), (59, None), (60, None)],
            ["dog_bark-0", "summary:dog_bark:2"],
        ),
        # Classes are independent.
        (
            ThrottlePolicy(cooldown_s=60),
            [(0, "dog_bark"), (1, "baby_cry"), (2, "dog_bark"), (3, "baby_cry"), (61, None)],
            ["dog_bark-0", "baby_cry-1", "summary:dog_bark:1", "summary:baby_cry:1"],
        ),
        # A per-class override; the alert after the cooldown first flushes the summary.
        (
            ThrottlePolicy(cooldown_s=60, class_cooldown_s={"gunshot": 0}),
            [(0, "gunshot"), (1, "gunshot"), (0, "dog_bark"), (10, "dog_bark"), (70, "dog_bark")],
            ["gunshot-0", "gunshot-1", "dog_bark-2", "summary:dog_bark:1", "dog_bark-4"],
        ),
        # Rate cap without cooldown: 3 per 600 s, the rest summarised when the window reopens.
        (
            ThrottlePolicy(cooldown_s=0, max_alerts=3, window_s=600),
            [(t, "dog_bark") for t in range(6)] + [(599, None), (600, None), (601, "dog_bark")],
            ["dog_bark-0", "dog_bark-1", "dog_bark-2", "summary:dog_bark:3", "dog_bark-8"],
        ),
        # No rules: everything passes.
        (
            ThrottlePolicy(cooldown_s=0),
            [(0, "dog_bark"), (0, "dog_bark"), (0, None)],
            ["dog_bark-0", "dog_bark-1"],
        ),
    ],
)
def test_policy_table(policy: ThrottlePolicy, steps: list, expected: list[str]) -> None:
    assert run(policy, steps) == expected


def test_summary_content() -> None:
    policy = ThrottlePolicy(cooldown_s=600)
    policy.offer(alert(0), 0.0)
    for i in range(1, 13):
        assert policy.offer(alert(i, score=0.5 + i / 100), 40.0 * i) == []
    assert policy.next_due(500.0) == 600.0
    (summary,) = policy.due(600.0)
    assert summary.extra == {
        "summary": "12 more dog_bark events in the last 10 minutes",
        "suppressed": 12,
        "period_s": 600.0,
    }
    assert (summary.label, summary.score, summary.seq) == ("dog_bark", 0.62, 12)
    assert (summary.start, summary.end) == (alert(1).start, alert(12).end)
    assert summary.duration_s == 11 * 60 + 1
    assert Alert.from_dict(json.loads(summary.to_json())) == summary  # a valid alert on the wire
    assert policy.next_due(600.0) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1, "1 second"),
        (45, "45 seconds"),
        (600, "10 minutes"),
        (60, "60 seconds"),
        (9000, "2.5 hours"),
        (3600, "60 minutes"),
        (7200, "2 hours"),
    ],
)
def test_describe_duration(seconds: float, text: str) -> None:
    assert describe_duration(seconds) == text


def test_sink_sends_summary_on_its_own_then_drains_on_close() -> None:
    stream = io.StringIO()
    sink = ThrottledSink(JsonLinesSink(stream, health=True), ThrottlePolicy(cooldown_s=0.3))
    for i in range(5):
        sink.emit(alert(i))
    sink.emit(HealthEvent(id="h", seq=1, event="heartbeat", time="t", device="pi"))
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [m["id"] for m in lines] == ["dog_bark-0", "h"]  # health is never throttled
    deadline = time.monotonic() + 5
    while stream.getvalue().count("\n") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    summary = json.loads(stream.getvalue().splitlines()[2])
    assert summary["summary"].startswith("4 more dog_bark events in the last")
    sink.emit(alert(9))  # within the cooldown that the summary started
    sink.close()  # ... so it comes out as a summary at close, not lost
    last = json.loads(stream.getvalue().splitlines()[-1])
    assert (last["suppressed"], last["seq"]) == (1, 9)
    assert sink.suppressed == 5


def test_settings_errors() -> None:
    policy = throttle_from_settings(
        {"cooldown_s": 30, "max_alerts": 5, "window_s": 600, "class_cooldown_s": {"gunshot": 0}}
    )
    assert (policy.cooldown_s, policy.max_alerts, policy.class_cooldown_s) == (
        30,
        5,
        {"gunshot": 0},
    )
    for settings, message in [
        ({"cooldown": 30}, "unknown key"),
        ({"cooldown_s": -1}, r"\[throttle\]: cooldown_s must be a finite number between 0"),
        ({"max_alerts": 0}, "max_alerts must be a whole number between 1 and"),
        ({"max_alerts": 2.5}, "max_alerts must be a whole number"),
        ({"window_s": "10m"}, "window_s must be a finite number"),
        ({"class_cooldown_s": 5}, "must be a table"),
        # issue 15: an infinite cooldown would silence a class for good; nan slips past >= 0
        ({"cooldown_s": float("inf")}, "cooldown_s must be a finite number"),
        ({"class_cooldown_s": {"dog_bark": float("nan")}}, "class_cooldown_s.dog_bark must be"),
        ({"window_s": float("nan")}, "window_s must be a finite number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            throttle_from_settings(settings)
