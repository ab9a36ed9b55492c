"""One webhook request: sign it, POST it within a deadline, read the answer and classify it.

Everything that arrives here comes from the peer and is treated as hostile: a status line that
is not HTTP, headers with odd bytes (``Retry-After: ²``), a body that never ends, an answer that
arrives one byte every few seconds. Each request ends as one :class:`Outcome`, never an
exception, within the endpoint's ``timeout_s`` as a whole (the socket timeout alone bounds each
read, so a peer that dribbles could hold the in-order delivery thread for ever).
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from edge_detect.webhook_endpoint import WebhookEndpoint

__all__ = ["MAX_RESPONSE_BYTES", "Outcome", "post", "printable", "retry_after_s"]

MAX_RESPONSE_BYTES = 4096
"""Most of a response body we read (only its start goes into a dead-letter reason)."""
REASON_CHARS = 200
_RETRY_AFTER_MAX_S = 10**9
"""Larger ``Retry-After`` seconds are read as this (the backoff's ``max_s`` caps it anyway)."""


@dataclass(frozen=True)
class Outcome:
    """How one request ended."""

    kind: str
    """'delivered' (2xx), 'retry' (later), 'dead' (never: dead-letter it) or 'gone' (410)."""
    detail: str
    """One printable line for logs and dead-letter reasons (never a secret or the URL)."""
    retry_after_s: float | None = None
    """What the peer's ``Retry-After`` asked for, seconds, when usable."""


def printable(data: bytes) -> str:
    """The start of the peer's bytes as one printable line (no forged log lines)."""
    text = data[:REASON_CHARS].decode("utf-8", errors="replace")
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def retry_after_s(value: str | None) -> float | None:
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


class _Deadline:
    """Shuts the connection's socket down when the request's time is up: a read blocked on a
    peer that sends a byte every few seconds then returns at once."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._conn = conn
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        self.expired = True
        sock = self._conn.sock
        if sock is not None:
            try:
                # socket.socket's own shutdown: SSLSocket's would also drop its TLS object,
                # which the reading thread is using
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


def post(
    ep: WebhookEndpoint,
    message_id: str,
    body: bytes,
    *,
    ssl_context: ssl.SSLContext | None,
    user_agent: str,
) -> Outcome:
    """POST one message to ``ep`` (signed), within ``ep.timeout_s`` in all; never raises."""
    parts = urlsplit(ep.url)
    timestamp = int(time.time())  # always real time: receivers compare it with their clock
    headers = {
        "content-type": "application/json",
        "user-agent": user_agent,
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
    }
    if ep.secret is not None:
        headers["webhook-signature"] = ep.secret.sign(message_id, timestamp, body)
    if parts.username or parts.password:
        userinfo = f"{parts.username or ''}:{parts.password or ''}".encode()
        headers["authorization"] = "Basic " + base64.b64encode(userinfo).decode("ascii")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, timeout=ep.timeout_s, context=ssl_context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=ep.timeout_s)
    deadline = _Deadline(conn, ep.timeout_s)
    try:
        conn.request("POST", target, body=body, headers=headers)
        response = conn.getresponse()
        status, phrase = response.status, response.reason
        retry_after = retry_after_s(response.getheader("retry-after"))
        answer = response.read(MAX_RESPONSE_BYTES)
        if deadline.expired:  # a short read at the deadline: not an answer to trust
            raise TimeoutError("the answer was cut at the deadline")
    except (OSError, http.client.HTTPException, ValueError, UnicodeError) as exc:
        # Timeouts, refused/reset connections, TLS failures and non-HTTP answers: all
        # transient from here. The message names the exception, never the URL or secret.
        if deadline.expired:
            return Outcome("retry", f"no complete answer within the {ep.timeout_s:g} s deadline")
        text = printable(str(exc).encode("utf-8", errors="replace"))
        return Outcome("retry", f"{type(exc).__name__}: {text}".rstrip(": "))
    finally:
        deadline.cancel()
        conn.close()
    if 200 <= status < 300:
        return Outcome("delivered", f"HTTP {status}")
    detail = f"HTTP {status} {printable(phrase.encode())}: {printable(answer)}".rstrip(": ")
    if status == 410:
        return Outcome("gone", detail)
    if status in (408, 429) or status >= 500:
        return Outcome("retry", detail, retry_after)
    if 300 <= status < 400:
        detail += " (redirects are not followed: configure the final URL)"
    return Outcome("dead", detail)
