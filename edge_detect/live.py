"""``edge-detect run --show``: a live view of what the detector hears, for placing the
microphone and choosing thresholds.

Several times a second it draws the input level, each class's smoothed score as a bar against
its ``threshold_on`` (``|``) and ``threshold_off`` (``:``), and the latest alerts. It draws on
stderr, and only when stderr is a terminal: stdout keeps carrying nothing but the alerts' JSON
lines (``edge-detect run --show > alerts.jsonl`` watches and records at once). When stderr is
not a terminal (a service, a pipe, a log file) it writes one plain line per second instead, with
no terminal control codes.

:class:`LiveView` wraps the pipeline's source: when the pipeline asks for the next block it has
finished the previous one, so the view reads the detector's state then, and the audio path does
nothing extra (a redraw costs a few hundred microseconds, at most ``refresh_hz`` times a second).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from edge_detect.pipeline import Pipeline
from edge_detect.sources import Block, Source

__all__ = ["LiveView", "format_view", "level_dbfs"]

REFRESH_HZ = 5.0
"""Terminal redraws per second at most."""
PLAIN_EVERY_S = 1.0
"""Seconds between two plain status lines when not drawing on a terminal."""
BAR_WIDTH = 40
"""Characters of a score bar (0 to 1)."""
LEVEL_FLOOR_DB = -90.0
"""Lowest input level shown, in dBFS (digital silence reads as this)."""
RECENT_ALERTS = 5
"""Alerts listed under the bars."""
CLEAR = "\x1b[H\x1b[2J"
"""Cursor home and clear screen (ANSI)."""


def level_dbfs(samples: Any) -> float:
    """RMS level of a block in dB relative to full scale (a full-scale sine is -3 dBFS)."""
    x = np.asarray(samples, dtype=np.float64)
    rms = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return max(LEVEL_FLOOR_DB, 20.0 * math.log10(rms)) if rms > 0 else LEVEL_FLOOR_DB


def _bar(value: float, marks: dict[float, str], width: int = BAR_WIDTH) -> str:
    """``value`` in [0, 1] as a bar of ``#``, with ``marks`` (position -> character) on it."""
    filled = round(min(1.0, max(0.0, value)) * width)
    cells = ["#" if i < filled else "." for i in range(width)]
    for position, char in marks.items():
        cells[min(width - 1, round(position * width))] = char
    return "[" + "".join(cells) + "]"


def format_view(pipeline: Pipeline, level_db: float, source_name: str) -> list[str]:
    """The lines of one frame of the view."""
    stats = pipeline.stats
    lines = [
        f"edge-detect  {source_name}  model {pipeline.model.model_id}  "
        f"{stats.audio_s:7.1f} s  alerts {stats.alerts}",
        "",
        f"{'level':12} {level_db:6.1f} dBFS "
        + _bar((level_db - LEVEL_FLOOR_DB) / -LEVEL_FLOOR_DB, {}),
        "",
        f"{'class':12} {'score':>6}      {'0':<{BAR_WIDTH // 2}}{'1':>{BAR_WIDTH // 2 + 1}}"
        "    on     off",
    ]
    for detector in pipeline.detector.classes:
        s = detector.settings
        if not s.enabled:
            continue
        marks = {s.threshold_off: ":", s.threshold_on: "|"}
        state = " ALERT" if detector.active else ""
        lines.append(
            f"{detector.label:12} {detector.smoothed:6.3f}      {_bar(detector.smoothed, marks)} "
            f"{s.threshold_on:5.3f}  {s.threshold_off:5.3f}{state}"
        )
    lines += ["", "recent alerts (| = threshold_on, : = threshold_off):"]
    recent = pipeline.emitted[-RECENT_ALERTS:]
    if not recent:
        lines.append("  none yet")
    for alert in reversed(recent):
        offset = alert.extra.get("offset_s")
        where = f" at {offset:.2f} s" if isinstance(offset, (int, float)) else ""
        lines.append(f"  {alert.start[11:19]}  {alert.label:12} score {alert.score:.2f}{where}")
    return lines


class LiveView:
    """Wraps a source; after each block the pipeline processed, redraws the view on ``out``.

    Parameters
    ----------
    pipeline : Pipeline
        The pipeline that reads the wrapped source (its detector state and alerts are shown).
    out : text stream
        Where to draw (stderr). A terminal gets the drawn view, anything else plain lines.
    refresh_hz : float
        Most redraws per second on a terminal.
    """

    def __init__(self, pipeline: Pipeline, out: TextIO, refresh_hz: float = REFRESH_HZ) -> None:
        self.pipeline = pipeline
        self.out = out
        self.terminal = bool(getattr(out, "isatty", lambda: False)())
        self.interval_s = 1.0 / refresh_hz if self.terminal else PLAIN_EVERY_S
        self._last_draw = -math.inf
        self.frames = 0
        """How many times the view was drawn (or a plain line written)."""

    def watch(self, source: Source) -> Source:
        """``source``, seen through the view."""
        return _WatchedSource(source, self)

    def update(self, block: Block | None, source_name: str, *, force: bool = False) -> None:
        """Draw now if the refresh interval has passed (or ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_draw < self.interval_s:
            return
        self._last_draw = now
        level = level_dbfs(block.samples) if block is not None else LEVEL_FLOOR_DB
        if self.terminal:
            lines = format_view(self.pipeline, level, source_name)
            self.out.write(CLEAR + "\n".join(lines) + "\n")
        else:
            self.out.write(self._plain_line(level) + "\n")
        self.out.flush()
        self.frames += 1

    def _plain_line(self, level_db: float) -> str:
        scores = " ".join(
            f"{d.label}={d.smoothed:.2f}/{d.settings.threshold_on:.2f}"
            for d in self.pipeline.detector.classes
            if d.settings.enabled
        )
        return (
            f"live: {self.pipeline.stats.audio_s:.1f} s level {level_db:.1f} dBFS "
            f"score/threshold_on {scores} alerts {self.pipeline.stats.alerts}"
        )


class _WatchedSource:
    """A source whose every block, once processed, updates a :class:`LiveView`."""

    def __init__(self, source: Source, view: LiveView) -> None:
        self._source = source
        self._view = view
        self.name = source.name
        self.sample_rate_hz = source.sample_rate_hz

    def blocks(self) -> Iterator[Block]:
        previous: Block | None = None
        for block in self._source.blocks():
            if previous is not None:  # the pipeline has processed it: its scores are current
                self._view.update(previous, self.name)
            yield block
            previous = block
        self._view.update(previous, self.name, force=True)

    def stop(self) -> None:
        self._source.stop()
