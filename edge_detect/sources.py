"""Audio sources: a WAV file or raw PCM on stdin, as mono float32 blocks (the microphone is in
:mod:`edge_detect.microphone`).

Every source yields :class:`Block` objects of about ``block_ms`` of audio at the model's sample
rate (other rates are resampled, several channels are averaged) until the input ends or
:meth:`Source.stop` is called from another thread or a signal handler.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from edge_detect.audio import (
    PCM_FORMATS,
    Audio,
    StreamingResampler,
    WavReader,
    check_rate,
    pcm_to_float,
    to_mono,
)
from edge_detect.errors import AudioError, ConfigError

__all__ = [
    "Block",
    "HealthCallback",
    "RawPcmSource",
    "Source",
    "WavFileSource",
    "block_samples",
    "check_device_spec",
]

log = logging.getLogger(__name__)

HealthCallback = Callable[[str, str], object]
"""``callback(event, detail)``: event is 'microphone_lost', 'microphone_restored' or 'overflow'."""

FILE_READ_MS = 500.0
"""Audio read from a file per read call, in ms (bounded memory, few system calls)."""
MIN_BLOCK_MS = 5.0
MAX_BLOCK_MS = 2_000.0


@dataclass(frozen=True)
class Block:
    """A block of mono audio at the model's sample rate."""

    samples: npt.NDArray[np.float32]
    """Samples in [-1, 1], shape (n,)."""
    end_time: float
    """Wall-clock time (``time.time()``) of the block's last sample."""


class Source(Protocol):
    """What the pipeline reads audio from."""

    name: str
    sample_rate_hz: int

    def blocks(self) -> Iterator[Block]:
        """Yield blocks until the input ends or :meth:`stop` is called."""

    def stop(self) -> None:
        """Ask :meth:`blocks` to end soon (thread- and signal-safe)."""


def block_samples(block_ms: float, sample_rate_hz: int) -> int:
    """Samples in one block of ``block_ms`` at ``sample_rate_hz`` (at least 1)."""
    if isinstance(block_ms, bool) or not isinstance(block_ms, (int, float)):
        raise ConfigError(f"block_ms must be a number of milliseconds, got {block_ms!r}")
    if not MIN_BLOCK_MS <= block_ms <= MAX_BLOCK_MS:
        raise ConfigError(
            f"block_ms={block_ms} is out of range: expected {MIN_BLOCK_MS:g} to {MAX_BLOCK_MS:g} "
            "ms (100 ms is a good choice on a Raspberry Pi)"
        )
    return max(1, round(block_ms * sample_rate_hz / 1000.0))


class WavFileSource:
    """A WAV file, as fast as possible or paced in real time (as a microphone would deliver it).

    The file is read in blocks (:class:`~edge_detect.audio.WavReader`), resampled and downmixed
    as a stream, so memory stays bounded for a file of any length (an hour at 48 kHz stereo is
    660 MB of samples).

    Time: a block's ``end_time`` is when the detector had it: the run's start plus the audio's
    own time when paced, and the moment it was read when faster than real time (never a time in
    the future). Where in the file an event is, alerts say in ``offset_s``.

    ``audio`` replaces reading ``path`` (audio already decoded, e.g. FLAC by an evaluation
    tool); ``repeat`` plays the file that many times in a row (a long stream for benchmarks,
    without the memory).
    """

    def __init__(
        self,
        path: str | Path,
        sample_rate_hz: int,
        *,
        block_ms: float = 100.0,
        realtime: bool,
        audio: Audio | None = None,
        repeat: int = 1,
    ) -> None:
        if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
            raise ConfigError(f"repeat must be a whole number >= 1, got {repeat!r}")
        self.repeat = repeat
        self.name = str(path)
        self.path = Path(path)
        self.sample_rate_hz = check_rate(sample_rate_hz, "model sample rate")
        self._block = block_samples(block_ms, self.sample_rate_hz)
        self._audio = audio
        if audio is None:
            with WavReader(path) as reader:  # the header now: a bad file fails at start-up
                self.file_sample_rate_hz = reader.sample_rate_hz
                self._file_frames = reader.frames
        else:
            self.file_sample_rate_hz = audio.sample_rate_hz
            self._file_frames = len(audio.samples)
        self.realtime = realtime
        self._stop = threading.Event()

    @property
    def duration_s(self) -> float:
        """Duration of one pass over the file, in s (``inf``: a WAV on a pipe, length unknown)."""
        if self._file_frames is None:
            return math.inf
        return self._file_frames / self.file_sample_rate_hz

    def stop(self) -> None:
        """Ask :meth:`blocks` to end soon (thread- and signal-safe)."""
        self._stop.set()

    def _passes(self) -> Iterator[npt.NDArray[np.float32]]:
        """Mono chunks at the model's rate, pass after pass, any chunk lengths."""
        for _ in range(self.repeat):
            resampler = StreamingResampler(
                self.file_sample_rate_hz, self.sample_rate_hz, quality="VHQ"
            )
            if self._audio is not None:
                yield resampler.process(to_mono(self._audio.samples), last=True)
                continue
            with WavReader(self.path) as reader:
                step = block_samples(FILE_READ_MS, reader.sample_rate_hz)
                while not self._stop.is_set():
                    frames = reader.read(step)
                    last = len(frames) < step
                    yield resampler.process(to_mono(frames), last=last)
                    if last:
                        break

    def blocks(self) -> Iterator[Block]:
        """Blocks of mono audio at the model's rate until the input ends or :meth:`stop`."""
        start = time.time()
        clock_start = time.monotonic()
        pending: list[npt.NDArray[np.float32]] = []
        held = 0
        emitted = 0
        chunks = self._passes()
        ended = False
        while not ended:
            if self._stop.is_set():
                return
            chunk = next(chunks, None)
            if chunk is None:
                ended = True
            elif chunk.size:
                pending.append(chunk)
                held += chunk.size
            # whole blocks, and at the end whatever is left as one short block
            while held >= self._block or (ended and held):
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                size = min(self._block, held)
                out, rest = joined[:size], joined[size:]
                pending, held = ([rest] if rest.size else []), rest.size
                emitted += size
                audio_end_s = emitted / self.sample_rate_hz
                if self.realtime:
                    # wait until the block's last sample "has been recorded"
                    delay = clock_start + audio_end_s - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                yield Block(np.ascontiguousarray(out), min(start + audio_end_s, time.time()))
                if self._stop.is_set():
                    return


