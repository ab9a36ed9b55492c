"""Against notification floods: per-class cooldown, an optional rate cap, and summaries.

A dog that barks for ten minutes should produce one notification and then one line such as
"12 more dog_bark events in the last 10 minutes", not 13 notifications and not silence.

Rules, per class (health events always pass):

- after a message of a class is sent, further alerts of that class within ``cooldown_s`` are held
  back and counted;
- with ``max_alerts`` set, at most that many messages of a class are sent per ``window_s``;
- once the class may send again, the held-back alerts go out as *one* summary alert: an
  :class:`~edge_detect.alerts.Alert` of that class whose ``extra`` carries ``summary`` (the
  sentence), ``suppressed`` (how many) and ``period_s`` (the span it covers). Its score is the
  highest held back, its start the first one's, its end the last one's. A new alert arriving when
  the class may send again first flushes the summary, so order is kept.

The detector's refractory time (:mod:`edge_detect.detect`) merges one event's frames; this module
works one level up, on whole events, in notification terms.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.errors import ConfigError
from edge_detect.sinks import Figure, Output, Sink
from edge_detect.strict import check_integer, check_number
from edge_detect.supervise import HealthReporter

__all__ = ["ThrottlePolicy", "ThrottledSink", "describe_duration", "throttle_from_settings"]

log = logging.getLogger(__name__)

_MINUTE_S = 60.0
_HOUR_S = 3600.0
_WEEK_S = 7 * 86_400.0


def describe_duration(seconds: float) -> str:
    """'45 seconds', '10 minutes', '2.5 hours': the unit a person would say."""
    if seconds < 1.5 * _MINUTE_S:
        value, unit = round(seconds), "second"
    elif seconds < 1.5 * _HOUR_S:
        value, unit = round(seconds / _MINUTE_S), "minute"
    else:
        hours = round(seconds / _HOUR_S, 1)
        return f"{hours:g} hour{'' if hours == 1 else 's'}"
    return f"{value} {unit}{'' if value == 1 else 's'}"


def _seconds_between(start: str, end: str) -> float | None:
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
        return max(0.0, (b - a).total_seconds())
    except (ValueError, TypeError):
        return None


@dataclass
class _Held:
    """Alerts of one class held back since ``since`` (bounded: only what a summary needs)."""

    since: float
    count: int = 0
    first: Alert | None = None
    last: Alert | None = None
    max_score: float = 0.0

    def add(self, alert: Alert) -> None:
        self.count += 1
        self.first = self.first or alert
        self.last = alert
        self.max_score = max(self.max_score, alert.score)


@dataclass
class _ClassState:
    sent: deque[float] = field(default_factory=deque)
    """Times of the messages sent within the rate window."""
    last_sent: float = -math.inf
    held: _Held | None = None


@dataclass
class ThrottlePolicy:
    """The rules; pure logic on explicit times, so tables of inputs test it.

    Times are seconds on any monotonic clock.
    """

    cooldown_s: float = 60.0
    """Quiet time per class after a message is sent, seconds (0: no cooldown)."""
    class_cooldown_s: Mapping[str, float] = field(default_factory=dict)
    """Per-class overrides of ``cooldown_s``."""
    max_alerts: int | None = None
    """At most this many messages of one class per ``window_s`` (None: no cap)."""
    window_s: float = 600.0
    """Window of the rate cap, seconds."""

    def __post_init__(self) -> None:
        # every number finite and bounded: an infinite cooldown would silence a class for good
        self.cooldown_s = check_number(self.cooldown_s, "cooldown_s", low=0.0, high=_WEEK_S)
        self.class_cooldown_s = {
            label: check_number(value, f"class_cooldown_s.{label}", low=0.0, high=_WEEK_S)
            for label, value in self.class_cooldown_s.items()
        }
        if self.max_alerts is not None:
            self.max_alerts = check_integer(self.max_alerts, "max_alerts", low=1, high=1_000_000)
        self.window_s = check_number(self.window_s, "window_s", low=0.001, high=_WEEK_S)
        self._state: dict[str, _ClassState] = {}

    def _cooldown(self, label: str) -> float:
        return float(self.class_cooldown_s.get(label, self.cooldown_s))

    def _next_allowed(self, label: str, state: _ClassState, now: float) -> float:
        while state.sent and state.sent[0] <= now - self.window_s:
            state.sent.popleft()
        at = state.last_sent + self._cooldown(label)
        if self.max_alerts is not None and len(state.sent) >= self.max_alerts:
            at = max(at, state.sent[len(state.sent) - self.max_alerts] + self.window_s)
        return at

    def _record_sent(self, state: _ClassState, now: float) -> None:
        state.sent.append(now)
        state.last_sent = now

    def _summary(self, label: str, held: _Held, now: float) -> Alert:
        assert held.first is not None and held.last is not None
        period_s = now - held.since
        noun = "event" if held.count == 1 else "events"
        text = f"{held.count} more {label} {noun} in the last {describe_duration(period_s)}"
        duration = _seconds_between(held.first.start, held.last.end)
        last = held.last
        return Alert(
            id=uuid.uuid4().hex,
            seq=last.seq,
            label=label,
            score=held.max_score,
            start=held.first.start,
            end=last.end,
            duration_s=last.duration_s if duration is None else duration,
            device=last.device,
            model_id=last.model_id,
            extra={"summary": text, "suppressed": held.count, "period_s": round(period_s, 3)},
        )

    def offer(self, alert: Alert, now: float) -> list[Alert]:
        """What to send now for this alert: [], [alert], or [summary, alert]."""
        state = self._state.setdefault(alert.label, _ClassState())
        if now < self._next_allowed(alert.label, state, now):
            if state.held is None:
                state.held = _Held(since=state.last_sent)
            state.held.add(alert)
            return []
        out = []
        if state.held is not None:
            out.append(self._summary(alert.label, state.held, now))
            state.held = None
            self._record_sent(state, now)
        out.append(alert)
        self._record_sent(state, now)
        return out

    def due(self, now: float) -> list[Alert]:
        """Summaries whose classes may send again at ``now``."""
        out = []
        for label, state in self._state.items():
            if state.held is not None and now >= self._next_allowed(label, state, now):
                out.append(self._summary(label, state.held, now))
                state.held = None
                self._record_sent(state, now)
        return out

    def next_due(self, now: float) -> float | None:
        """When the next summary becomes due (None: nothing held back)."""
        times = [
            self._next_allowed(label, state, now)
            for label, state in self._state.items()
            if state.held is not None
        ]
        return min(times) if times else None

    def drain(self, now: float) -> list[Alert]:
        """Every held-back summary now, whatever the rules (at shutdown: never silence)."""
        out = []
        for label, state in self._state.items():
            if state.held is not None:
                out.append(self._summary(label, state.held, now))
                state.held = None
        return out


class ThrottledSink(Output):
    """A :class:`~edge_detect.sinks.Sink` that applies a :class:`ThrottlePolicy` before another.

    A small supervised timer thread sends summaries when they fall due, even if no further alert
    arrives. What the inner output reports (an outbox's depth, its deliveries) and the health
    events it raises pass through: the wrapper hides nothing.
    """

    def __init__(
        self,
        inner: Sink,
        policy: ThrottlePolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.suppressed = 0
        """Alerts held back so far (each is counted in a summary)."""
        self._timer = self.supervise("throttle", self._summaries_loop, self._stop)

    def bind_health(self, report: HealthReporter) -> None:
        """This wrapper's and the inner output's health events go to ``report``."""
        super().bind_health(report)
        if isinstance(self.inner, Output):
            self.inner.bind_health(report)

    def collect(self) -> Iterable[Figure]:
        """The inner output's figures, this wrapper's thread, and the alerts held back."""
        yield from super().collect()
        yield "edge_detect_alerts_throttled_total", {}, float(self.suppressed)
        if isinstance(self.inner, Output):
            yield from self.inner.collect()

    def emit(self, message: Alert | HealthEvent) -> None:
        """Health events pass at once; alerts go through the policy (sent, or counted for a
        summary)."""
        if isinstance(message, HealthEvent):
            self.inner.emit(message)
            return
        with self._lock:
            out = self.policy.offer(message, self._clock())
            if not out:
                self.suppressed += 1
                log.debug("throttled %s alert %s", message.label, message.id)
            for item in out:
                self.inner.emit(item)
        self._wake.set()  # a new hold may make a summary due earlier than the timer thinks

    def _summaries_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking, so a hold made meanwhile wakes us again
            with self._lock:
                now = self._clock()
                for summary in self.policy.due(now):
                    self.inner.emit(summary)
                next_due = self.policy.next_due(now)
            self._wake.wait(None if next_due is None else max(0.0, next_due - self._clock()))

    def close(self) -> None:
        """Send what is held back as summaries, stop the timer and close the inner sink."""
        self._stop.set()
        self._wake.set()
        self._timer.join()
        with self._lock:
            for summary in self.policy.drain(self._clock()):
                self.inner.emit(summary)
        self.inner.close()


_THROTTLE_KEYS = ("cooldown_s", "class_cooldown_s", "max_alerts", "window_s")


def throttle_from_settings(
    settings: Mapping[str, Any], *, where: str = "[throttle]"
) -> ThrottlePolicy:
    """Build a policy from a TOML table, e.g. ``cooldown_s = 60``, ``max_alerts = 5``,
    ``window_s = 600``, ``class_cooldown_s = { dog_bark = 600 }``."""
    unknown = sorted(set(settings) - set(_THROTTLE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the keys are {list(_THROTTLE_KEYS)}")
    per_class = settings.get("class_cooldown_s", {})
    if not isinstance(per_class, Mapping):
        raise ConfigError(f"{where}: class_cooldown_s must be a table of class = seconds")
    try:
        return ThrottlePolicy(
            cooldown_s=settings.get("cooldown_s", 60.0),
            class_cooldown_s=dict(per_class),
            max_alerts=settings.get("max_alerts"),
            window_s=settings.get("window_s", 600.0),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
