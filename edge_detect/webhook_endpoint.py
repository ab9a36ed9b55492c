"""A webhook endpoint's settings: its URL, signing secret, filters, deadline and retry backoff.

The ``[[sinks.webhook.endpoints]]`` tables of the config become :class:`WebhookEndpoint` objects
here (:func:`webhook_endpoint_from_settings`); delivery is :mod:`edge_detect.webhook`. Secrets
never appear in logs, reprs or error messages; URLs are logged without user info or query string
(where tokens hide).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.credentials import read_secret
from edge_detect.errors import ConfigError
from edge_detect.strict import (
    check_bool,
    check_field,
    check_fields,
    check_path,
    setting,
    shown,
    table,
)

__all__ = [
    "SECRET_PREFIX",
    "Backoff",
    "Secret",
    "WebhookEndpoint",
    "redact_url",
    "webhook_endpoint_from_settings",
]

SECRET_PREFIX = "whsec_"
SECRET_MIN_BYTES = 24
SECRET_MAX_BYTES = 64
"""Standard Webhooks secrets are 24 to 64 random bytes."""
_DAY_S = 86_400.0


@dataclass(frozen=True)
class Backoff:
    """When to retry: delay after the n-th failure = min(initial * factor**(n-1), max), jittered."""

    initial_s: float = setting(5.0, low=0.001, high=_DAY_S)
    """Delay after the first failed attempt, seconds."""
    factor: float = setting(2.0, low=1.0, high=100.0)
    """Growth of the delay per failed attempt."""
    max_s: float = setting(3600.0, low=0.001, high=30 * _DAY_S)
    """Longest delay between two attempts, seconds (also caps ``Retry-After``)."""
    give_up_after_s: float = setting(3 * _DAY_S, low=0.0, high=365 * _DAY_S)
    """Nominal (un-jittered) total waiting after which a message is dead-lettered, seconds."""
    jitter: float = setting(0.5, low=0.0, high=1.0)
    """Each delay is drawn uniformly from [(1 - jitter) * d, d], so many devices do not retry in
    lock-step after an outage."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_s < self.initial_s:
            raise ConfigError(
                f"webhook backoff needs max_s >= initial_s; got max_s={self.max_s:g}, "
                f"initial_s={self.initial_s:g}"
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
        """Attempts made before giving up (the first one included).

        Counted step by step only while the delay grows (a few dozen steps at most); once it
        has reached ``max_s`` the rest is one division: with ``max_s = 0.002`` and three days to
        wait, stepping took 130 million iterations and froze the delivery thread (found by the
        fuzz suite).
        """
        waited, attempts = 0.0, 1
        while waited < self.give_up_after_s:
            delay = self.nominal_delay_s(attempts)
            if delay >= self.max_s:
                return attempts + math.ceil((self.give_up_after_s - waited) / self.max_s)
            waited += delay
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
    timeout_s: float = setting(10.0, low=0.001, high=3600.0)
    """Deadline of one whole request (connect, send, answer), seconds: an endpoint that
    dribbles its answer a byte at a time cannot hold delivery longer than this."""
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
        check_fields(self)
        if not self.name:
            object.__setattr__(self, "name", redact_url(self.url))
        if self.classes is not None:
            object.__setattr__(self, "classes", frozenset(self.classes))

    def accepts(self, message: Alert | HealthEvent) -> bool:
        """Whether this endpoint wants ``message`` (its class filter, its health setting)."""
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
    "timeout_s": "deadline of one request in seconds (default 10)",
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
    settings = table(settings, where)
    unknown = sorted(set(settings) - set(_ENDPOINT_KEYS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in _ENDPOINT_KEYS.items())
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the keys are: {known}")
    url = settings.get("url")
    if not isinstance(url, str):
        raise ConfigError(f"{where}: url must be a string like https://host/path; got {url!r}")
    raw = read_secret(settings, "secret", where=where)
    try:
        secret = None if raw is None else Secret(raw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    classes = settings.get("classes")
    if classes is not None and (
        not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes)
    ):
        raise ConfigError(f"{where}: classes must be a list of class names; got {shown(classes)}")
    name = settings.get("name", "")
    if not isinstance(name, str) or any(not ch.isprintable() for ch in name):
        raise ConfigError(f"{where}: name must be a printable string; got {shown(name)}")
    ca_file = settings.get("ca_file")
    if ca_file is not None and not Path(check_path(ca_file, "ca_file", where=where)).is_file():
        raise ConfigError(f"{where}: ca_file {shown(ca_file)} is not a file")
    backoff = {
        field: check_field(Backoff, field, settings[key], key=key, where=where)
        for key, field in (
            ("backoff_initial_s", "initial_s"),
            ("backoff_factor", "factor"),
            ("backoff_max_s", "max_s"),
            ("give_up_after_s", "give_up_after_s"),
        )
        if key in settings
    }
    timeout_s = check_field(
        WebhookEndpoint, "timeout_s", settings.get("timeout_s", 10.0), where=where
    )
    try:
        return WebhookEndpoint(
            url=url,
            secret=secret,
            name=name,
            classes=None if classes is None else frozenset(classes),
            health=check_bool(settings.get("health", True), "health"),
            timeout_s=timeout_s,
            backoff=Backoff(**backoff),
            ca_file=ca_file,
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
