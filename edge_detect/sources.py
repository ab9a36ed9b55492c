"""Audio sources: a WAV file, raw PCM on stdin, or a microphone, as mono float32 blocks.

Every source yields :class:`Block` objects of about ``block_ms`` of audio at the model's sample
rate (other rates are resampled, several channels are averaged) until the input ends or
:meth:`Source.stop` is called from another thread or a signal handler.

The microphone source never gives up: a stream error, a device that disappears (USB microphone
unplugged) or a stream that delivers no audio for ``stall_timeout_s`` closes the stream, reports
``microphone_lost``, and reopens it with exponential backoff. Before every reopen PortAudio is
re-initialised, because PortAudio enumerates devices only when it starts and would never see a
replugged microphone otherwise. When audio flows again it reports ``microphone_restored``.

sounddevice (and the PortAudio library under it) is imported only when a microphone is used, so
WAV and stdin input work on a machine without ``libportaudio2``.
"""

from __future__ import annotations

import logging
import math
import queue
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
from edge_detect.errors import AudioDeviceError, AudioError, ConfigError

CLOSE_TIMEOUT_S = 2.0
"""Longest wait for a lost microphone's stream to close before it is abandoned."""

__all__ = [
    "Block",
    "HealthCallback",
    "MicrophoneSource",
    "RawPcmSource",
    "Source",
    "WavFileSource",
    "block_samples",
    "check_device_spec",
    "list_input_devices",
]

log = logging.getLogger(__name__)

HealthCallback = Callable[[str, str], object]
"""``callback(event, detail)``: event is 'microphone_lost', 'microphone_restored' or 'overflow'."""

FILE_READ_MS = 500.0
"""Audio read from a file per read call, in ms (bounded memory, few system calls)."""
MIN_BLOCK_MS = 5.0
MAX_BLOCK_MS = 2_000.0
PORTAUDIO_HINT = (
    "sounddevice could not load the PortAudio library, which microphone input needs. "
    "Install it with: sudo apt install libportaudio2  (WAV and stdin input work without it)"
)


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


