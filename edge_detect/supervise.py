"""Supervised background threads: a thread that dies is restarted with backoff, and says so.

Every background thread of the detector (webhook delivery, MQTT, the metrics endpoint, the clip
writer, the audio input's PortAudio thread) runs its work through :class:`Supervised`. If the
work raises, the supervisor

- logs the exception once with its traceback (it is a bug or a fault we did not foresee),
- reports a ``thread_restarted`` health event naming the thread and the error,
- waits (1 s doubling to a minute, reset after a minute of healthy running) and runs it again,

so an output that fails never stops detection or the other outputs, and a person can see it:
``edge_detect_thread_restarts_total{thread}`` and ``edge_detect_thread_up{thread}`` in the
metrics, and a line in ``edge-detect status``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

__all__ = ["HealthReporter", "Supervised"]

log = logging.getLogger(__name__)

HealthReporter = Callable[[str, str], object]
"""``report(event, detail)``: how a component raises a health event."""

RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_AFTER_S = 60.0
"""A thread that ran this long since its last restart starts again from the shortest wait."""


class Supervised:
    """Run ``work()`` on a daemon thread until it returns; restart it whenever it raises.

    Parameters
    ----------
    name
        The thread's name in logs, health events and metrics (e.g. ``webhook ha``).
    work
        The thread's loop. It returns when its owner asks it to stop (``stop`` is set); raising
        means a fault, and it is run again after a wait.
    stop
        Set by the owner to end the thread; a pending restart wait ends at once.
    report
        Where the ``thread_restarted`` health event goes (settable later as :attr:`report`).
    restart_initial_s, restart_max_s
        First and longest wait before a restart, seconds (doubling in between).
    """

    def __init__(
        self,
        name: str,
        work: Callable[[], object],
        *,
        stop: threading.Event,
        report: HealthReporter | None = None,
        restart_initial_s: float = RESTART_INITIAL_S,
        restart_max_s: float = RESTART_MAX_S,
    ) -> None:
        self.name = name
        self._work = work
        self._stop = stop
        self.report = report
        self.restart_initial_s = restart_initial_s
        self.restart_max_s = restart_max_s
        self.restarts = 0
        """Times the work raised and was started again."""
        self.last_error: str | None = None
        self._running = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Supervised:
        """Start the thread; returns self."""
        self._thread.start()
        return self

    @property
    def up(self) -> bool:
        """True while the work runs (False while it waits to be restarted, or has ended)."""
        return self._running and self._thread.is_alive()

    def is_alive(self) -> bool:
        """True until the thread has ended (also while it waits to restart its work)."""
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (at most ``timeout`` seconds)."""
        self._thread.join(timeout)

    def _run(self) -> None:
        wait = self.restart_initial_s
        while not self._stop.is_set():
            started = time.monotonic()
            self._running = True
            try:
                self._work()
                return  # the owner asked it to stop
            except Exception as exc:  # noqa: BLE001 - the point: no fault ends the thread
                self._running = False
                if time.monotonic() - started >= HEALTHY_AFTER_S:
                    wait = self.restart_initial_s
                self.restarts += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("thread %r failed; restarting it in %g s", self.name, wait)
                if self.report is not None:
                    try:
                        self.report(
                            "thread_restarted",
                            f"{self.name}: {self.last_error}; restart {self.restarts} in "
                            f"{wait:g} s",
                        )
                    except Exception:  # noqa: BLE001 - reporting must not end the thread
                        log.exception("reporting the failure of thread %r failed", self.name)
                if self._stop.wait(wait):
                    return
                wait = min(wait * 2, self.restart_max_s)
            finally:
                self._running = False

    def figures(self) -> Iterable[tuple[str, Mapping[str, str], float]]:
        """``edge_detect_thread_up`` and ``edge_detect_thread_restarts_total`` of this thread."""
        labels = {"thread": self.name}
        yield "edge_detect_thread_up", labels, 1.0 if self.up else 0.0
        yield "edge_detect_thread_restarts_total", labels, float(self.restarts)
