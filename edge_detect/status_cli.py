"""``edge-detect status``: the running detector's figures, for a person.

It fetches the metrics endpoint (``[sinks.metrics]`` in the config, see :mod:`edge_detect.metrics`)
and prints microphone state, audio processed, processing time per block, alerts per class and
webhook delivery. The exit code says whether all is well: 0 healthy, 1 unhealthy or unreachable.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from edge_detect.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib
from edge_detect.metrics import (
    DEFAULT_LISTEN,
    PREFIX,
    STALE_AUDIO_S,
    Sample,
    parse_listen,
    parse_metrics,
)

__all__ = ["fetch_metrics", "format_status", "health", "metrics_url", "register"]

DEFAULT_CONFIG = Path("/etc/edge-detect/config.toml")
EXIT_OK = 0
EXIT_UNHEALTHY = 1


def metrics_url(*, url: str | None = None, config: str | Path | None = None) -> str:
    """The endpoint to ask: ``url`` if given, else ``[sinks.metrics] listen`` of the config (the
    given one, or the installed one when this user may read it), else the default."""
    if url:
        return url
    path = Path(config) if config else DEFAULT_CONFIG
    listen: Any = DEFAULT_LISTEN
    if config or _readable(path):
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the config {path}: {exc}") from None
        table = data.get("sinks", {}).get("metrics", {})
        listen = table.get("listen", DEFAULT_LISTEN) if isinstance(table, dict) else listen
    host, port = parse_listen(listen, f"{path} [sinks.metrics] listen")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere includes this machine
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/metrics"


def _readable(path: Path) -> bool:
    try:
        with path.open("rb"):
            return True
    except OSError:
        return False


def fetch_metrics(url: str, *, timeout_s: float = 3.0) -> list[Sample]:
    """GET ``url`` and parse it. Raises :class:`OSError` when nothing answers properly."""
    # No proxies: the endpoint is local, and a proxy variable must not send it elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout_s) as response:
        text = response.read().decode("utf-8")
    try:
        return parse_metrics(text)
    except ValueError as exc:
        raise OSError(f"the answer is not Prometheus metrics ({exc})") from None


def _values(samples: Sequence[Sample], name: str, label: str | None = None) -> dict[str, float]:
    """Values of one metric, by the given label ('' when unlabelled)."""
    return {
        ((s.label(label) or "") if label else ""): s.value
        for s in samples
        if s.name == PREFIX + name
    }


def _one(samples: Sequence[Sample], name: str) -> float | None:
    return _values(samples, name).get("")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _quantile_bound(samples: Sequence[Sample], q: float) -> float | None:
    """Smallest histogram bucket bound that holds a fraction ``q`` of the blocks."""
    buckets = sorted(
        (float(s.label("le") or "inf"), s.value)
        for s in samples
        if s.name == f"{PREFIX}block_processing_seconds_bucket"
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    return next(bound for bound, count in buckets if count >= q * total)


def health(samples: Sequence[Sample], *, now: float | None = None) -> tuple[bool, str]:
    """``(ok, reason)`` from the figures, by the same rule as the endpoint's ``/health``."""
    now = time.time() if now is None else now
    if _one(samples, "microphone_up") == 0:
        return False, "microphone lost"
    last = _one(samples, "last_block_timestamp_seconds")
    if last is None:
        return False, "no audio processed yet"
    if now - last > STALE_AUDIO_S:
        return False, f"no audio processed for {_duration(now - last)}"
    return True, "ok"


