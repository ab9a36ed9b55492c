"""Health and metrics: a thread-safe registry, a Prometheus text endpoint, and the adapters that
feed it from the running detector.

What is measured (all names start with ``edge_detect_``)::

    alerts_total{class}                 counter    alerts sent, per class
    last_alert_timestamp_seconds{class} gauge      wall time of the last alert of each class
    audio_blocks_total                  counter    audio blocks processed
    audio_seconds_total                 counter    seconds of audio processed
    block_processing_seconds            histogram  processing time per block (features, model,
                                                   detection, sinks)
    last_block_timestamp_seconds        gauge      wall time the last block was processed
    overflows_total                     counter    input overflows (audio the microphone dropped)
    microphone_up                       gauge      1 while the microphone delivers audio, else 0
    microphone_losses_total             counter    times the microphone was lost
    outbox_depth                        gauge      webhook messages waiting for delivery
    outbox_memory_messages{output}      gauge      messages kept in memory: the outbox cannot
                                                   be written (a full disk)
    deliveries_total{endpoint}          counter    webhook messages delivered
    delivery_failures_total{endpoint}   counter    failed delivery attempts (retried or dead)
    dead_letters_total{endpoint}        counter    messages given up on
    webhook_endpoint_up{endpoint}       gauge      1 while an endpoint is enabled, 0 disabled
    alerts_throttled_total              counter    alerts held back by a throttle
    mqtt_connected                      gauge      1 while connected to the MQTT broker
    mqtt_pending                        gauge      MQTT messages waiting for the broker
    mqtt_delivered_total                counter    MQTT messages the broker acknowledged
    clips_written_total                 counter    audio clips written
    clips_waiting                       gauge      clips waiting in memory (a full disk)
    clips_dropped_total                 counter    clips given up on
    thread_up{thread}                   gauge      1 while a background thread runs
    thread_restarts_total{thread}       counter    times a background thread failed and was
                                                   restarted
    info{version}                       gauge      always 1; carries the version
    start_time_seconds                  gauge      wall time the detector started

How the detector feeds it (none of this blocks the audio path for more than a lock):

- :class:`MetricsSink` is a :class:`~edge_detect.sinks.Sink`: alerts count per class, health
  events set the microphone state. ``[sinks.metrics]`` in the config builds one
  (:func:`build_metrics_sink`) and serves it on ``listen`` (``127.0.0.1:9750`` by default).
- :meth:`MetricsSink.meter` wraps the audio source: the time between handing out a block and
  being asked for the next one is the pipeline's processing time of that block; a source with an
  ``overflows`` counter (the microphone) is read when the metrics are scraped.
- :meth:`MetricsSink.watch` asks every :class:`~edge_detect.sinks.Reporter` (the outputs, the
  clip recorder, the microphone) for its figures when the metrics are scraped.
- :func:`instrument` does the three in one call: ``source = instrument(sinks, source, labels)``.
- Anything else calls :class:`DetectorMetrics` directly: ``metrics.alert("dog_bark")``,
  ``metrics.block(seconds, audio_s)``, ``metrics.overflow()``, ``metrics.microphone(up)``, ...

``edge-detect status`` (:mod:`edge_detect.status_cli`) fetches the endpoint and prints the same
figures for a person.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.errors import ConfigError
from edge_detect.sinks import Figure, Output, Reporter
from edge_detect.supervise import Supervised

__all__ = [
    "DEFAULT_LISTEN",
    "DetectorMetrics",
    "MetricsServer",
    "MetricsSink",
    "Registry",
    "Sample",
    "build_metrics_sink",
    "instrument",
    "parse_listen",
    "parse_metrics",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9750
DEFAULT_LISTEN = f"{DEFAULT_HOST}:{DEFAULT_PORT}"
"""Where the endpoint listens unless configured: this machine only."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Prometheus text exposition format 0.0.4."""
PREFIX = "edge_detect_"
BLOCK_SECONDS_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Upper bounds of the processing-time histogram, in s: a 100 ms block takes ~0.1-5 ms on a Pi,
and anything near the block length means the detector falls behind."""
STALE_AUDIO_S = 10.0
"""``/health`` answers 503 when no block was processed for this long."""

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


# -- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One line of the text format: a name, its labels and a value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    def label(self, key: str) -> str | None:
        """The value of label ``key`` of this sample, or None."""
        return dict(self.labels).get(key)


class _Family:
    """A metric and its children (one per label combination). Guarded by the registry's lock."""

    def __init__(self, name: str, kind: str, help_text: str, label_names: Sequence[str]) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        self.name = name
        self.kind = kind
        self.help = help_text
        self.label_names = tuple(label_names)
        self.values: dict[tuple[str, ...], float] = {}

    def key(self, labels: Mapping[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.label_names):
            raise ValueError(
                f"{self.name} takes labels {list(self.label_names)}, got {sorted(labels)}"
            )
        return tuple(str(labels[n]) for n in self.label_names)


class _Histogram(_Family):
    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, "histogram", help_text, ())
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value