class RawPcmSource:
    """Raw interleaved PCM from a binary stream (stdin), e.g. ``arecord -t raw`` or ffmpeg.

    Parameters
    ----------
    stream : binary file
    sample_rate_hz : int
        The model's rate.
    input_rate_hz : int
        Rate of the incoming PCM; resampled in a streaming way when different.
    sample_format : str
        One of ``PCM_FORMATS`` (s16le, s32le, f32le).
    channels : int
        Interleaved channels, averaged to mono.
    """

    def __init__(
        self,
        stream: BinaryIO,
        sample_rate_hz: int,
        *,
        input_rate_hz: int,
        sample_format: str = "s16le",
        channels: int = 1,
        block_ms: float = 100.0,
        name: str = "stdin",
    ) -> None:
        if sample_format not in PCM_FORMATS:
            raise ConfigError(
                f"raw PCM format {sample_format!r} is not supported; expected one of "
                f"{sorted(PCM_FORMATS)}"
            )
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"channels must be a whole number >= 1, got {channels!r}")
        self.name = name
        self.sample_rate_hz = check_rate(sample_rate_hz, "model sample rate")
        self.input_rate_hz = check_rate(input_rate_hz, "input sample rate (--rate)")
        self._format = sample_format
        self._channels = channels
        self._frame_bytes = PCM_FORMATS[sample_format].itemsize * channels
        self._read_bytes = block_samples(block_ms, self.input_rate_hz) * self._frame_bytes
        self._stream = stream
        self._resampler = StreamingResampler(self.input_rate_hz, self.sample_rate_hz)
        self._stop = threading.Event()

    def stop(self) -> None:
        """Ask :meth:`blocks` to end soon (thread- and signal-safe)."""
        self._stop.set()

    def _read_block(self) -> bytes:
        """Read one block's bytes, or fewer at end of input (a pipe returns short reads)."""
        parts: list[bytes] = []
        needed = self._read_bytes
        while needed > 0 and not self._stop.is_set():
            part = self._stream.read(needed)
            if not part:
                break
            parts.append(part)
            needed -= len(part)
        return b"".join(parts)

    def blocks(self) -> Iterator[Block]:
        """Blocks of mono audio at the model's rate until the input ends or :meth:`stop`."""
        leftover = b""
        received = 0
        while not self._stop.is_set():
            data = leftover + self._read_block()
            received += len(data) - len(leftover)
            if not received and len(data) < self._read_bytes and not self._stop.is_set():
                raise AudioError(
                    f"no audio arrived on {self.name}: it ended before the first byte; expected "
                    f"raw {self._format} PCM at {self.input_rate_hz} Hz, {self._channels} "
                    "channel(s), e.g. arecord -q -f S16_LE -r 16000 -c 1 -t raw | "
                    "edge-detect run --input -"
                )
            usable = len(data) - len(data) % self._frame_bytes
            leftover = data[usable:]
            ended = len(data) < self._read_bytes
            if usable or ended:  # at the end, flush what the resampler's filter still holds
                mono = to_mono(pcm_to_float(data[:usable], self._format, self._channels))
                out = self._resampler.process(mono, last=ended)
                if out.size:
                    yield Block(out, time.time())
            if ended:
                if leftover:
                    log.warning(
                        "raw input ended with %d byte(s) that are not a whole %s frame of %d "
                        "channel(s); ignored",
                        len(leftover),
                        self._format,
                        self._channels,
                    )
                return


def check_device_spec(value: Any) -> int | str | None:
    """A device given in config or on the command line: an index, a name part, or None."""
    if value is None or value == "" or value == "default":
        return None
    if isinstance(value, bool):
        raise ConfigError(f"device must be an index or a name, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"device index must be >= 0, got {value}")
        return value
    if isinstance(value, str):
        return int(value) if value.strip().isdigit() else value
    raise ConfigError(f"device must be an index or a name, got {value!r}")
