"""Progress of long commands: one line on a terminal's stderr, nothing anywhere else."""

from __future__ import annotations

import io

import numpy as np

from edge_detect.audio import Audio
from edge_detect.progress import Progress, progress, with_progress
from edge_detect.sources import WavFileSource


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_rewritten_in_place() -> None:
    out = Terminal()
    with Progress(10, "eval clips", out=out) as bar:
        for _ in range(10):
            bar.update()
    text = out.getvalue()
    assert text.startswith("\reval clips:") and text.endswith("\n")
    assert text.count("\n") == 1  # one line, rewritten with \r
    assert "100% (10/10" in text.rsplit("\r", 1)[-1]


def test_not_a_terminal_gets_nothing() -> None:
    out = io.StringIO()
    assert list(progress(range(5), 5, "eval clips", out=out)) == [0, 1, 2, 3, 4]
    assert out.getvalue() == ""


def test_a_source_counts_its_audio_seconds() -> None:
    rate = 16_000
    audio = Audio(np.zeros(3 * rate, dtype=np.float32), rate)
    source = WavFileSource("x", rate, block_ms=100, realtime=False, audio=audio)
    out = Terminal()
    wrapped = with_progress(source, 3.0, "stream", out=out)
    blocks = list(wrapped.blocks())
    assert sum(len(b.samples) for b in blocks) == 3 * rate
    assert "100% (3/3 s of audio" in out.getvalue().rsplit("\r", 1)[-1]
    assert wrapped.name == source.name and wrapped.sample_rate_hz == rate
