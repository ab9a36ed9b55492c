"""Signed webhooks (Standard Webhooks) delivered from a durable outbox, off the audio path.

Request
    ``POST`` to the endpoint's URL with the message's JSON as the body (``Alert.to_json()`` or
    ``HealthEvent.to_json()``: sorted keys, ``"type"`` is ``"alert"`` or ``"health"``, ``"v"`` the
    schema version; see :mod:`edge_detect.alerts`) and the headers

    - ``webhook-id``: the message id, identical on every retry, so receivers de-duplicate;
    - ``webhook-timestamp``: the attempt's Unix time in seconds;
    - ``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed
      with the base64-decoded part of the ``whsec_`` secret (absent when no secret is set).

Responses
    ``2xx`` delivered (the body is ignored). ``410 Gone`` disables the endpoint: what it holds
    goes to the dead letters and nothing more is sent until its URL changes. ``429``, ``408`` and
    ``5xx`` retry later, honouring ``Retry-After``. Other statuses (``3xx`` are not followed,
    ``4xx``) dead-letter the message with the status and the start of the answer. Timeouts,
    refused or reset connections and answers that are not HTTP retry later.

Retries
    Jittered exponential backoff (:class:`Backoff`), by default 5 s doubling to at most an hour
    and given up after three days of nominal waiting; each endpoint delivers strictly in order
    (the oldest message blocks the ones behind it), from its own thread.

Secrets never appear in logs, reprs or error messages; URLs are logged without user info or
query string (where tokens hide). TLS certificates are verified (``ssl.create_default_context``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import logging
import math
import os
import random
import sqlite3
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.errors import ConfigError
from edge_detect.outbox import DEFAULT_MAX_PENDING, Outbox, Record
from edge_detect.sinks import Sink

__all__ = [
    "Backoff",
    "Clock",
    "EndpointStats",
    "ScaledClock",
    "Secret",
    "SystemClock",
    "WebhookEndpoint",
    "WebhookSink",
    "default_outbox_path",
    "redact_url",
    "webhook_endpoint_from_settings",
    "webhook_sink_from_settings",
]

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SECRET_MIN_BYTES = 24
SECRET_MAX_BYTES = 64
"""Standard Webhooks secrets are 24 to 64 random bytes."""
MAX_RESPONSE_BYTES = 4096
"""Most of a response body we read (only its start goes into a dead-letter reason)."""
REASON_CHARS = 200
_IDLE_POLL_S = 60.0
"""How long an idle delivery thread sleeps when nothing wakes it (a safety net only)."""


# -- time ------------------------------------------------------------------------------------


class Clock(Protocol):
    """Time for retry scheduling: ``now()`` in seconds and an interruptible wait."""

    def now(self) -> float: ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` (clock seconds) pass; True if set."""
        ...


class SystemClock:
    """Wall-clock time: retry times persist across restarts of the process."""

    def now(self) -> float:
        return time.time()

    def wait(self, event: threading.Event, seconds: float) -> bool:
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
        return self._origin + (time.time() - self._origin) * self.speed

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds) / self.speed)


# -- settings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """When to retry: delay after the n-th failure = min(initial * factor**(n-1), max), jittered."""

    initial_s: float = 5.0
    """Delay after the first failed attempt, seconds."""
    factor: float = 2.0
    """Growth of the delay per failed attempt."""
    max_s: float = 3600.0
    """Longest delay between two attempts, seconds (also caps ``Retry-After``)."""
    give_up_after_s: float = 3 * 86400.0
    """Nominal (un-jittered) total waiting after which a message is dead-lettered, seconds."""
    jitter: float = 0.5
    """Each delay is drawn uniformly from [(1 - jitter) * d, d], so many devices do not retry in
    lock-step after an outage."""

    def __post_init__(self) -> None:
        if not (
            self.initial_s > 0
            and self.factor >= 1
            and self.max_s >= self.initial_s
            and self.give_up_after_s >= 0
            and 0 <= self.jitter <= 1
        ):
            raise ConfigError(
                "backoff needs initial_s > 0, factor >= 1, max_s >= initial_s, "
                f"give_up_after_s >= 0 and 0 <= jitter <= 1; got {self}"
            )

    def nominal_delay_s(self, failures: int) -> float:
        """Un-jittered delay after ``failures`` failed attempts (>= 1), seconds."""
        exponent = min(failures - 1, 1000)
        try:
            return min(self.initial_s * self.factor**exponent, self.max_s)
        except OverflowError:
            return self.max_s

    def delay_s(self, failures: int, rng: random.Random) -> float:
        """Jittered delay after ``failures`` failed attempts, seconds."""
        return self.nominal_delay_s(failures) * (1.0 - self.jitter * rng.random())

    def max_attempts(self) -> int:
        """Attempts made before giving up (the first one included)."""
        waited, attempts = 0.0, 1
        while waited < self.give_up_after_s:
            waited += self.nominal_delay_s(attempts)
            attempts += 1
        return attempts


