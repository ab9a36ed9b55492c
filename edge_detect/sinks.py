"""Where alerts go. Every output implements :class:`Sink`; the pipeline fans out to all of them.

A sink's ``emit`` must return quickly: a sink that talks to the network commits the message to
its durable queue and delivers from another thread, so the audio path never waits.

The package's own outputs derive from :class:`Output`, which adds what an operator needs from
an output besides ``emit``: what it reports (:meth:`Output.collect`, read by the metrics
endpoint, so a wrapper such as the throttle passes its inner output's figures on instead of
hiding them), and a way to raise health events from its own threads (:meth:`Output.bind_health`:
a delivery thread restarted, an outbox moved aside, a disk that is full, an endpoint disabled).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol, TextIO, runtime_checkable

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.supervise import HealthReporter, Supervised

__all__ = ["Figure", "JsonLinesSink", "Output", "Reporter", "Sink"]

log = logging.getLogger(__name__)

Figure = tuple[str, Mapping[str, str], float]
"""One value an output reports: ``(metric family, labels, value)``, e.g.
``("edge_detect_outbox_depth", {}, 3.0)``; the families are declared in
:class:`edge_detect.metrics.DetectorMetrics`."""

MAX_EARLY_EVENTS = 100
"""Health events an output keeps until it is bound to a pipeline (raised while it was built)."""


@runtime_checkable
class Reporter(Protocol):
    """Anything that reports figures for the metrics: outputs, the clip recorder, the
    microphone. The metrics endpoint asks each one, instead of probing for attributes (a
    wrapper such as the throttle would hide them)."""

    def collect(self) -> Iterable[Figure]:
        """The figures now."""
        ...


class Sink(Protocol):
    """The small interface every output implements."""

    def emit(self, message: Alert | HealthEvent) -> None:
        """Accept one alert or health event (quickly; never blocks on the network)."""

    def close(self) -> None:
        """Flush what can be flushed and release resources."""


class Output:
    """Base class of edge-detect's outputs: a :class:`Sink` that reports figures and raises
    health events.

    Subclasses implement :meth:`emit` and :meth:`close`, add their background threads to
    :attr:`threads` (each a :class:`~edge_detect.supervise.Supervised` reporting through
    :meth:`health`), and extend :meth:`collect` with their own figures.
    """

    def __init__(self) -> None:
        self._report: HealthReporter | None = None
        self._early: list[tuple[str, str]] = []
        self.threads: list[Supervised] = []
        """This output's supervised background threads (their state is in :meth:`collect`)."""

    def emit(self, message: Alert | HealthEvent) -> None:
        """Accept one alert or health event (subclasses implement it)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (nothing by default)."""

    def bind_health(self, report: HealthReporter) -> None:
        """Send this output's health events to ``report`` (the pipeline's ``health``); events
        raised before are sent now, in order."""
        self._report = report
        early, self._early = self._early, []
        for event, detail in early:
            report(event, detail)

    def health(self, event: str, detail: str) -> None:
        """Raise a health event (from any thread); kept until bound, if not yet bound."""
        if self._report is not None:
            self._report(event, detail)
        elif len(self._early) < MAX_EARLY_EVENTS:
            self._early.append((event, detail))
        else:
            log.warning("health event not sent (output not connected yet): %s %s", event, detail)

    def supervise(self, name: str, work: Callable[[], object], stop: threading.Event) -> Supervised:
        """Start ``work`` on a supervised thread that reports through :meth:`health`."""
        thread = Supervised(name, work, stop=stop, report=self.health)
        self.threads.append(thread)
        return thread.start()

    def collect(self) -> Iterable[Figure]:
        """What this output reports now (its threads' state, plus a subclass's own)."""
        for thread in self.threads:
            yield from thread.figures()


class JsonLinesSink(Output):
    """One JSON line per message on a text stream (stdout by default), flushed at once."""

    def __init__(self, stream: TextIO | None = None, *, health: bool = False) -> None:
        super().__init__()
        self._stream = stream
        self._health = health

    def emit(self, message: Alert | HealthEvent) -> None:
        """Write one JSON line (health events only when asked for) and flush it."""
        if isinstance(message, HealthEvent) and not self._health:
            return
        stream = self._stream or sys.stdout
        stream.write(message.to_json() + "\n")  # one write: lines from two threads never mix
        stream.flush()

    def close(self) -> None:
        """Flush the stream (it is not closed: it may be stdout)."""
        stream = self._stream or sys.stdout
        stream.flush()