Collector = Callable[[], Iterable[tuple[str, Mapping[str, str], float]]]
"""Called at each scrape; yields ``(family name, labels, value)`` of families it owns."""


class Registry:
    """Counters, gauges and histograms, safe to update from any thread.

    Updates take one lock for a few dictionary operations; rendering copies under the same lock,
    so a scrape never sees half an update. Collectors run at scrape time, outside the lock, for
    figures that live elsewhere (a queue's depth).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._collectors: list[Collector] = []

    def _add(self, family: _Family) -> None:
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name} is already registered")
            self._families[family.name] = family

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        """Declare a counter family (``name`` ends in ``_total``)."""
        family = _Family(name, "counter", help_text, labels)
        if not family.label_names:
            family.values[()] = 0.0  # a counter without labels starts at a visible zero
        self._add(family)

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        """Declare a gauge family."""
        self._add(_Family(name, "gauge", help_text, labels))

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        """Declare a histogram with these upper bucket bounds (``+Inf`` is added)."""
        self._add(_Histogram(name, help_text, buckets))

    def inc(self, name: str, amount: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        """Add ``amount`` (>= 0) to a counter."""
        if amount < 0:
            raise ValueError(f"a counter only goes up; got {amount} for {name}")
        with self._lock:
            family = self._families[name]
            key = family.key(labels or {})
            family.values[key] = family.values.get(key, 0.0) + amount

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        """Set a gauge."""
        with self._lock:
            family = self._families[name]
            family.values[family.key(labels or {})] = float(value)

    def observe(self, name: str, value: float) -> None:
        """Add one observation to a histogram."""
        with self._lock:
            family = self._families[name]
            assert isinstance(family, _Histogram), f"{name} is not a histogram"
            family.observe(value)

    def add_collector(self, collector: Collector) -> None:
        """Call ``collector`` at every scrape (it sets gauges from an object's own figures)."""
        with self._lock:
            self._collectors.append(collector)

    def samples(self) -> list[Sample]:
        """Every current value, as the text format would list it."""
        return parse_metrics(self.render())

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        collected: dict[str, dict[tuple[str, ...], float]] = {}
        for collector in list(self._collectors):
            try:
                for name, labels, value in collector():
                    family = self._families.get(name)
                    if family is None:  # a third-party output's own figure: not declared here
                        log.debug("metrics: no family %s declared; skipped", name)
                        continue
                    collected.setdefault(name, {})[family.key(labels)] = float(value)
            except Exception:  # noqa: BLE001 - a broken collector must not break the endpoint
                log.exception("metrics collector %r failed", collector)
        lines: list[str] = []
        with self._lock:
            for family in self._families.values():
                lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
                lines.append(f"# TYPE {family.name} {family.kind}")
                if isinstance(family, _Histogram):
                    cumulative = 0
                    for bound, count in zip((*family.bounds, math.inf), family.counts, strict=True):
                        cumulative += count
                        le = _format_value(bound)
                        lines.append(f'{family.name}_bucket{{le="{le}"}} {cumulative}')
                    lines.append(f"{family.name}_sum {_format_value(family.sum)}")
                    lines.append(f"{family.name}_count {cumulative}")
                    continue
                values = {**family.values, **collected.get(family.name, {})}
                for key in sorted(values):
                    text = _format_labels(zip(family.label_names, key, strict=True))
                    lines.append(f"{family.name}{text} {_format_value(values[key])}")
        return "\n".join(lines) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs)
    return f"{{{inner}}}" if inner else ""


def _format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+"
    r"(?P<value>[-+]?(?:[0-9.]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))(?:\s+-?[0-9]+)?\s*$"
)
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