class Secret:
    """A Standard Webhooks signing secret (``whsec_`` + base64 of 24 to 64 bytes).

    Its repr and str never show the key, so it can sit in dataclasses that get logged.
    """

    __slots__ = ("_key",)

    def __init__(self, value: str) -> None:
        problem = ""
        key = b""
        if not isinstance(value, str) or not value.startswith(SECRET_PREFIX):
            problem = f"it does not start with {SECRET_PREFIX!r}"
        else:
            try:
                key = base64.b64decode(value[len(SECRET_PREFIX) :], validate=True)
            except (binascii.Error, ValueError):
                problem = "the part after 'whsec_' is not valid base64"
            else:
                if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
                    problem = f"it decodes to {len(key)} bytes"
        if problem:
            # Never echo the value: a near-miss secret is still a secret.
            raise ConfigError(
                f"a webhook secret must be 'whsec_' followed by base64 of {SECRET_MIN_BYTES} to "
                f"{SECRET_MAX_BYTES} random bytes, but {problem} (value not shown). Generate one "
                "with: python -c \"import base64,os; print('whsec_' + "
                'base64.b64encode(os.urandom(32)).decode())"'
            )
        self._key = key

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """The ``webhook-signature`` header value for one attempt."""
        signed = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, signed, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._key).digest())

    def __repr__(self) -> str:
        return "Secret('whsec_…')"

    __str__ = __repr__


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path``: the URL without user info, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@dataclass(frozen=True)
class WebhookEndpoint:
    """One receiver of webhooks and what it wants."""

    url: str = field(repr=False)
    """``http://`` or ``https://`` URL (it may carry a token; it is never logged whole)."""
    secret: Secret | None = field(default=None, repr=False)
    """Signing secret; None sends no ``webhook-signature`` (a warning is logged)."""
    name: str = ""
    """Short unique name, used in logs and as the outbox queue key; default: the redacted URL."""
    classes: frozenset[str] | None = None
    """Alert classes to send (None: all). Health events follow ``health``."""
    health: bool = True
    """Whether health events (started, stopping, microphone lost, ...) go to this endpoint."""
    timeout_s: float = 10.0
    """Socket timeout for connecting and for each read, seconds."""
    backoff: Backoff = field(default_factory=Backoff)
    ca_file: str | None = None
    """PEM bundle to verify the server with instead of the system's (a home server's own CA)."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url) if isinstance(self.url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                "a webhook URL must look like https://host[:port]/path; got "
                f"{redact_url(self.url) if isinstance(self.url, str) else self.url!r}"
            )
        if any(ch.isspace() or not ch.isprintable() for ch in self.url):
            # http.client would refuse it later with the whole URL (and its token) in the message.
            raise ConfigError(
                f"webhook URL {redact_url(self.url)!r} contains spaces or control characters; "
                "percent-encode them"
            )
        try:
            parts.port  # noqa: B018 -- raises on a bad port
        except ValueError:
            raise ConfigError(f"webhook URL {redact_url(self.url)!r} has a bad port") from None
        if self.secret is not None and not isinstance(self.secret, Secret):
            raise ConfigError("a webhook secret must be passed as Secret('whsec_...')")
        if not self.timeout_s > 0:
            raise ConfigError(f"webhook timeout_s must be > 0; got {self.timeout_s}")
        if not self.name:
            object.__setattr__(self, "name", redact_url(self.url))
        if self.classes is not None:
            object.__setattr__(self, "classes", frozenset(self.classes))

    def accepts(self, message: Alert | HealthEvent) -> bool:
        if isinstance(message, HealthEvent):
            return self.health
        return self.classes is None or message.label in self.classes

    @property
    def target_digest(self) -> str:
        """Identifies the URL in the outbox without storing it (it may hold a token)."""
        return hashlib.sha256(self.url.encode()).hexdigest()


_ENDPOINT_KEYS = {
    "url": "https://host/path (required)",
    "secret": "'whsec_...' signing secret",
    "secret_file": "file holding the secret (e.g. a systemd credential)",
    "secret_env": "environment variable holding the secret",
    "name": "short unique name for logs",
    "classes": "list of alert classes to send (default: all)",
    "health": "send health events (default true)",
    "timeout_s": "request timeout in seconds (default 10)",
    "backoff_initial_s": "first retry delay in seconds (default 5)",
    "backoff_factor": "delay growth per failure (default 2)",
    "backoff_max_s": "longest retry delay in seconds (default 3600)",
    "give_up_after_s": "dead-letter after this much nominal waiting (default 259200)",
    "ca_file": "PEM bundle to verify the server with",
}


def webhook_endpoint_from_settings(
    settings: Mapping[str, Any], *, where: str = "[[sinks.webhook]]"
) -> WebhookEndpoint:
    """Build an endpoint from one TOML table; bad keys or values raise ConfigError.

    Example::

        [[sinks.webhook]]
        url = "https://ha.local:8123/api/webhook/edge"
        secret_file = "/etc/edge-detect/webhook.secret"
        classes = ["baby_cry", "glass_break"]
        timeout_s = 10
        backoff_initial_s = 5
        backoff_max_s = 3600
        give_up_after_s = 259200
    """
    unknown = sorted(set(settings) - set(_ENDPOINT_KEYS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in _ENDPOINT_KEYS.items())
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the keys are: {known}")

    def number(key: str, default: float) -> float:
        value = settings.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ConfigError(f"{where}: {key} must be a number; got {value!r}")
        return float(value)

    url = settings.get("url")
    if not isinstance(url, str):
        raise ConfigError(f"{where}: url must be a string like https://host/path; got {url!r}")
    sources = [k for k in ("secret", "secret_file", "secret_env") if k in settings]
    if len(sources) > 1:
        raise ConfigError(
            f"{where}: give only one of secret, secret_file, secret_env; got {sources}"
        )
    raw: str | None = None
    if "secret" in settings:
        raw = settings["secret"] if isinstance(settings["secret"], str) else None
        if raw is None:
            raise ConfigError(f"{where}: secret must be a string 'whsec_...'")
    elif "secret_file" in settings:
        try:
            raw = Path(str(settings["secret_file"])).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{where}: cannot read secret_file {settings['secret_file']!r}: {exc.strerror}"
            ) from None
    elif "secret_env" in settings:
        raw = os.environ.get(str(settings["secret_env"]))
        if raw is None:
            raise ConfigError(
                f"{where}: environment variable {settings['secret_env']!r} (secret_env) is not set"
            )
    try:
        secret = None if raw is None else Secret(raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    classes = settings.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)
    ):
        raise ConfigError(f"{where}: classes must be a list of class names; got {classes!r}")
    health = settings.get("health", True)
    if not isinstance(health, bool):
        raise ConfigError(f"{where}: health must be true or false; got {health!r}")
    name = settings.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string; got {name!r}")
    defaults = Backoff()
    backoff = Backoff(
        initial_s=number("backoff_initial_s", defaults.initial_s),
        factor=number("backoff_factor", defaults.factor),
        max_s=number("backoff_max_s", defaults.max_s),
        give_up_after_s=number("give_up_after_s", defaults.give_up_after_s),
    )
    ca_file = settings.get("ca_file")
    if ca_file is not None and not Path(str(ca_file)).is_file():
        raise ConfigError(f"{where}: ca_file {ca_file!r} is not a file")
    return WebhookEndpoint(
        url=url,
        secret=secret,
        name=name,
        classes=None if classes is None else frozenset(classes),
        health=health,
        timeout_s=number("timeout_s", 10.0),
        backoff=backoff,
        ca_file=None if ca_file is None else str(ca_file),
    )


# -- delivery --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    kind: str
    """'delivered', 'retry', 'dead' or 'gone'."""
    detail: str
    retry_after_s: float | None = None


@dataclass
class EndpointStats:
    """Counters of one endpoint since the sink started."""

    attempts: int = 0
    delivered: int = 0
    retries: int = 0
    dead: int = 0
    disabled: str | None = None


def _printable(data: bytes) -> str:
    text = data[:REASON_CHARS].decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


_RETRY_AFTER_MAX_S = 10**9
"""Larger ``Retry-After`` seconds are read as this (the backoff's ``max_s`` caps it anyway)."""


def _retry_after_s(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or an HTTP date); None if unusable.

    Never raises: the header comes from the peer. ``str.isdigit()`` alone accepts '²' or '٣',
    which ``int()``/``float()`` refuse, hence the ASCII check.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(min(int(value), _RETRY_AFTER_MAX_S))
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError, OSError):
        return None


