"""Signed webhooks (Standard Webhooks) delivered from a durable outbox, off the audio path.

Request
    ``POST`` to the endpoint's URL with the message's JSON as the body (``Alert.to_json()`` or
    ``HealthEvent.to_json()``: sorted keys, ``"type"`` is ``"alert"`` or ``"health"``, ``"v"`` the
    schema version; see :mod:`edge_detect.alerts`) and the headers

    - ``webhook-id``: the message id, identical on every retry, so receivers de-duplicate;
    - ``webhook-timestamp``: the attempt's Unix time in seconds;
    - ``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed
      with the base64-decoded part of the ``whsec_`` secret (absent when no secret is set).

    One request has ``timeout_s`` in all (connect, send, answer): an endpoint that dribbles
    its answer is cut off and retried (:mod:`edge_detect.webhook_http`).

Responses
    ``2xx`` delivered (the body is ignored). ``410 Gone`` disables the endpoint: nothing more is
    sent to it, but its messages stay queued (and new ones are queued, within ``max_pending``)
    until it is enabled again, by a changed URL or ``edge-detect webhook enable NAME``; it is
    said loudly (an ``endpoint_disabled`` health event, the metrics, ``edge-detect status``).
    ``429``, ``408`` and ``5xx`` retry later, honouring ``Retry-After``. Other statuses (``3xx``
    are not followed, ``4xx``) dead-letter the message with the status and the start of the
    answer. Timeouts, refused or reset connections and answers that are not HTTP retry later.

Retries
    Jittered exponential backoff (:class:`Backoff`), by default 5 s doubling to at most an hour
    and given up after three days of nominal waiting; each endpoint delivers strictly in order
    (the oldest message blocks the ones behind it), from its own supervised thread (restarted
    with a ``thread_restarted`` health event should it ever fail).

Storage faults (a corrupt outbox, a full disk) are handled by :class:`~edge_detect.outbox.Outbox`
and reported as health events; they never stop detection. Secrets never appear in logs, reprs
or error messages; URLs are logged without user info or query string (where tokens hide). TLS
certificates are verified (``ssl.create_default_context``).
"""

from __future__ import annotations

import functools
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.errors import ConfigError
from edge_detect.outbox import DEFAULT_MAX_PENDING, Outbox, Record
from edge_detect.sinks import Figure, Output, Sink
from edge_detect.strict import check_integer, check_number, check_path
from edge_detect.webhook_endpoint import (
    WebhookEndpoint,
    webhook_endpoint_from_settings,
)
from edge_detect.webhook_http import Outcome, post

__all__ = [
    "Clock",
    "EndpointStats",
    "ScaledClock",
    "SystemClock",
    "WebhookSink",
    "default_outbox_path",
    "webhook_sink_from_settings",
]

log = logging.getLogger(__name__)

_IDLE_POLL_S = 60.0
"""How long an idle delivery thread sleeps when nothing wakes it (a safety net only)."""
_BUSY_POLL_S = 2.0
"""How often a delivery thread looks again while its outbox keeps messages in memory (a full
disk) or its endpoint is disabled (``edge-detect webhook enable`` works from another process)."""
DEFAULT_FLUSH_ON_CLOSE_S = 5.0
"""How long a configured sink waits at exit for its queue to drain while deliveries progress."""


# -- time ------------------------------------------------------------------------------------


class Clock(Protocol):
    """Time for retry scheduling: ``now()`` in seconds and an interruptible wait."""

    def now(self) -> float:
        """The clock's time, seconds."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` (clock seconds) pass; True if set."""
        ...


class SystemClock:
    """Wall-clock time: retry times persist across restarts of the process."""

    def now(self) -> float:
        """``time.time()``."""
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass; True if set."""
        return event.wait(max(0.0, seconds))


class ScaledClock:
    """A clock that runs ``speed`` times faster than wall time (benchmarks and tests).

    One simulated hour at ``speed=600`` takes six seconds, with the production backoff.
    """

    def __init__(self, speed: float) -> None:
        if speed <= 0:
            raise ConfigError(f"clock speed must be > 0; got {speed}")
        self.speed = speed
        self._origin = time.time()

    def now(self) -> float:
        """The simulated time: wall time since creation, ``speed`` times faster."""
        return self._origin + (time.time() - self._origin) * self.speed

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` of simulated time (``seconds / speed`` real ones)."""
        return event.wait(max(0.0, seconds) / self.speed)


# -- delivery --------------------------------------------------------------------------------


@dataclass
class EndpointStats:
    """Counters of one endpoint since the sink started."""

    attempts: int = 0
    delivered: int = 0
    retries: int = 0
    dead: int = 0
    disabled: str | None = None
    """Why the endpoint is disabled (None: enabled)."""