def parse_metrics(text: str) -> list[Sample]:
    """Read the Prometheus text format (what :meth:`Registry.render` writes) back into samples.

    Raises
    ------
    ValueError
        On a line that is not a comment, blank or a sample.
    """
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ValueError(f"line {number} is not in the Prometheus text format: {line!r}")
        labels = tuple((k, _unescape(v)) for k, v in _LABEL.findall(match.group("labels") or ""))
        samples.append(Sample(match.group("name"), labels, float(match.group("value"))))
    return samples


# -- the detector's figures --------------------------------------------------------------------


class DetectorMetrics(Registry):
    """The detector's figures (see the module docstring) and one method per thing that happens."""

    def __init__(self, *, version: str | None = None) -> None:
        super().__init__()
        from edge_detect import __version__

        p = PREFIX
        self.gauge(f"{p}info", "Always 1; the labels describe the detector.", ["version"])
        self.gauge(f"{p}start_time_seconds", "Unix time the detector started.")
        self.counter(f"{p}alerts_total", "Alerts sent, per class.", ["class"])
        self.gauge(
            f"{p}last_alert_timestamp_seconds", "Unix time of the last alert, per class.", ["class"]
        )
        self.counter(f"{p}audio_blocks_total", "Audio blocks processed.")
        self.counter(f"{p}audio_seconds_total", "Seconds of audio processed.")
        self.histogram(
            f"{p}block_processing_seconds",
            "Processing time per audio block (features, model, detection, sinks).",
            BLOCK_SECONDS_BUCKETS,
        )
        self.gauge(f"{p}last_block_timestamp_seconds", "Unix time the last block was processed.")
        self.counter(f"{p}overflows_total", "Input overflows: audio the microphone dropped.")
        self.gauge(f"{p}microphone_up", "1 while the microphone delivers audio, 0 when lost.")
        self.counter(f"{p}microphone_losses_total", "Times the microphone was lost.")
        self.gauge(f"{p}outbox_depth", "Webhook messages waiting for delivery.")
        self.counter(f"{p}deliveries_total", "Webhook messages delivered.", ["endpoint"])
        self.counter(
            f"{p}delivery_failures_total",
            "Failed webhook delivery attempts (retried later or given up).",
            ["endpoint"],
        )
        self.counter(f"{p}dead_letters_total", "Webhook messages given up on.", ["endpoint"])
        self.gauge(
            f"{p}outbox_memory_messages",
            "Messages kept in memory because the outbox cannot be written.",
            ["output"],
        )
        self.gauge(
            f"{p}webhook_endpoint_up", "1 while a webhook endpoint is enabled.", ["endpoint"]
        )
        self.counter(f"{p}alerts_throttled_total", "Alerts held back by a throttle.")
        self.gauge(f"{p}mqtt_connected", "1 while connected to the MQTT broker.")
        self.gauge(f"{p}mqtt_pending", "MQTT messages waiting for the broker.")
        self.counter(f"{p}mqtt_delivered_total", "MQTT messages the broker acknowledged.")
        self.counter(f"{p}clips_written_total", "Audio clips written.")
        self.gauge(f"{p}clips_waiting", "Clips waiting in memory to be written.")
        self.counter(f"{p}clips_dropped_total", "Clips given up on.")
        self.gauge(f"{p}thread_up", "1 while a background thread runs.", ["thread"])
        self.counter(
            f"{p}thread_restarts_total",
            "Times a background thread failed and was restarted.",
            ["thread"],
        )
        self.set(f"{p}info", 1, {"version": version or __version__})
        self.set(f"{p}start_time_seconds", time.time())
        self._overflows_counted = 0.0
        self._mic_up: bool | None = None

    def declare_classes(self, labels: Iterable[str]) -> None:
        """Show every class from the start, with zero alerts."""
        for label in labels:
            self.inc(f"{PREFIX}alerts_total", 0, {"class": label})

    def alert(self, label: str, *, when: float | None = None) -> None:
        """One alert of class ``label`` was sent."""
        self.inc(f"{PREFIX}alerts_total", 1, {"class": label})
        self.set(f"{PREFIX}last_alert_timestamp_seconds", when or time.time(), {"class": label})

    def block(self, seconds: float, audio_s: float) -> None:
        """One block of ``audio_s`` seconds of audio took ``seconds`` to process."""
        self.inc(f"{PREFIX}audio_blocks_total")
        self.inc(f"{PREFIX}audio_seconds_total", audio_s)
        self.observe(f"{PREFIX}block_processing_seconds", seconds)
        self.set(f"{PREFIX}last_block_timestamp_seconds", time.time())

    def overflow(self, count: int = 1) -> None:
        """The input dropped audio ``count`` times."""
        self.inc(f"{PREFIX}overflows_total", count)

    def overflows_seen(self, total: int) -> None:
        """The input's own running total of overflows (counted once, however often it is told)."""
        with self._lock:
            new = total - self._overflows_counted
            self._overflows_counted = max(self._overflows_counted, float(total))
        if new > 0:
            self.overflow(int(new))

    def microphone(self, up: bool) -> None:
        """The microphone delivers audio (``True``) or was lost (``False``)."""
        with self._lock:
            changed_to_down = not up and self._mic_up is not False
            self._mic_up = up
        self.set(f"{PREFIX}microphone_up", 1 if up else 0)
        if changed_to_down:
            self.inc(f"{PREFIX}microphone_losses_total")

    def outbox_depth(self, pending: int) -> None:
        """Webhook messages waiting for delivery now."""
        self.set(f"{PREFIX}outbox_depth", pending)

    def delivered(self, endpoint: str, count: int = 1) -> None:
        """Count ``count`` alerts delivered to ``endpoint``."""
        self.inc(f"{PREFIX}deliveries_total", count, {"endpoint": endpoint})

    def delivery_failed(self, endpoint: str, count: int = 1) -> None:
        """Count ``count`` failed delivery attempts to ``endpoint``."""
        self.inc(f"{PREFIX}delivery_failures_total", count, {"endpoint": endpoint})

    def dead_letter(self, endpoint: str, count: int = 1) -> None:
        """Count ``count`` alerts given up on (dead letters) for ``endpoint``."""
        self.inc(f"{PREFIX}dead_letters_total", count, {"endpoint": endpoint})

    def healthy(self, *, now: float | None = None) -> tuple[bool, str]:
        """Is audio flowing? ``(ok, reason)`` for ``/health``."""
        now = time.time() if now is None else now
        with self._lock:
            mic = self._mic_up
            last = self._families[f"{PREFIX}last_block_timestamp_seconds"].values.get(())
        if mic is False:
            return False, "microphone lost"
        if last is None:
            return False, "no audio processed yet"
        if now - last > STALE_AUDIO_S:
            return False, f"no audio processed for {now - last:.0f} s"
        return True, "ok"


