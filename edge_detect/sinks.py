"""Where alerts go. Every output implements :class:`Sink`; the pipeline fans out to all of them.

A sink's ``emit`` must return quickly: a sink that talks to the network commits the message to
its durable queue and delivers from another thread, so the audio path never waits.
"""

from __future__ import annotations

import sys
from typing import Protocol, TextIO

from edge_detect.alerts import Alert, HealthEvent

__all__ = ["JsonLinesSink", "Sink"]


class Sink(Protocol):
    """The small interface every output implements."""

    def emit(self, message: Alert | HealthEvent) -> None:
        """Accept one alert or health event (quickly; never blocks on the network)."""

    def close(self) -> None:
        """Flush what can be flushed and release resources."""


class JsonLinesSink:
    """One JSON line per message on a text stream (stdout by default), flushed at once."""

    def __init__(self, stream: TextIO | None = None, *, health: bool = False) -> None:
        self._stream = stream
        self._health = health

    def emit(self, message: Alert | HealthEvent) -> None:
        """Write one JSON line (health events only when asked for) and flush it."""
        if isinstance(message, HealthEvent) and not self._health:
            return
        stream = self._stream or sys.stdout
        stream.write(message.to_json() + "\n")
        stream.flush()

    def close(self) -> None:
        """Flush the stream (it is not closed: it may be stdout)."""
        stream = self._stream or sys.stdout
        stream.flush()