class WebhookSink(Output):
    """A :class:`~edge_detect.sinks.Sink` that posts signed webhooks to one or more endpoints.

    ``emit`` commits the message to the outbox for every endpoint whose filter accepts it and
    returns (one fsynced SQLite transaction); one supervised thread per endpoint delivers in
    order.

    Parameters
    ----------
    endpoints
        The receivers; their names must be unique.
    outbox
        An :class:`~edge_detect.outbox.Outbox` or the path of its file. What is pending there from
        an earlier process is delivered too.
    clock
        Scheduling clock (default wall time); :class:`ScaledClock` compresses time in benchmarks.
    rng
        Source of jitter (seed it for reproducible schedules).
    max_pending
        Bound of the outbox when this sink opens it from a path.
    flush_on_close_s
        At :meth:`close`, wait up to this long for the queue to drain, as long as deliveries
        progress (a file run ends right after its last alert); 0: do not wait.
    """

    def __init__(
        self,
        endpoints: Sequence[WebhookEndpoint],
        outbox: Outbox | str | Path,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
        user_agent: str = "edge-detect",
        flush_on_close_s: float = 0.0,
    ) -> None:
        super().__init__()
        names = [ep.name for ep in endpoints]
        if not endpoints or len(set(names)) != len(names):
            raise ConfigError(
                f"a webhook sink needs at least one endpoint, each with a unique name; got {names}"
            )
        self._endpoints = list(endpoints)
        self._owns_outbox = not isinstance(outbox, Outbox)
        self.outbox = (
            outbox if isinstance(outbox, Outbox) else Outbox(outbox, max_pending=max_pending)
        )
        self.outbox.on_storage = self.health
        self.outbox.on_overflow = lambda detail: self.health("overflow", detail)
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._user_agent = user_agent
        self.flush_on_close_s = flush_on_close_s
        self._stop = threading.Event()
        self._wake = {ep.name: threading.Event() for ep in endpoints}
        self.stats = {ep.name: EndpointStats() for ep in endpoints}
        self.failed_puts = 0
        """Messages that could not be queued at all (bigger than the outbox takes)."""
        self._ssl = {
            ep.name: ssl.create_default_context(cafile=ep.ca_file)
            for ep in endpoints
            if ep.url.startswith("https:")
        }
        for ep in endpoints:
            reason = self.outbox.register_endpoint(ep.name, ep.target_digest)
            if reason is not None:
                self._set_disabled(ep, reason)
            if ep.secret is None:
                log.warning("webhook %s has no secret: its requests are not signed", ep.name)
        for ep in endpoints:
            work = functools.partial(self._deliver_loop, ep)
            self.supervise(f"webhook {ep.name}", work, self._stop)

    # -- the audio side ---------------------------------------------------------------------

    def emit(self, message: Alert | HealthEvent) -> None:
        """Commit the message for each accepting endpoint and wake their delivery threads.

        A disabled endpoint's messages are queued too (within ``max_pending``): enabling it
        again delivers them.
        """
        targets = [ep.name for ep in self._endpoints if ep.accepts(message)]
        if not targets:
            return
        body = message.to_json().encode("utf-8")
        try:
            self.outbox.put(targets, message.id, body, now=self._clock.now())
        except ValueError as exc:
            # Raising would stop detection; the loss is counted and logged loudly instead.
            self.failed_puts += 1
            log.error("could not queue message %s for webhooks: %s", message.id, exc)
            return
        for name in targets:
            self._wake[name].set()

    # -- the delivery side ------------------------------------------------------------------

    def _set_disabled(self, ep: WebhookEndpoint, reason: str | None) -> None:
        """Note (and say) that an endpoint was disabled or enabled again."""
        stats = self.stats[ep.name]
        if reason == stats.disabled:
            return
        stats.disabled = reason
        if reason is not None:
            log.error(
                "webhook %s is disabled (%s): its messages stay queued; enable it with "
                "'edge-detect webhook enable %s' or by changing its URL",
                ep.name,
                reason,
                ep.name,
            )
            self.health(
                "endpoint_disabled",
                f"webhook {ep.name}: {reason}; messages stay queued until it is enabled "
                f"('edge-detect webhook enable {ep.name}' or a new URL)",
            )
        else:
            log.warning("webhook %s is enabled again", ep.name)
            self.health("endpoint_enabled", f"webhook {ep.name}: delivering its queue again")

    def _deliver_loop(self, ep: WebhookEndpoint) -> None:
        wake = self._wake[ep.name]
        while not self._stop.is_set():
            wake.clear()
            if self.stats[ep.name].disabled is not None:
                self._set_disabled(ep, self.outbox.disabled_reason(ep.name))
                if self.stats[ep.name].disabled is not None:
                    self._clock.wait(self._stop, _BUSY_POLL_S * self._scale())
                    continue
            record = self.outbox.head(ep.name)
            if record is None:
                idle = _BUSY_POLL_S if self.outbox.in_memory else _IDLE_POLL_S
                self._clock.wait(wake, idle * self._scale())
                continue
            # Clamped so that a wall clock stepped backwards (a Pi without RTC) cannot stall us.
            delay = min(record.next_attempt_at - self._clock.now(), ep.backoff.max_s)
            if delay > 0:
                self._clock.wait(self._stop, delay)
                continue
            self._settle(ep, record, self._attempt(ep, record))

    def _scale(self) -> float:
        """Clock seconds per real second (polls are meant in real seconds)."""
        return float(getattr(self._clock, "speed", 1.0))

    def _attempt(self, ep: WebhookEndpoint, record: Record) -> Outcome:
        self.stats[ep.name].attempts += 1
        return post(
            ep,
            record.message_id,
            record.body,
            ssl_context=self._ssl.get(ep.name),
            user_agent=self._user_agent,
        )

    def _settle(self, ep: WebhookEndpoint, record: Record, outcome: Outcome) -> None:
        stats = self.stats[ep.name]
        now = self._clock.now()
        if outcome.kind == "delivered":
            self.outbox.mark_delivered(record.seq)
            stats.delivered += 1
            log.debug("webhook %s: delivered %s", ep.name, record.message_id)
        elif outcome.kind == "gone":
            reason = f"answered {outcome.detail}"
            self.outbox.disable_endpoint(ep.name, ep.target_digest, reason, now=now)
            self._set_disabled(ep, reason)
        elif outcome.kind == "dead":
            self.outbox.dead_letter(record.seq, outcome.detail, now=now)
            stats.dead += 1
            log.error(
                "webhook %s rejected %s (%s): dead-lettered",
                ep.name,
                record.message_id,
                outcome.detail,
            )
        else:
            failures = record.attempts + 1
            if failures >= ep.backoff.max_attempts():
                reason = f"gave up after {failures} attempts: {outcome.detail}"
                self.outbox.dead_letter(record.seq, reason, now=now)
                stats.dead += 1
                log.error("webhook %s: %s for %s", ep.name, reason, record.message_id)
                return
            delay = ep.backoff.delay_s(failures, self._rng)
            if outcome.retry_after_s is not None:
                delay = max(delay, min(outcome.retry_after_s, ep.backoff.max_s))
            self.outbox.schedule_retry(
                record.seq, next_attempt_at=now + delay, error=outcome.detail
            )
            stats.retries += 1
            log.warning(
                "webhook %s: attempt %d for %s failed (%s); retrying in %.3g s",
                ep.name,
                failures,
                record.message_id,
                outcome.detail,
                delay,
            )

    # -- control ----------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[WebhookEndpoint]:
        """The configured endpoints."""
        return list(self._endpoints)

    def disabled(self) -> dict[str, str]:
        """Disabled endpoints and why."""
        return {name: s.disabled for name, s in self.stats.items() if s.disabled is not None}

    def collect(self) -> Iterable[Figure]:
        """Outbox depth, per-endpoint delivery counters and state, and the delivery threads."""
        yield from super().collect()
        yield "edge_detect_outbox_depth", {}, float(self.outbox.pending_count())
        yield (
            "edge_detect_outbox_memory_messages",
            {"output": "webhook"},
            float(self.outbox.in_memory),
        )
        for endpoint, stats in dict(self.stats).items():
            labels = {"endpoint": endpoint}
            yield "edge_detect_deliveries_total", labels, float(stats.delivered)
            yield "edge_detect_delivery_failures_total", labels, float(stats.retries + stats.dead)
            yield "edge_detect_dead_letters_total", labels, float(stats.dead)
            yield "edge_detect_webhook_endpoint_up", labels, 0.0 if stats.disabled else 1.0

    def flush(self, timeout_s: float) -> bool:
        """Wait (real seconds) until no enabled endpoint holds pending messages; True if so."""
        deadline = time.monotonic() + timeout_s
        while True:
            busy = [n for n, s in self.stats.items() if s.disabled is None]
            if all(self.outbox.pending_count(n) == 0 for n in busy):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def _drain(self) -> None:
        """Wait up to ``flush_on_close_s`` while deliveries progress (stop when they stall)."""
        deadline = time.monotonic() + self.flush_on_close_s
        delivered = -1
        while time.monotonic() < deadline:
            if self.flush(min(1.0, max(0.0, deadline - time.monotonic()))):
                return
            now_delivered = sum(s.delivered for s in self.stats.values())
            if now_delivered == delivered:
                return  # no progress in a second: the endpoint is down, do not hold the exit
            delivered = now_delivered

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the delivery threads; pending messages stay in the outbox for the next start
        (a warning says how many, and where).

        Waits at most ``timeout_s`` (default: the longest request timeout plus one second) for
        a request in flight.
        """
        if self._stop.is_set():
            return
        if self.flush_on_close_s > 0:
            self._drain()
        self._stop.set()
        for event in self._wake.values():
            event.set()
        limit = (
            timeout_s if timeout_s is not None else max(e.timeout_s for e in self._endpoints) + 1
        )
        deadline = time.monotonic() + limit
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        left = {ep.name: self.outbox.pending_count(ep.name) for ep in self._endpoints}
        if any(left.values()):
            log.warning(
                "webhook: %s still queued in %s; they are delivered when edge-detect runs "
                "again with this outbox",
                ", ".join(f"{n} message(s) for {name}" for name, n in left.items() if n),
                self.outbox.path,
            )
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            # Closing the database under a live request would fail it; the process is ending.
            log.warning("webhook delivery still in flight at close: %s", stuck)
        elif self._owns_outbox:
            self.outbox.close()

    def __repr__(self) -> str:
        return f"WebhookSink(endpoints={[ep.name for ep in self._endpoints]!r})"


def default_outbox_path() -> Path:
    """``$STATE_DIRECTORY/outbox.sqlite`` under systemd (``StateDirectory=``), else
    ``~/.local/state/edge-detect/outbox.sqlite``; ``~/.local/state`` (the XDG state folder) is
    created if missing, as a configured outbox's parent folders never are."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "outbox.sqlite"
    xdg_state = Path.home() / ".local" / "state"
    try:
        xdg_state.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # the outbox then names the folder it cannot create
    return xdg_state / "edge-detect" / "outbox.sqlite"