# -- adapters: what feeds the figures ----------------------------------------------------------


class _MeteredSource:
    """Wraps an audio source; times the consumer's work on each block (see MetricsSink.meter)."""

    def __init__(self, source: Any, metrics: DetectorMetrics) -> None:
        self._source = source
        self._metrics = metrics
        self.name = source.name
        self.sample_rate_hz = source.sample_rate_hz
        self._is_microphone = hasattr(source, "overflows")
        if self._is_microphone:
            metrics.add_collector(self._collect_overflows)
        if isinstance(source, Reporter):
            metrics.add_collector(source.collect)

    def _collect_overflows(self) -> Iterable[tuple[str, Mapping[str, str], float]]:
        self._metrics.overflows_seen(int(getattr(self._source, "overflows", 0)))
        return ()

    def blocks(self) -> Iterator[Any]:
        for block in self._source.blocks():
            if self._is_microphone:
                self._metrics.microphone(True)  # audio arrives: the microphone works
            handed_out = time.perf_counter()
            yield block
            # The consumer asks for the next block once it has processed this one.
            self._metrics.block(
                time.perf_counter() - handed_out, len(block.samples) / self.sample_rate_hz
            )

    def stop(self) -> None:
        self._source.stop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


class MetricsSink(Output):
    """A :class:`~edge_detect.sinks.Sink` that counts alerts and follows health events; it owns
    the HTTP endpoint when it was given one, and closes it with the pipeline."""

    def __init__(self, metrics: DetectorMetrics, server: MetricsServer | None = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.server = server
        if server is not None:
            server.thread.report = self.health
            self.threads.append(server.thread)
        metrics.add_collector(self.collect)

    def emit(self, message: Alert | HealthEvent) -> None:
        """Count an alert by class, or a health event by kind."""
        if isinstance(message, Alert):
            self.metrics.alert(message.label)
        elif message.event == "microphone_lost":
            self.metrics.microphone(False)
        elif message.event == "microphone_restored":
            self.metrics.microphone(True)

    def meter(self, source: Any) -> Any:
        """``source`` wrapped so that every block it hands out is counted and timed."""
        return _MeteredSource(source, self.metrics)

    def watch(self, reporters: Iterable[object]) -> None:
        """Report what each :class:`~edge_detect.sinks.Reporter` among ``reporters`` collects
        (outputs, the clip recorder, ...), asked at every scrape."""
        watched = [r for r in reporters if isinstance(r, Reporter) and r is not self]

        def collect() -> Iterator[Figure]:
            for reporter in watched:
                yield from reporter.collect()

        self.metrics.add_collector(collect)

    def close(self) -> None:
        """Stop the HTTP server, if this sink started one."""
        if self.server is not None:
            self.server.close()


# -- the HTTP endpoint -------------------------------------------------------------------------


def parse_listen(value: Any, where: str = "[sinks.metrics] listen") -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``, or a bare port) -> ``(host, port)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        host, port_text = DEFAULT_HOST, str(value)
    elif isinstance(value, str) and value.rpartition(":")[2].isdigit():
        host, _, port_text = value.rpartition(":")
        host = host.strip("[]") or DEFAULT_HOST
    elif isinstance(value, str) and value.isdigit():
        host, port_text = DEFAULT_HOST, value
    else:
        raise ConfigError(
            f"{where}: expected 'host:port' such as {DEFAULT_LISTEN!r}, got {value!r}"
        )
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where}: port must be 0-65535, got {port}")
    return host, port


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            status, body, ctype = 200, self.server.metrics.render(), CONTENT_TYPE
        elif path == "/health":
            ok, reason = self.server.metrics.healthy()
            status, body, ctype = (200 if ok else 503), reason + "\n", "text/plain; charset=utf-8"
        else:
            status, body, ctype = 404, "not found: try /metrics or /health\n", "text/plain"
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
        log.debug("metrics %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    metrics: DetectorMetrics


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text) and ``/health`` (200 or 503) from a daemon thread.

    Parameters
    ----------
    metrics : DetectorMetrics
    host : str
        Interface to listen on: ``127.0.0.1`` (this machine only) unless you mean otherwise.
    port : int
        TCP port; 0 picks a free one (see :attr:`port`).
    """

    def __init__(
        self, metrics: DetectorMetrics, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
    ) -> None:
        server_class = _Server6 if ":" in host else _Server
        try:
            self._server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"the metrics endpoint cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "choose another port in [sinks.metrics] listen, or remove that table"
            ) from None
        self._server.metrics = metrics
        self.host = host
        self.port = int(self._server.server_address[1])
        self._stop = threading.Event()
        self.thread = Supervised("metrics http", self._server.serve_forever, stop=self._stop)
        """The serving thread, restarted should ``serve_forever`` ever fail."""
        self.thread.start()
        if host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("metrics endpoint listens on %s: reachable from the network", host)
        log.info("metrics on %s", self.url)

    @property
    def url(self) -> str:
        """The address to scrape, e.g. ``http://127.0.0.1:9105/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self.thread.join(timeout=5)


