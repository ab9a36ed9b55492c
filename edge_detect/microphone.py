"""The microphone: PortAudio (through sounddevice), reopened with backoff whenever it fails.

The microphone source never gives up: a stream error, a device that disappears (USB microphone
unplugged) or a stream that delivers no audio for ``stall_timeout_s`` closes the stream, reports
``microphone_lost``, and reopens it with exponential backoff. Before every reopen PortAudio is
re-initialised, because PortAudio enumerates devices only when it starts and would never see a
replugged microphone otherwise. When audio flows again it reports ``microphone_restored``.

Every PortAudio call runs on one thread (:class:`PortAudioThread`), in order: PortAudio is not
thread-safe, and a stalled audio server can block a call for as long as the stall lasts.

sounddevice (and the PortAudio library under it) is imported only when a microphone is used, so
WAV and stdin input work on a machine without ``libportaudio2``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import math
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.audio import StreamingResampler, check_rate, to_mono
from edge_detect.errors import AudioDeviceError
from edge_detect.sources import Block, HealthCallback, block_samples

__all__ = [
    "MicrophoneSource",
    "PortAudioThread",
    "list_input_devices",
]

log = logging.getLogger(__name__)

OPEN_WAIT_S = 4.0
"""Longest wait for a PortAudio open (with re-initialisation) before the reader looks up again;
the call goes on, and nothing else is queued until it returns."""
CLOSE_WAIT_S = 2.0
"""Longest wait for a lost microphone's stream to close before the reader looks up again."""
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 60.0
"""Waits before the audio input is restarted after an unforeseen fault (doubling)."""
REPEAT_WARNING_S = 60.0
"""The same microphone warning is logged at most this often (a device missing for days)."""

NO_INPUT_HINT = (
    "no input device: PortAudio sees no default microphone (no sound server running, or no "
    "capture device). Check with 'edge-detect devices'; start PulseAudio/PipeWire or plug in a "
    "microphone, or name one with --device / [input] device"
)
PORTAUDIO_HINT = (
    "sounddevice could not load the PortAudio library, which microphone input needs. "
    "Install it with: sudo apt install libportaudio2  (WAV and stdin input work without it)"
)


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


class _Call:
    """One PortAudio call handed to the owner thread, and its outcome."""

    def __init__(self, name: str, function: Callable[[], Any]) -> None:
        self.name = name
        self.function = function
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started: float | None = None
        """time.monotonic() when the owner thread began it (None: still queued)."""