def _sounddevice() -> Any:
    """Import sounddevice, turning a missing PortAudio library into a clear error."""
    try:
        import sounddevice
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise AudioDeviceError(f"{PORTAUDIO_HINT} ({exc})") from None
    except ImportError:
        raise AudioDeviceError(
            "microphone input needs the Python package 'sounddevice': pip install sounddevice"
        ) from None
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Input devices PortAudio sees: index, name, channels, default rate, host API, default."""
    sd = _sounddevice()
    try:
        default_in = sd.default.device[0]
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise AudioDeviceError(f"PortAudio cannot list devices: {exc}") from None
    out = []
    for index, device in enumerate(devices):
        if device["max_input_channels"] < 1:
            continue
        out.append(
            {
                "index": index,
                "name": device["name"],
                "channels": int(device["max_input_channels"]),
                "default_rate_hz": int(device["default_samplerate"]),
                "hostapi": hostapis[device["hostapi"]]["name"],
                "default": index == default_in,
            }
        )
    return out


def _resolve_device(sd: Any, spec: int | str | None) -> tuple[int | None, dict[str, Any]]:
    """The (index, info) of the input device named by ``spec`` (index, name part, or default)."""
    if spec is None:
        info = sd.query_devices(kind="input")
        return None, dict(info)
    devices = sd.query_devices()
    if isinstance(spec, int):
        if not 0 <= spec < len(devices) or devices[spec]["max_input_channels"] < 1:
            raise AudioDeviceError(
                f"no input device with index {spec}; run 'edge-detect devices' to list them"
            )
        return spec, dict(devices[spec])
    matches = [
        (i, d)
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0 and spec.lower() in d["name"].lower()
    ]
    if not matches:
        raise AudioDeviceError(
            f"no input device whose name contains {spec!r}; run 'edge-detect devices' to list them"
        )
    exact = [(i, d) for i, d in matches if d["name"].lower() == spec.lower()]
    index, info = (exact or matches)[0]
    return index, dict(info)


class MicrophoneSource:
    """A live microphone through PortAudio, reopened with backoff whenever it fails.

    Parameters
    ----------
    sample_rate_hz : int
        The model's rate. The device is opened at its own default rate (always supported) and
        resampled, so a microphone fixed at 44.1 or 48 kHz works.
    device : int, str or None
        Index, or part of the name (as ``edge-detect devices`` shows), or None for the default.
    block_ms : float
        Audio per callback and per block, in ms.
    on_health : callable, optional
        Called as ``on_health(event, detail)`` on 'microphone_lost', 'microphone_restored' and
        'overflow' (at most once per ``overflow_report_s``).
    stall_timeout_s : float
        No audio for this long counts as a lost microphone.
    backoff_initial_s, backoff_max_s : float
        First and longest wait between reopen attempts (doubling in between).
    """

    def __init__(
        self,
        sample_rate_hz: int,
        *,
        device: int | str | None = None,
        block_ms: float = 100.0,
        on_health: HealthCallback | None = None,
        stall_timeout_s: float = 3.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 10.0,
        overflow_report_s: float = 60.0,
    ) -> None:
        self.sample_rate_hz = check_rate(sample_rate_hz, "model sample rate")
        self.device = device
        self.name = "microphone" if device is None else f"microphone {device!r}"
        self.block_ms = block_ms
        block_samples(block_ms, self.sample_rate_hz)  # validate early
        self._on_health = on_health or (lambda event, detail: None)
        self.stall_timeout_s = stall_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.overflow_report_s = overflow_report_s
        self.overflows = 0
        """Input overflows (audio the OS dropped because we read too late) since the start."""
        self.reopens = 0
        """Times the stream was reopened after a failure."""
        self._reported_overflows = 0
        self._last_overflow_report = 0.0
        self._stop = threading.Event()
        self._queue: queue.Queue[tuple[npt.NDArray[np.float32], float] | None] = queue.Queue()
        self._failed = threading.Event()
        self._failure = ""
        self._sd = _sounddevice()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)  # wake the reader

    # -- stream handling -------------------------------------------------------------------
    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._queue.put((to_mono(np.array(indata, dtype=np.float32)), time.time()))

    def _finished(self) -> None:
        if not self._stop.is_set():
            self._failure = "the audio stream stopped"
            self._failed.set()
            self._queue.put(None)

    def _open(self, reinitialise: bool) -> tuple[Any, StreamingResampler]:
        sd = self._sd
        if reinitialise:
            # PortAudio lists devices once, at initialisation: restart it to see a replugged mic.
            # In a daemon thread with a deadline, like closing: a dead audio server can make it
            # block, and the detector must stay responsive and keep retrying.
            errors: list[Exception] = []

            def restart() -> None:
                try:
                    sd._terminate()
                except sd.PortAudioError as exc:
                    log.debug("PortAudio terminate: %s", exc)
                try:
                    sd._initialize()
                except Exception as exc:  # noqa: BLE001 - reported by the caller's retry
                    errors.append(exc)

            worker = threading.Thread(target=restart, name="edge-detect-pa-restart", daemon=True)
            worker.start()
            worker.join(CLOSE_TIMEOUT_S * 2)
            if worker.is_alive():
                raise AudioDeviceError("PortAudio did not re-initialise in time")
            if errors:
                raise errors[0]
        index, info = _resolve_device(sd, self.device)
        native_rate = int(info["default_samplerate"])
        channels = 1
        stream = None
        last_error: Exception | None = None
        for channels in dict.fromkeys((1, int(info["max_input_channels"]))):
            try:
                stream = sd.InputStream(
                    device=index,
                    samplerate=native_rate,
                    channels=channels,
                    dtype="float32",
                    blocksize=block_samples(self.block_ms, native_rate),
                    callback=self._callback,
                    finished_callback=self._finished,
                )
                break
            except sd.PortAudioError as exc:
                last_error = exc
        if stream is None:
            raise AudioDeviceError(f"cannot open input device {info['name']!r}: {last_error}")
        self._failed.clear()
        stream.start()
        log.info(
            "microphone %r open: %d Hz, %d channel(s), resampled to %d Hz",
            info["name"],
            native_rate,
            channels,
            self.sample_rate_hz,
        )
        return stream, StreamingResampler(native_rate, self.sample_rate_hz)

    def _close(self, stream: Any) -> None:
        """Abort and close ``stream`` without ever blocking the detector for long.

        PortAudio's ALSA-over-PulseAudio path can block for good in abort/close when the audio
        server died under it; closing from a daemon thread with a deadline keeps the detector
        responsive (health events, SIGINT) and the reopen loop going. A stream whose close hangs
        is abandoned (logged), not waited for.
        """
        if stream is None:
            return

        def close() -> None:
            try:
                stream.abort(ignore_errors=True)
                stream.close(ignore_errors=True)
            except Exception as exc:  # noqa: BLE001 - a dead device may raise anything here
                log.debug("closing the stream failed: %s", exc)

        closer = threading.Thread(target=close, name="edge-detect-mic-close", daemon=True)
        closer.start()
        closer.join(CLOSE_TIMEOUT_S)
        if closer.is_alive():
            log.warning(
                "closing the microphone stream did not finish within %.0f s; abandoned",
                CLOSE_TIMEOUT_S,
            )

    def _report_overflows(self) -> None:
        now = time.monotonic()
        new = self.overflows - self._reported_overflows
        if new and now - self._last_overflow_report >= self.overflow_report_s:
            detail = f"{new} input overflow(s) (audio dropped), {self.overflows} in total"
            log.warning("microphone: %s", detail)
            self._on_health("overflow", detail)
            self._reported_overflows = self.overflows
            self._last_overflow_report = now

    def blocks(self) -> Iterator[Block]:
        stream: Any = None
        resampler: StreamingResampler | None = None
        lost = False
        backoff = self.backoff_initial_s
        first_open = True
        last_audio = time.monotonic()
        try:
            while not self._stop.is_set():
                if stream is None:
                    try:
                        stream, resampler = self._open(reinitialise=not first_open)
                        last_audio = time.monotonic()
                    except Exception as exc:  # noqa: BLE001 - PortAudio errors of all kinds
                        # Also a device name that matches nothing: a USB microphone that is not
                        # plugged in yet at boot must not stop the service; the log says why.
                        if not lost:
                            lost = True
                            self._on_health("microphone_lost", f"cannot open: {exc}")
                        log.warning("microphone open failed: %s; retry in %.1f s", exc, backoff)
                        stream = None
                    first_open = False
                    if stream is None:
                        if self._stop.wait(backoff):
                            return
                        backoff = min(backoff * 2, self.backoff_max_s)
                        continue
                try:
                    item = self._queue.get(timeout=0.2)
                except queue.Empty:
                    item = None
                if item is not None and resampler is not None:
                    samples, captured = item
                    if lost:
                        lost = False
                        self.reopens += 1
                        log.warning("microphone restored")
                        self._on_health("microphone_restored", f"reopened ({self.name})")
                    backoff = self.backoff_initial_s
                    last_audio = time.monotonic()
                    out = resampler.process(samples)
                    self._report_overflows()
                    if out.size:
                        yield Block(out, captured)
                    continue
                stalled = time.monotonic() - last_audio > self.stall_timeout_s
                if self._failed.is_set() or stalled:
                    reason = self._failure or f"no audio for {self.stall_timeout_s:g} s"
                    self._failure = ""
                    # report first: closing a stream on a dead device may be slow
                    if not lost:
                        lost = True
                        log.warning("microphone lost: %s; reopening", reason)
                        self._on_health("microphone_lost", reason)
                    self._close(stream)
                    stream = None
                    self._drain()
        finally:
            self._close(stream)

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
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