def build_metrics_sink(table: Mapping[str, Any], config: Any = None) -> MetricsSink:
    """The builder of ``[sinks.metrics]`` (register it as ``SINK_BUILDERS["metrics"]``).

    Keys: ``listen`` (``"host:port"``, default ``"127.0.0.1:9750"``), ``enabled`` (default true;
    false keeps the figures without an endpoint).
    """
    unknown = sorted(set(table) - {"listen", "enabled"})
    if unknown:
        raise ConfigError(
            f"[sinks.metrics]: unknown key(s) {unknown}; expected some of ['enabled', 'listen']"
        )
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"[sinks.metrics] enabled: expected true or false, got {enabled!r}")
    metrics = DetectorMetrics()
    server = None
    if enabled:
        host, port = parse_listen(table.get("listen", DEFAULT_LISTEN))
        server = MetricsServer(metrics, host, port)
    return MetricsSink(metrics, server)


def instrument(
    sinks: Sequence[Any],
    source: Any,
    labels: Iterable[str] = (),
    reporters: Iterable[object] = (),
) -> Any:
    """Wire the metrics into a run: the one call the runner needs.

    When ``sinks`` hold a :class:`MetricsSink`, returns ``source`` metered by it, shows every
    class in ``labels`` from the start and reports what every other sink and each of
    ``reporters`` (e.g. the clip recorder) collects; otherwise returns ``source`` unchanged.
    """
    for sink in sinks:
        if isinstance(sink, MetricsSink):
            sink.metrics.declare_classes(labels)
            sink.watch([*sinks, *reporters])
            return sink.meter(source)
    return source