class PortAudioThread:
    """The one thread that makes every PortAudio call of a microphone source.

    PortAudio is not thread-safe: closing a stream, terminating and re-initialising the library
    and opening the next stream must never overlap. When the audio server stalls (SIGSTOP), a
    close can block for as long as the stall lasts; the detector used to abandon such a close
    in its own thread and re-initialise PortAudio beside it, and the old stream's teardown then
    freed memory the new instance used ("double free or corruption", SIGSEGV; issue 15 item 1).
    Here every call runs on this thread, in order: a blocked close delays the reopen behind it,
    never races it. The caller waits with a deadline and stays responsive (health events,
    signals) while a call is blocked; it asks :meth:`busy` before queueing another.
    """

    def __init__(self) -> None:
        self._calls: queue.Queue[_Call | None] = queue.Queue()
        self._current: _Call | None = None
        self._thread = threading.Thread(target=self._run, name="edge-detect portaudio", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            self._current = call
            call.started = time.monotonic()
            try:
                call.result = call.function()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, never lost
                call.error = exc
            finally:
                self._current = None
                call.done.set()

    def submit(self, name: str, function: Callable[[], Any]) -> _Call:
        """Queue ``function`` (it runs after every call queued before it)."""
        call = _Call(name, function)
        self._calls.put(call)
        return call

    def busy(self) -> _Call | None:
        """The call in progress, if any."""
        return self._current

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def stop(self) -> None:
        """End the thread after the calls queued so far."""
        self._calls.put(None)


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
        try:
            info = sd.query_devices(kind="input")
        except sd.PortAudioError:  # "Error querying device -1": there is no default input
            raise AudioDeviceError(NO_INPUT_HINT) from None
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


@dataclass
class _ReadState:
    """What one run of the reading loop keeps between iterations."""

    backoff: float
    first_open: bool
    stream: Any = None
    resampler: StreamingResampler | None = None
    lost: bool = False
    last_audio: float = dataclass_field(default_factory=time.monotonic)
    opening: _Call | None = None


class MicrophoneSource:
    """A live microphone through PortAudio, reopened with backoff whenever it fails.

    Every PortAudio call (open, close, re-initialise) runs on one :class:`PortAudioThread`, in
    order; the reader waits for each with a deadline, so a stalled audio server neither blocks
    the detector nor lets two PortAudio calls overlap.

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
        # (stream generation, samples, capture time); None wakes the reader
        self._queue: queue.Queue[tuple[int, npt.NDArray[np.float32], float] | None] = queue.Queue()
        self._generation = 0
        """Counts opened streams; audio a closing stream still delivers is recognised and
        dropped."""
        self._failed = threading.Event()
        self._failure = ""
        self._sd = _sounddevice()
        _take_over_portaudio_exit(self._sd)
        self._portaudio = PortAudioThread()
        _PORTAUDIO_THREADS.add(self._portaudio)
        self._pending: _Call | None = None
        """A PortAudio call that outlasted its wait; nothing else is queued until it is done."""
        self._last_warning = ("", -math.inf)
        self.restarts = 0
        """Times the reading failed unexpectedly and was restarted."""
        self.last_error: str | None = None
        self._up = False

    def stop(self) -> None:
        """Ask :meth:`blocks` to end soon (thread- and signal-safe)."""
        self._stop.set()
        self._queue.put(None)  # wake the reader

    # -- on the PortAudio thread -------------------------------------------------------------
    def _callback_for(self, generation: int) -> Callable[[Any, int, Any, Any], None]:
        def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
            if status.input_overflow:
                self.overflows += 1
            self._queue.put((generation, to_mono(np.array(indata, dtype=np.float32)), time.time()))

        return callback

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        """What PortAudio's callback thread calls for the current stream."""
        self._callback_for(self._generation)(indata, frames, time_info, status)

    def _finished_for(self, generation: int) -> Callable[[], None]:
        def finished() -> None:
            # a stream we closed on purpose also finishes: only the current one's end counts
            if not self._stop.is_set() and generation == self._generation:
                self._failure = "the audio stream stopped"
                self._failed.set()
                self._queue.put(None)

        return finished

    def _reinitialise(self) -> None:
        """Terminate and initialise PortAudio: it lists devices only when it starts, and a
        replugged microphone or a restarted audio server is seen only after this."""
        sd = self._sd
        try:
            sd._terminate()
        except sd.PortAudioError as exc:
            log.debug("PortAudio terminate: %s", exc)
        # Not sd._initialize(): it points stderr at /dev/null while it runs, and a stalled
        # server can make it run for as long as the stall, hiding every log line meanwhile.
        _quiet_alsa_errors()
        sd._check(sd._lib.Pa_Initialize(), "Error initializing PortAudio")
        sd._initialized += 1

    def _open_stream(self, reinitialise: bool, generation: int) -> tuple[Any, int]:
        """Open and start a stream (runs on the PortAudio thread); returns (stream, rate)."""
        sd = self._sd
        if reinitialise:
            self._reinitialise()
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
                    callback=self._callback_for(generation),
                    finished_callback=self._finished_for(generation),
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
        return stream, native_rate

    @staticmethod
    def _close_stream(stream: Any) -> None:
        """Abort and close (runs on the PortAudio thread; may block while the server stalls)."""
        try:
            stream.abort(ignore_errors=True)
            stream.close(ignore_errors=True)
        except Exception as exc:  # noqa: BLE001 - a dead device may raise anything here
            log.debug("closing the stream failed: %s", exc)

    # -- on the reader's thread --------------------------------------------------------------
    def _wait(self, call: _Call, seconds: float) -> bool:
        """Wait for ``call`` up to ``seconds`` (or until stop); True if it is done. If not, it
        becomes the pending call that must finish before anything else is queued."""
        deadline = time.monotonic() + seconds
        while not call.done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._stop.is_set() or time.monotonic() >= deadline:
                self._pending = call
                return False
        return True

    def _warn(self, message: str) -> None:
        """Log a warning, but the same one at most once a minute (a mic missing for a day)."""
        last, when = self._last_warning
        now = time.monotonic()
        if message != last or now - when >= REPEAT_WARNING_S:
            log.warning("%s", message)
            self._last_warning = (message, now)
        else:
            log.debug("%s", message)

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
        """Blocks of audio until :meth:`stop`; the reading is supervised: a fault nobody foresaw
        is logged, raised as a ``thread_restarted`` health event, and the input is reopened
        after a wait (1 s doubling to a minute), so detection goes on."""
        wait = RESTART_INITIAL_S
        first = True
        try:
            while not self._stop.is_set():
                try:
                    yield from self._read(reinitialise=not first)
                    return
                except Exception as exc:  # noqa: BLE001 - the point: audio must go on
                    self.restarts += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    log.exception("audio input failed; restarting it in %.0f s", wait)
                    self._on_health(
                        "thread_restarted",
                        f"audio: {self.last_error}; restart {self.restarts} in {wait:g} s",
                    )
                    first = False
                    self._up = False
                    if self._stop.wait(wait):
                        return
                    wait = min(wait * 2, RESTART_MAX_S)
        finally:
            self._portaudio.stop()

    def collect(self) -> Iterable[tuple[str, Mapping[str, str], float]]:
        """The audio input's supervision state for the metrics."""
        labels = {"thread": "audio"}
        yield "edge_detect_thread_up", labels, 1.0 if self._up and self._portaudio.alive else 0.0
        yield "edge_detect_thread_restarts_total", labels, float(self.restarts)

    def _read(self, reinitialise: bool) -> Iterator[Block]:
        """One run of the reading loop: open, read, notice a loss, reopen, until stopped."""
        st = _ReadState(backoff=self.backoff_initial_s, first_open=not reinitialise)
        self._up = True
        try:
            while not self._stop.is_set():
                if self._pending is not None and self._pending_blocks(st):
                    continue
                if st.stream is None:
                    if self._open_step(st):
                        return
                    continue
                block = self._next_block(st)
                if block is not None:
                    yield block
                elif self._failed.is_set() or time.monotonic() - st.last_audio > (
                    self.stall_timeout_s
                ):
                    self._close_lost(st)
        finally:
            self._shut_down(st.stream)

    def _lose(self, st: _ReadState, detail: str) -> None:
        """Report the microphone lost, once per loss."""
        if not st.lost:
            st.lost = True
            self._on_health("microphone_lost", detail)

    def _pending_blocks(self, st: _ReadState) -> bool:
        """A PortAudio call outlasted its wait (the audio server stalls): nothing else may
        start until it returns. True while it blocks (or when it was not the open we wait
        for)."""
        call = self._pending
        assert call is not None
        if not call.done.wait(0.2):
            self._lose(st, f"PortAudio {call.name} blocked")
            self._warn(
                f"microphone: PortAudio {call.name} is blocked (audio server stalled?); "
                "waiting for it before anything else"
            )
            return True
        self._pending = None
        return call is not st.opening

    def _open_step(self, st: _ReadState) -> bool:
        """Open a stream, or handle the open queued before; True when stopped meanwhile."""
        if st.opening is None:
            self._generation += 1
            st.opening = self._portaudio.submit(
                "open",
                functools.partial(self._open_stream, not st.first_open, self._generation),
            )
            st.first_open = False
            if not self._wait(st.opening, OPEN_WAIT_S):
                return False
        call, st.opening = st.opening, None
        if call.error is None:
            st.stream, native_rate = call.result
            st.resampler = StreamingResampler(native_rate, self.sample_rate_hz)
            st.last_audio = time.monotonic()
            return False
        # Also a device name that matches nothing: a USB microphone that is not plugged in
        # yet at boot must not stop the service; the log says why.
        self._lose(st, f"cannot open: {call.error}")
        self._warn(f"microphone open failed: {call.error}; retrying")
        if self._stop.wait(st.backoff):
            return True
        st.backoff = min(st.backoff * 2, self.backoff_max_s)
        return False

    def _next_block(self, st: _ReadState) -> Block | None:
        """The next block of the current stream's audio (None: none within 0.2 s)."""
        try:
            item = self._queue.get(timeout=0.2)
        except queue.Empty:
            return None
        if item is None or item[0] != self._generation or st.resampler is None:
            return None  # a wake-up, or late audio of a stream being closed
        _, samples, captured = item
        if st.lost:
            st.lost = False
            self.reopens += 1
            log.warning("microphone restored")
            self._on_health("microphone_restored", f"reopened ({self.name})")
        st.backoff = self.backoff_initial_s
        st.last_audio = time.monotonic()
        out = st.resampler.process(samples)
        self._report_overflows()
        return Block(out, captured) if out.size else None

    def _close_lost(self, st: _ReadState) -> None:
        """The stream failed or stalled: report (first: closing a dead device may be slow),
        then close it on the PortAudio thread."""
        reason = self._failure or f"no audio for {self.stall_timeout_s:g} s"
        self._failure = ""
        if not st.lost:
            log.warning("microphone lost: %s; reopening", reason)
        self._lose(st, reason)
        closing = self._portaudio.submit("close", functools.partial(self._close_stream, st.stream))
        st.stream, st.resampler = None, None
        self._drain()
        self._wait(closing, CLOSE_WAIT_S)

    def _shut_down(self, stream: Any) -> None:
        """Close the stream, waiting a bounded time: at exit a call blocked by a stalled server
        is left to the operating system, never raced."""
        if stream is not None:
            closing = self._portaudio.submit("close", functools.partial(self._close_stream, stream))
            if not closing.done.wait(CLOSE_WAIT_S):
                log.warning(
                    "closing the microphone stream did not finish within %.0f s (audio server "
                    "stalled?); leaving it to the exit",
                    CLOSE_WAIT_S,
                )

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


_PORTAUDIO_THREADS: weakref.WeakSet[PortAudioThread] = weakref.WeakSet()
_exit_taken_over = False


def _take_over_portaudio_exit(sd: Any) -> None:
    """Replace sounddevice's exit handler, which terminates PortAudio from the main thread even
    while a PortAudio thread is blocked in a call (the same race, at exit), by one that does so
    only when no call is in progress."""
    global _exit_taken_over
    if _exit_taken_over:
        return
    _exit_taken_over = True
    atexit.unregister(sd._exit_handler)

    def terminate_if_idle() -> None:
        if any(thread.busy() is not None for thread in list(_PORTAUDIO_THREADS)):
            return  # a blocked call: the operating system releases everything at exit
        while sd._initialized > 0:
            try:
                sd._terminate()
            except sd.PortAudioError:
                return

    atexit.register(terminate_if_idle)


_QUIETED: list[Any] = []


def _quiet_alsa_errors() -> None:
    """Silence the error printers of ALSA ('Unknown PCM cards.pcm.rear', dozens of lines) and
    JACK ('jack server is not running') that PortAudio's initialisation sets off, without
    redirecting stderr, which our own log lines share (sounddevice's way)."""
    if _QUIETED:
        return
    import ctypes
    import ctypes.util

    _QUIETED.append(None)  # try once
    alsa_type = ctypes.CFUNCTYPE(
        None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
    )
    jack_type = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
    for library, setters, handler_type in (
        ("asound", ("snd_lib_error_set_handler",), alsa_type),
        ("jack", ("jack_set_error_function", "jack_set_info_function"), jack_type),
    ):
        name = ctypes.util.find_library(library)
        if name is None:
            continue
        try:
            lib = ctypes.CDLL(name)
            handler = handler_type(lambda *args: None)
            for setter in setters:
                getattr(lib, setter)(handler)
            _QUIETED.append(handler)  # kept alive for the process's lifetime
        except (OSError, AttributeError) as exc:
            log.debug("cannot silence %s's messages: %s", library, exc)