def format_status(samples: Sequence[Sample], url: str, *, now: float | None = None) -> str:
    """The figures as a few aligned lines for a person."""
    now = time.time() if now is None else now
    version = next((s.label("version") for s in samples if s.name == f"{PREFIX}info"), "?")
    started = _one(samples, "start_time_seconds")
    uptime = f", up {_duration(now - started)}" if started else ""
    ok, reason = health(samples, now=now)
    lines = [f"edge-detect {version} at {url}{uptime}", f"{'health':12}{'ok' if ok else reason}"]

    mic = _one(samples, "microphone_up")
    losses = _one(samples, "microphone_losses_total") or 0
    if mic is not None:
        state = "up" if mic else "LOST"
        lines.append(f"{'microphone':12}{state}, lost {losses:.0f} time(s) since start")
    blocks = _one(samples, "audio_blocks_total") or 0
    audio_s = _one(samples, "audio_seconds_total") or 0.0
    overflows = _one(samples, "overflows_total") or 0
    lines.append(
        f"{'audio':12}{blocks:.0f} blocks, {_duration(audio_s)} processed, "
        f"{overflows:.0f} overflow(s)"
    )
    count = _one(samples, "block_processing_seconds_count") or 0
    if count:
        mean_s = (_one(samples, "block_processing_seconds_sum") or 0.0) / count
        block_s = audio_s / blocks if blocks else 0.0
        share = f" ({100 * mean_s / block_s:.1f}% of real time)" if block_s else ""
        p95 = _quantile_bound(samples, 0.95)
        tail = f"; 95% of blocks <= {1000 * p95:g} ms" if p95 and p95 != float("inf") else ""
        lines.append(f"{'processing':12}{1000 * mean_s:.2f} ms per block on average{share}{tail}")

    alerts = _values(samples, "alerts_total", "class")
    last_alert = _values(samples, "last_alert_timestamp_seconds", "class")
    lines.append(f"{'alerts':12}{sum(alerts.values()):.0f} in total")
    for label in sorted(alerts):
        when = last_alert.get(label)
        ago = f"   last {_duration(now - when)} ago" if when else ""
        lines.append(f"  {label:14}{alerts[label]:>6.0f}{ago}")

    in_memory = _values(samples, "outbox_memory_messages", "output")
    depth = _one(samples, "outbox_depth")
    if depth is not None:
        kept = in_memory.get("webhook", 0)
        note = f"; {kept:.0f} kept in memory: the outbox cannot be written" if kept else ""
        lines.append(f"{'outbox':12}{depth:.0f} message(s) waiting{note}")
    delivered = _values(samples, "deliveries_total", "endpoint")
    failed = _values(samples, "delivery_failures_total", "endpoint")
    dead = _values(samples, "dead_letters_total", "endpoint")
    up = _values(samples, "webhook_endpoint_up", "endpoint")
    for endpoint in sorted(delivered.keys() | failed.keys() | dead.keys()):
        state = (
            f"DISABLED (enable it: edge-detect webhook enable {endpoint}); "
            if up.get(endpoint) == 0
            else ""
        )
        lines.append(
            f"{'webhook':12}{endpoint}: {state}{delivered.get(endpoint, 0):.0f} delivered, "
            f"{failed.get(endpoint, 0):.0f} failed attempt(s), "
            f"{dead.get(endpoint, 0):.0f} given up"
        )
    connected = _one(samples, "mqtt_connected")
    if connected is not None:
        waiting = _one(samples, "mqtt_pending") or 0
        kept = in_memory.get("mqtt", 0)
        note = f" ({kept:.0f} in memory: the outbox cannot be written)" if kept else ""
        lines.append(
            f"{'mqtt':12}{'connected' if connected else 'DISCONNECTED'}, "
            f"{_one(samples, 'mqtt_delivered_total') or 0:.0f} published, "
            f"{waiting:.0f} waiting{note}"
        )
    written = _one(samples, "clips_written_total")
    if written is not None:
        waiting = _one(samples, "clips_waiting") or 0
        dropped = _one(samples, "clips_dropped_total") or 0
        note = f", {waiting:.0f} WAITING (the folder cannot be written)" if waiting else ""
        lines.append(f"{'clips':12}{written:.0f} written{note}, {dropped:.0f} dropped")
    threads = _values(samples, "thread_up", "thread")
    restarts = _values(samples, "thread_restarts_total", "thread")
    if threads:
        troubled = sorted(t for t in threads if threads[t] == 0 or restarts.get(t, 0))
        total = sum(restarts.values())
        lines.append(
            f"{'threads':12}{sum(1 for v in threads.values() if v):.0f} of {len(threads)} up, "
            f"{total:.0f} restart(s)"
        )
        for thread in troubled:
            state = "up" if threads[thread] else "DOWN (restarting)"
            lines.append(f"  {thread:14}{state}, restarted {restarts.get(thread, 0):.0f} time(s)")
    return "\n".join(lines) + "\n"


def _handler(args: argparse.Namespace, out: TextIO | None = None) -> int:
    url = metrics_url(url=getattr(args, "url", None), config=getattr(args, "config", None))
    try:
        samples = fetch_metrics(url, timeout_s=args.timeout)
    except (OSError, urllib.error.URLError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"edge-detect: error: no metrics at {url} ({reason}).\n"
            "  Is the service running (systemctl status edge-detect), and does its config have a "
            "[sinks.metrics] table? Another address: --url or --config.",
            file=sys.stderr,
        )
        return EXIT_UNHEALTHY
    (out or sys.stdout).write(format_status(samples, url))
    ok, _ = health(samples)
    return EXIT_OK if ok else EXIT_UNHEALTHY


def register(subparsers: argparse._SubParsersAction, formatter: Any) -> None:
    """Add ``edge-detect status`` to the CLI's subcommands."""
    parser = subparsers.add_parser(
        "status",
        help="show the running detector's health and figures (from its metrics endpoint)",
        description=(
            "Fetch the running detector's metrics endpoint and print its figures.\n"
            "Exit code: 0 healthy, 1 unhealthy (microphone lost, no audio) or unreachable."
        ),
        formatter_class=formatter,
    )
    parser.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help=f"metrics URL (default: from --config, else http://{DEFAULT_LISTEN}/metrics)",
    )
    parser.add_argument(
        "--config",
        metavar="TOML",
        default=argparse.SUPPRESS,
        help=f"read [sinks.metrics] listen from this config (default: {DEFAULT_CONFIG}, if "
        "readable)",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    parser.set_defaults(func=_handler)
