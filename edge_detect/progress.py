"""Progress of long commands (``eval``, ``calibrate``, ``bench``) on stderr, for a person waiting
at a terminal: one line rewritten in place, at most twice a second, with the share done and the
time left. Silent when stderr is not a terminal (a service, CI, a log file), so logs and pipes
never see control characters. stdout is never touched: it carries the commands' results.

The runtime has no tqdm (a workstation extra), and needs little: :class:`Progress` counts any
unit (audio seconds, clips); :func:`with_progress` wraps a pipeline source so that a stream's
audio seconds are counted as the pipeline reads them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from edge_detect.sources import Block, Source

__all__ = ["Progress", "progress", "with_progress"]

T = TypeVar("T")

MIN_INTERVAL_S = 0.5
"""Least time between two redraws of the line, in s."""


class Progress:
    """A one-line progress display of ``total`` units (silent unless ``out`` is a terminal).

    Parameters
    ----------
    total : float
        Units of the whole job (audio seconds, clips, ...); <= 0 shows counts without a share.
    desc : str
        What is being done, shown first.
    unit : str
        Name of the unit, shown after the counts.
    out : text stream, optional
        Where to draw; stderr by default.
    """

    def __init__(self, total: float, desc: str, unit: str = "", out: TextIO | None = None):
        self.out = out if out is not None else sys.stderr
        self.enabled = bool(getattr(self.out, "isatty", lambda: False)())
        self.total, self.desc, self.unit = float(total), desc, unit
        self.done = 0.0
        self._started = time.monotonic()
        self._drawn = -float("inf")
        self._width = 0

    def update(self, amount: float = 1.0) -> None:
        """Count ``amount`` more units done; redraws at most every :data:`MIN_INTERVAL_S`."""
        self.done += amount
        if self.enabled and time.monotonic() - self._drawn >= MIN_INTERVAL_S:
            self._draw()

    def _draw(self) -> None:
        self._drawn = now = time.monotonic()
        elapsed = now - self._started
        if self.total > 0:
            share = min(1.0, self.done / self.total)
            left = elapsed * (1 - share) / share if share > 0 else float("nan")
            eta = f", {left:.0f} s left" if left == left else ""
            text = f"{self.desc}: {share:4.0%} ({self.done:.0f}/{self.total:.0f}{self.unit}{eta})"
        else:
            text = f"{self.desc}: {self.done:.0f}{self.unit} ({elapsed:.0f} s)"
        padding = " " * max(0, self._width - len(text))
        self._width = len(text)
        self.out.write("\r" + text + padding)
        self.out.flush()

    def close(self) -> None:
        """Draw the final count and end the line (nothing when silent)."""
        if self.enabled:
            self._draw()
            self.out.write("\n")
            self.out.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(items: Iterable[T], total: int, desc: str, out: TextIO | None = None) -> Iterator[T]:
    """``items``, counting one unit per item."""
    with Progress(total, desc, out=out) as bar:
        for item in items:
            yield item
            bar.update()


class _ProgressSource:
    def __init__(self, source: Source, bar: Progress) -> None:
        self._source, self._bar = source, bar
        self.name = source.name
        self.sample_rate_hz = source.sample_rate_hz

    def blocks(self) -> Iterator[Block]:
        with self._bar:
            for block in self._source.blocks():
                yield block
                self._bar.update(len(block.samples) / self.sample_rate_hz)

    def stop(self) -> None:
        self._source.stop()


def with_progress(source: Source, total_s: float, desc: str, out: TextIO | None = None) -> Source:
    """``source``, counting the audio seconds it hands out against ``total_s``."""
    return _ProgressSource(source, Progress(total_s, desc, " s of audio", out=out))