_SINK_KEYS = ("outbox", "max_pending", "endpoints", "throttle", "flush_on_exit_s")


def webhook_sink_from_settings(settings: Mapping[str, Any], config: object = None) -> Sink:
    """Build the webhook sink from the ``[sinks.webhook]`` TOML table (a ``SINK_BUILDERS`` entry).

    One endpoint can be written inline; several go in ``[[sinks.webhook.endpoints]]``::

        [sinks.webhook]
        outbox = "/var/lib/edge-detect/outbox.sqlite"  # default: default_outbox_path()
        max_pending = 10000                             # outbox bound (oldest evicted, loudly)
        flush_on_exit_s = 5                             # at exit, wait while deliveries progress
        [sinks.webhook.throttle]                        # optional, see edge_detect.throttle
        cooldown_s = 60
        [[sinks.webhook.endpoints]]
        url = "https://ha.local:8123/api/webhook/edge"
        secret_file = "/etc/edge-detect/webhook.secret"
        classes = ["baby_cry"]

    ``config`` (the runtime config) is accepted for the builder signature and not needed.
    """
    where = "[sinks.webhook]"
    inline = {k: v for k, v in settings.items() if k not in _SINK_KEYS}
    if "endpoints" in settings and inline:
        raise ConfigError(
            f"{where}: give the endpoint keys {sorted(inline)} inside [[sinks.webhook.endpoints]] "
            "when that list is used"
        )
    tables = settings.get("endpoints", [inline] if inline else [])
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(
            f"{where}: expected url = ... (one endpoint) or [[sinks.webhook.endpoints]] tables; "
            f"got {sorted(settings)}"
        )
    endpoints = [
        webhook_endpoint_from_settings(t, where=f"[[sinks.webhook.endpoints]] #{i + 1}")
        for i, t in enumerate(tables)
    ]
    path = settings.get("outbox")
    if path is not None:
        check_path(path, "outbox", where=where)
    max_pending = check_integer(
        settings.get("max_pending", DEFAULT_MAX_PENDING),
        "max_pending",
        low=1,
        high=10_000_000,
        where=where,
    )
    flush_s = check_number(
        settings.get("flush_on_exit_s", DEFAULT_FLUSH_ON_CLOSE_S),
        "flush_on_exit_s",
        low=0.0,
        high=600.0,
        where=where,
    )
    throttle = settings.get("throttle")
    if throttle is not None and not isinstance(throttle, dict):
        raise ConfigError(f"{where}: throttle must be a table; got {throttle!r}")
    policy = None
    if throttle is not None:
        from edge_detect.throttle import throttle_from_settings

        policy = throttle_from_settings(throttle, where="[sinks.webhook.throttle]")
    outbox = default_outbox_path() if path is None else Path(path).expanduser()
    sink = WebhookSink(endpoints, outbox, max_pending=max_pending, flush_on_close_s=flush_s)
    if policy is None:
        return sink
    from edge_detect.throttle import ThrottledSink

    return ThrottledSink(sink, policy)