class WebhookSink:
    """A :class:`~edge_detect.sinks.Sink` that posts signed webhooks to one or more endpoints.

    ``emit`` commits the message to the outbox for every endpoint whose filter accepts it and
    returns (one fsynced SQLite transaction); one thread per endpoint delivers in order.

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
    ) -> None:
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
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._user_agent = user_agent
        self._stop = threading.Event()
        self._wake = {ep.name: threading.Event() for ep in endpoints}
        self._disabled: dict[str, str] = {}
        self.stats = {ep.name: EndpointStats() for ep in endpoints}
        self.failed_puts = 0
        """Messages that could not be committed (disk full, ...); each was logged as an error."""
        self._ssl = {
            ep.name: ssl.create_default_context(cafile=ep.ca_file)
            for ep in endpoints
            if ep.url.startswith("https:")
        }
        for ep in endpoints:
            reason = self.outbox.register_endpoint(ep.name, ep.target_digest)
            if reason is not None:
                self._disabled[ep.name] = reason
                self.stats[ep.name].disabled = reason
                log.warning(
                    "webhook %s is disabled (%s); change its URL to enable it again",
                    ep.name,
                    reason,
                )
            if ep.secret is None:
                log.warning("webhook %s has no secret: its requests are not signed", ep.name)
        self._threads = [
            threading.Thread(target=self._deliver_loop, args=(ep,), name=f"webhook {ep.name}")
            for ep in endpoints
            if ep.name not in self._disabled
        ]
        for thread in self._threads:
            thread.daemon = True  # a hung endpoint must not keep the process alive at exit
            thread.start()

    # -- the audio side ---------------------------------------------------------------------

    def emit(self, message: Alert | HealthEvent) -> None:
        """Commit the message for each accepting endpoint and wake their delivery threads."""
        targets = [
            ep.name
            for ep in self._endpoints
            if ep.accepts(message) and ep.name not in self._disabled
        ]
        if not targets:
            return
        body = message.to_json().encode("utf-8")
        try:
            self.outbox.put(targets, message.id, body, now=self._clock.now())
        except (sqlite3.Error, OSError, ValueError) as exc:
            # Raising would stop detection; the loss is counted and logged loudly instead.
            self.failed_puts += 1
            log.error("could not queue message %s for webhooks: %s", message.id, exc)
            return
        for name in targets:
            self._wake[name].set()

    # -- the delivery side ------------------------------------------------------------------

    def _deliver_loop(self, ep: WebhookEndpoint) -> None:
        wake = self._wake[ep.name]
        while not self._stop.is_set():
            wake.clear()
            try:
                record = self.outbox.head(ep.name)
            except sqlite3.Error as exc:
                log.error("webhook %s: cannot read the outbox: %s", ep.name, exc)
                self._clock.wait(self._stop, ep.backoff.max_s)
                continue
            if record is None:
                self._clock.wait(wake, _IDLE_POLL_S)
                continue
            # Clamped so that a wall clock stepped backwards (a Pi without RTC) cannot stall us.
            delay = min(record.next_attempt_at - self._clock.now(), ep.backoff.max_s)
            if delay > 0:
                self._clock.wait(self._stop, delay)
                continue
            outcome = self._attempt(ep, record)
            try:
                self._settle(ep, record, outcome)
            except sqlite3.Error as exc:
                log.error("webhook %s: cannot update the outbox: %s", ep.name, exc)
                self._clock.wait(self._stop, ep.backoff.max_s)
            if outcome.kind == "gone":
                return

    def _attempt(self, ep: WebhookEndpoint, record: Record) -> _Outcome:
        self.stats[ep.name].attempts += 1
        parts = urlsplit(ep.url)
        timestamp = int(time.time())  # always real time: receivers compare it with their clock
        headers = {
            "content-type": "application/json",
            "user-agent": self._user_agent,
            "webhook-id": record.message_id,
            "webhook-timestamp": str(timestamp),
        }
        if ep.secret is not None:
            headers["webhook-signature"] = ep.secret.sign(record.message_id, timestamp, record.body)
        if parts.username or parts.password:
            userinfo = f"{parts.username or ''}:{parts.password or ''}".encode()
            headers["authorization"] = "Basic " + base64.b64encode(userinfo).decode("ascii")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=ep.timeout_s, context=self._ssl[ep.name]
            )
        else:
            conn = http.client.HTTPConnection(
                parts.hostname or "", parts.port, timeout=ep.timeout_s
            )
        try:
            conn.request("POST", target, body=record.body, headers=headers)
            response = conn.getresponse()
            status, phrase = response.status, response.reason
            retry_after = _retry_after_s(response.getheader("retry-after"))
            answer = response.read(MAX_RESPONSE_BYTES)
        except (OSError, http.client.HTTPException) as exc:
            # Timeouts, refused/reset connections, TLS failures and non-HTTP answers: all
            # transient from here. The message names the exception, never the URL or secret.
            # The text may quote the peer's bytes: one printable line only (no forged log lines).
            text = _printable(str(exc).encode("utf-8", errors="replace"))
            return _Outcome("retry", f"{type(exc).__name__}: {text}".rstrip(": "))
        finally:
            conn.close()
        if 200 <= status < 300:
            return _Outcome("delivered", f"HTTP {status}")
        detail = f"HTTP {status} {_printable(phrase.encode())}: {_printable(answer)}".rstrip(": ")
        if status == 410:
            return _Outcome("gone", detail)
        if status in (408, 429) or status >= 500:
            return _Outcome("retry", detail, retry_after)
        if 300 <= status < 400:
            detail += " (redirects are not followed: configure the final URL)"
        return _Outcome("dead", detail)

    def _settle(self, ep: WebhookEndpoint, record: Record, outcome: _Outcome) -> None:
        stats = self.stats[ep.name]
        now = self._clock.now()
        if outcome.kind == "delivered":
            self.outbox.mark_delivered(record.seq)
            stats.delivered += 1
            log.debug("webhook %s: delivered %s", ep.name, record.message_id)
        elif outcome.kind == "gone":
            reason = f"endpoint disabled: {outcome.detail}"
            count = self.outbox.disable_endpoint(ep.name, ep.target_digest, reason, now=now)
            self._disabled[ep.name] = reason
            stats.disabled = reason
            stats.dead += count
            log.error(
                "webhook %s answered 410 Gone: endpoint disabled, %d message(s) dead-lettered; "
                "change its URL to enable it again",
                ep.name,
                count,
            )
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
        return list(self._endpoints)

    def disabled(self) -> dict[str, str]:
        """Disabled endpoints and why."""
        return dict(self._disabled)

    def flush(self, timeout_s: float) -> bool:
        """Wait (real seconds) until no enabled endpoint holds pending messages; True if so."""
        deadline = time.monotonic() + timeout_s
        while True:
            busy = [n for n in self._wake if n not in self._disabled]
            if all(self.outbox.pending_count(n) == 0 for n in busy):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the delivery threads; pending messages stay in the outbox for the next start.

        Waits at most ``timeout_s`` (default: the longest request timeout plus one second) for
        a request in flight.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        for event in self._wake.values():
            event.set()
        limit = (
            timeout_s if timeout_s is not None else max(e.timeout_s for e in self._endpoints) + 1
        )
        deadline = time.monotonic() + limit
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive()]
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


_SINK_KEYS = ("outbox", "max_pending", "endpoints", "throttle")


def webhook_sink_from_settings(settings: Mapping[str, Any], config: object = None) -> Sink:
    """Build the webhook sink from the ``[sinks.webhook]`` TOML table (a ``SINK_BUILDERS`` entry).

    One endpoint can be written inline; several go in ``[[sinks.webhook.endpoints]]``::

        [sinks.webhook]
        outbox = "/var/lib/edge-detect/outbox.sqlite"  # default: default_outbox_path()
        max_pending = 10000                             # outbox bound (oldest evicted, loudly)
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
    path = settings.get("outbox", str(default_outbox_path()))
    max_pending = settings.get("max_pending", DEFAULT_MAX_PENDING)
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where}: outbox must be a file path; got {path!r}")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int):
        raise ConfigError(f"{where}: max_pending must be an integer; got {max_pending!r}")
    throttle = settings.get("throttle")
    if throttle is not None and not isinstance(throttle, dict):
        raise ConfigError(f"{where}: throttle must be a table; got {throttle!r}")
    policy = None
    if throttle is not None:
        from edge_detect.throttle import throttle_from_settings

        policy = throttle_from_settings(throttle, where="[sinks.webhook.throttle]")
    sink = WebhookSink(endpoints, Path(path).expanduser(), max_pending=max_pending)
    if policy is None:
        return sink
    from edge_detect.throttle import ThrottledSink

    return ThrottledSink(sink, policy)
