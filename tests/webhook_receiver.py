"""The signed-webhook receiver that the tests, ``bench/delivery.py`` and ``bench/faults.py`` share.

A real HTTP server on 127.0.0.1 (port 0: a free one) that behaves as a well-made receiver would:
it verifies every signature with the independent ``standardwebhooks`` package and processes each
``webhook-id`` once (retries after a lost answer are counted as duplicates, not processed again).
What it answers is scripted per request, or set for all requests by :attr:`Receiver.mode`.

Actions: ``"200"`` (verify and accept), any status (``"500"``, ``"410"``, ``"503"``), ``"429:1"``
(with ``Retry-After: 1``), ``"slow:S"`` (accept after S seconds), ``"hold"`` (accept once the
test sets :attr:`Receiver.release`), ``"garbage"`` (an answer that is not HTTP), ``"reset"`` (TCP
reset after reading the request), ``"dribble:S"`` (the status line one byte every S seconds);
an ``"@S"`` suffix waits S seconds first. ``stop()``/``start()`` take it off the network (refused
connections) and back on the same port.
"""

from __future__ import annotations

import base64
import random
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

__all__ = ["SECRET", "Receiver", "fuzzed_responses"]

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
"""A valid Standard Webhooks secret for tests and benchmarks."""


class Receiver:
    """A webhook receiver on a real socket whose behaviour per request is scripted."""

    def __init__(
        self,
        secret: str = SECRET,
        actions: list[str] | None = None,
        tls: object | None = None,
        *,
        mode: str = "200",
        delay_s: float = 0.0,
    ) -> None:
        self.tls = tls
        self.verifier = Webhook(secret)
        self.actions = list(actions or [])
        """Scripted answers, one per request, in order; then :attr:`mode` for all."""
        self.mode = mode
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.received: list[tuple[float, dict[str, str], bytes]] = []
        """Every request: (time.monotonic(), headers in lower case, body)."""
        self.processed: dict[str, dict] = {}
        """webhook-id -> verified payload, in the order first processed."""
        self.processed_at: dict[str, float] = {}
        """time.monotonic() when each id was first processed."""
        self.duplicates = 0
        """Verified requests for an id already processed (retries after a lost answer)."""
        self.bad_signatures = 0
        self.holding = threading.Event()
        self.release = threading.Event()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.received.append((time.monotonic(), headers, body))
                    action = receiver.actions.pop(0) if receiver.actions else receiver.mode
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                action, _, pause = action.partition("@")
                if pause:
                    time.sleep(float(pause))
                receiver._answer(self, action, headers, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(  # type: ignore[attr-defined]
                self.server.socket, server_side=True
            )
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def _answer(
        self, handler: BaseHTTPRequestHandler, action: str, headers: dict[str, str], body: bytes
    ) -> None:
        if action == "reset":
            linger = struct.pack("ii", 1, 0)  # close with RST, not FIN
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            handler.connection.close()
            handler.close_connection = True
            return
        if action == "garbage":
            handler.wfile.write(b"\x00\x01 this is not HTTP \xff\r\n\r\n")
            handler.close_connection = True
            return
        if action.startswith("dribble:"):
            pause = float(action.split(":")[1])
            try:
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok":
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    time.sleep(pause)
            except OSError:
                pass  # the client gave up, as it should
            handler.close_connection = True
            return
        if action == "hold":
            self.holding.set()
            self.release.wait(30)
            action = "200"
        if action.startswith("slow:"):
            time.sleep(float(action.split(":")[1]))
            action = "200"
        status, _, retry_after = action.partition(":")
        if status == "200":
            try:
                payload = self.verifier.verify(body, headers)
            except WebhookVerificationError:
                self.bad_signatures += 1
                status = "401"
            else:
                with self.lock:
                    message_id = headers["webhook-id"]
                    if message_id in self.processed:
                        self.duplicates += 1
                    else:
                        self.processed[message_id] = payload
                        self.processed_at[message_id] = time.monotonic()
        answer = b"nope, not this one" if status != "200" else b"ok"
        handler.send_response(int(status))
        if retry_after:
            handler.send_header("Retry-After", retry_after)
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def stop(self) -> None:
        """Off the network: connections to its port are refused until :meth:`start`."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def ids(self) -> list[str]:
        """The webhook-id of every request received, retries included, in order."""
        with self.lock:
            return [h["webhook-id"] for _, h, _ in self.received]


def fuzzed_responses(count: int, seed: int) -> list[bytes]:
    """``count`` hostile answers to a webhook POST: random bytes, mutated valid answers, odd
    status lines and headers (non-ASCII digits in ``Retry-After`` too), redirects."""
    rng = random.Random(seed)
    valid = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    codes = [100, 200, 201, 204, 301, 302, 307, 308, 400, 404, 408, 410, 429, 500, 503, 599,
             600, 999, 0, -1]  # fmt: skip
    headers = [
        b"Content-Length: 5", b"Content-Length: -3", b"Content-Length: 99999",
        b"Content-Length: x", b"Content-Length: \xb2", b"Transfer-Encoding: chunked",
        b"Retry-After: 2", b"Retry-After: soon", b"Retry-After: \xc2\xb2",
        "Retry-After: ٣".encode(), b"Retry-After: \xb9", b"Retry-After: 1e999",
        b"Retry-After: -5", b"Retry-After: Wed, 21 Oct 2015 07:28:00 GMT",
        b"Retry-After: Wed, 21 Oct 99999 07:28:00 GMT", b"Retry-After: 99999999999999999999",
        b"Location: http://127.0.0.1:1/elsewhere", b"Location: \xff\xfe",
        b"X: " + bytes(range(1, 32)),
        b"NoColonHere", "X-Unicode: ü€😀".encode(),
    ]  # fmt: skip
    out = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 300)))
        elif kind == 1:
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                op, at = rng.randrange(3), rng.randrange(len(data) + 1)
                if op == 0 and at < len(data):
                    data[at] = rng.randrange(256)
                elif op == 1:
                    data[at:at] = rng.randbytes(rng.randrange(1, 8))
                else:
                    del data[at:]
            out.append(bytes(data))
        else:
            line = f"HTTP/1.{rng.choice('019')} {rng.choice(codes)} Whatever\r\n".encode()
            chosen = rng.sample(headers, rng.randrange(0, 4))
            body = rng.choice([b"", b"ok", b"3\r\nabc\r\n0\r\n\r\n", b"zz\r\n", rng.randbytes(20)])
            out.append(line + b"\r\n".join(chosen) + b"\r\n\r\n" + body)
    return out
