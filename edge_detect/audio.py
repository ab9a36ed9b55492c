"""Audio input for the runtime: WAV files, raw PCM, mono downmix and resampling.

Only the standard library, numpy and soxr are used, so a device install stays small. Training
reads FLAC/OGG too, through ``train.audio_io`` (soundfile), which reuses the helpers here.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from edge_detect.errors import AudioError, SampleRateError

__all__ = [
    "COMMON_RATES_HZ",
    "PCM_FORMATS",
    "Audio",
    "StreamingResampler",
    "WavReader",
    "finite_samples",
    "pcm_to_float",
    "read_wav",
    "resample",
    "to_mono",
    "write_wav",
]

COMMON_RATES_HZ = (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000, 88_200, 96_000)
"""Input sample rates the resampler is tested with; any rate in [MIN_RATE_HZ, MAX_RATE_HZ] works."""
MIN_RATE_HZ = 4_000
MAX_RATE_HZ = 384_000

PCM_FORMATS: dict[str, np.dtype[Any]] = {
    "s16le": np.dtype("<i2"),
    "s32le": np.dtype("<i4"),
    "f32le": np.dtype("<f4"),
}
"""Raw PCM sample formats accepted on stdin, by their ffmpeg/arecord names."""

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


@dataclass(frozen=True)
class Audio:
    """Decoded audio: float32 samples in [-1, 1], shape (samples,) or (samples, channels)."""

    samples: npt.NDArray[np.float32]
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate_hz


def check_rate(rate_hz: Any, what: str = "sample rate") -> int:
    """Return ``rate_hz`` as an int, or raise SampleRateError saying what is supported."""
    if isinstance(rate_hz, bool) or not isinstance(rate_hz, (int, np.integer, float)):
        raise SampleRateError(f"{what} must be a number of Hz, got {rate_hz!r}")
    if (
        not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ  # first: False for NaN, no int(inf) below
        or float(rate_hz) != int(rate_hz)
    ):
        raise SampleRateError(
            f"{what} {rate_hz} Hz is not supported: expected a whole number of Hz between "
            f"{MIN_RATE_HZ} and {MAX_RATE_HZ} (e.g. 16000, 44100 or 48000)"
        )
    return int(rate_hz)


def to_mono(samples: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Downmix (samples, channels) to (samples,) by averaging channels; mono passes through."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        return array
    if array.ndim == 2:
        return np.asarray(array.mean(axis=1), dtype=np.float32)
    raise AudioError(
        f"expected audio of shape (samples,) or (samples, channels), got {array.shape}"
    )


def finite_samples(samples: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Float samples as float32 in [-1, 1]: NaN becomes 0, everything else is clipped.

    A float WAV or f32le stream may hold anything (1e300, inf, NaN); cast as it is, a NaN turns
    every feature frame after it into NaN, and float64 beyond float32's range overflows.
    """
    x = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def pcm_to_float(data: bytes, sample_format: str, channels: int = 1) -> npt.NDArray[np.float32]:
    """Decode raw interleaved PCM bytes to float32 in [-1, 1], shape (frames, channels).

    ``data`` must hold whole frames; the caller keeps any remainder for the next read.
    """
    if sample_format not in PCM_FORMATS:
        raise AudioError(
            f"unknown raw PCM format {sample_format!r}; expected one of {sorted(PCM_FORMATS)}"
        )
    dtype = PCM_FORMATS[sample_format]
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise AudioError(
            f"raw PCM data of {len(data)} bytes is not a whole number of {frame_bytes}-byte frames "
            f"({sample_format}, {channels} channel(s))"
        )
    raw = np.frombuffer(data, dtype=dtype).reshape(-1, channels)
    if dtype.kind == "f":
        return finite_samples(raw)
    scale = float(2 ** (8 * dtype.itemsize - 1))
    return (raw.astype(np.float64) / scale).astype(np.float32)


_PCM_BITS = (8, 16, 24, 32)
_FLOAT_BITS = (32, 64)
MAX_WAV_CHANNELS = 1024
"""Most channels in a WAV file we read (a header claiming more is corrupt)."""
_MAX_FMT_BYTES = 1024
"""A 'fmt ' chunk is 16 to 40 bytes; a much larger one is a corrupt header, not a format."""
_STREAMING_SIZES = (0, 0xFFFFFFFF)
"""'data' sizes that writers to a pipe leave (the length was unknown): read to the end."""


def _decode_wav_samples(
    path: Path | str, data: bytes, fmt_tag: int, bits: int, channels: int
) -> npt.NDArray[np.float32]:
    """Whole frames of ``data`` as float32 (frames, channels); a torn last frame is dropped.

    ``fmt_tag``, ``bits`` and ``channels`` must have passed :meth:`WavReader` 's checks.
    """
    width = bits // 8
    frame_bytes = width * channels
    usable = len(data) - len(data) % frame_bytes
    data = data[:usable]
    if fmt_tag == _WAVE_FORMAT_IEEE_FLOAT:
        out = finite_samples(np.frombuffer(data, dtype=f"<f{width}"))
    elif bits == 8:  # unsigned
        out = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif bits == 16:
        out = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif bits == 24:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        out = (ints.astype(np.float64) / float(1 << 23)).astype(np.float32)
    else:  # 32
        out = (np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0).astype(
            np.float32
        )
    return out.reshape(-1, channels)


class WavReader:
    """A WAV file's format, and its samples read block by block: bounded memory for any length.

    The header is parsed when the reader is made (chunk by chunk, never reading the payload), so
    a file that is not a WAV, or a device such as ``/dev/zero``, is refused at once. A 'data'
    chunk whose size is 0 or 0xFFFFFFFF (written to a pipe, length unknown) or larger than the
    file is read to its end.

    Raises
    ------
    AudioError
        The file is missing, empty, not a WAV, or in an encoding we do not read; the message
        says what was expected and how to convert it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 -- closed by close()
        except OSError as exc:
            raise AudioError(f"cannot read audio file {self.path}: {exc.strerror or exc}") from None
        try:
            self._parse_header()
        except BaseException:
            self._file.close()
            raise
        self.frame_bytes = self.bits // 8 * self.channels
        self._left = self._data_bytes

    _data_bytes: int | None
    """Bytes of audio left to read from the start of the data (None: to the end of the input)."""

    def _fail(self, problem: str) -> AudioError:
        return AudioError(f"{self.path}: {problem}")

    def _read_exact(self, n: int) -> bytes:
        try:
            return self._file.read(n)
        except OSError as exc:
            raise self._fail(f"cannot read: {exc.strerror or exc}") from None

    def _skip(self, n: int) -> None:
        try:
            self._file.seek(n, io.SEEK_CUR)
        except OSError:  # a pipe: read past it
            while n > 0:
                part = self._read_exact(min(n, 1 << 16))
                if not part:
                    return
                n -= len(part)

    def _bytes_after_here(self) -> int | None:
        """Bytes from the read position to the end of a regular file (None: a pipe, a device)."""
        try:
            stat = os.fstat(self._file.fileno())
            if not S_ISREG(stat.st_mode):
                return None
            return max(0, stat.st_size - self._file.tell())
        except (OSError, ValueError):
            return None

    def _parse_header(self) -> None:
        head = self._read_exact(12)
        if not head:
            raise self._fail("the file is empty; expected a WAV file")
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise self._fail(
                f"not a WAV file (expected a RIFF/WAVE header, found {head[:12]!r}); "
                "convert it, e.g. ffmpeg -i INPUT -ac 1 -ar 16000 OUTPUT.wav"
            )
        fmt: tuple[int, int, int, int] | None = None
        while True:
            chunk = self._read_exact(8)
            if len(chunk) < 8:
                break
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"fmt ":
                if not 16 <= size <= _MAX_FMT_BYTES:
                    raise self._fail(f"WAV 'fmt ' chunk is {size} bytes; expected 16 to 40")
                body = self._read_exact(size)
                if len(body) < 16:
                    raise self._fail(f"WAV 'fmt ' chunk is {len(body)} bytes; expected >= 16")
                tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
                if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                    (tag,) = struct.unpack("<H", body[24:26])
                fmt = (tag, channels, rate, bits)
                self._skip(size & 1)
            elif chunk_id == b"data":
                if fmt is None:
                    raise self._fail("WAV file has its 'data' before its 'fmt ' chunk (corrupt)")
                declared = None if size in _STREAMING_SIZES else size
                self._check_format(*fmt)
                frame_bytes = self.bits // 8 * self.channels
                self.declared_frames = None if declared is None else declared // frame_bytes
                """Frames the header claims (None: unknown); more than :attr:`frames` when the
                file is truncated."""
                self._data_bytes = declared
                available = self._bytes_after_here()
                if available is not None:  # a regular file: what it really holds counts
                    self._data_bytes = available if declared is None else min(declared, available)
                return
            else:
                self._skip(size + (size & 1))
        if fmt is None:
            raise self._fail("WAV file has no 'fmt ' chunk (truncated or corrupt)")
        raise self._fail("WAV file has no 'data' chunk (truncated or corrupt)")

    def _check_format(self, tag: int, channels: int, rate: int, bits: int) -> None:
        if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT):
            raise self._fail(
                f"WAV encoding 0x{tag:04x} is not supported; expected PCM or IEEE float. "
                "Convert it, e.g. ffmpeg -i INPUT -c:a pcm_s16le OUTPUT.wav"
            )
        if not 1 <= channels <= MAX_WAV_CHANNELS:
            raise self._fail(
                f"WAV header says {channels} channels; expected 1 to {MAX_WAV_CHANNELS}"
            )
        if tag == _WAVE_FORMAT_IEEE_FLOAT and bits not in _FLOAT_BITS:
            raise self._fail(f"float WAV with {bits} bits per sample; expected 32 or 64")
        if tag == _WAVE_FORMAT_PCM and bits not in _PCM_BITS:
            raise self._fail(f"PCM WAV with {bits} bits per sample; expected 8, 16, 24 or 32")
        self.sample_rate_hz = check_rate(rate, f"{self.path}: sample rate")
        self.channels = channels
        self.bits = bits
        self.format_tag = tag

    @property
    def frames(self) -> int | None:
        """Frames of audio the file holds (None: unknown until read, a WAV on a pipe)."""
        return None if self._data_bytes is None else self._data_bytes // self.frame_bytes

    def read(self, max_frames: int) -> npt.NDArray[np.float32]:
        """Up to ``max_frames`` frames as float32 (frames, channels); 0 frames at the end."""
        want = max_frames * self.frame_bytes
        if self._left is not None:
            want = min(want, self._left)
        data = self._read_exact(want) if want > 0 else b""
        while 0 < len(data) < want and len(data) % self.frame_bytes:
            more = self._read_exact(want - len(data))  # a pipe returns short reads
            if not more:
                break
            data += more
        if self._left is not None:
            self._left -= len(data)
        return _decode_wav_samples(self.path, data, self.format_tag, self.bits, self.channels)

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> WavReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_READ_ALL_FRAMES = 1 << 20
"""Frames per read when :func:`read_wav` loads a whole file."""


def read_wav(path: str | Path) -> Audio:
    """Read a whole PCM (8/16/24/32-bit) or IEEE-float WAV file into memory.

    For files of any length, read them in blocks with :class:`WavReader` instead (the runtime's
    file input does).

    Returns
    -------
    Audio
        float32 samples of shape (samples,) for mono, (samples, channels) otherwise.

    Raises
    ------
    AudioError
        The file is missing, empty, truncated, not a WAV, or in an encoding we do not read.
    """
    with WavReader(path) as reader:
        parts = []
        while True:
            part = reader.read(_READ_ALL_FRAMES)
            if not len(part):
                break
            parts.append(part)
        declared = reader.declared_frames
    samples = np.concatenate(parts) if parts else np.zeros((0, reader.channels), dtype=np.float32)
    if len(samples) == 0:
        truncated = declared is not None and declared > 0
        raise AudioError(
            f"{reader.path}: WAV file is truncated: its data chunk holds no whole sample"
            if truncated
            else f"{reader.path}: WAV file holds no audio (0 samples)"
        )
    out = samples[:, 0] if reader.channels == 1 else samples
    return Audio(np.ascontiguousarray(out), reader.sample_rate_hz)


def write_wav(path: str | Path, samples: npt.ArrayLike, sample_rate_hz: int) -> None:
    """Write float samples in [-1, 1] (mono or (samples, channels)) as a 16-bit PCM WAV."""
    array = np.asarray(samples, dtype=np.float32)
    if array.ndim == 1:
        array = array[:, None]
    channels = array.shape[1]
    ints = np.clip(np.round(array * 32767.0), -32768, 32767).astype("<i2")
    payload = ints.tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE"
    fmt = struct.pack(
        "<4sIHHIIHH",
        b"fmt ",
        16,
        _WAVE_FORMAT_PCM,
        channels,
        sample_rate_hz,
        sample_rate_hz * channels * 2,
        channels * 2,
        16,
    )
    Path(path).write_bytes(header + fmt + b"data" + struct.pack("<I", len(payload)) + payload)


def _soxr() -> Any:
    import soxr  # a runtime dependency; imported lazily to keep start-up fast when unused

    return soxr


def resample(samples: npt.ArrayLike, rate_in_hz: int, rate_out_hz: int) -> npt.NDArray[np.float32]:
    """Resample mono audio with soxr's anti-aliasing filter (VHQ: stop band below -140 dB)."""
    rate_in_hz = check_rate(rate_in_hz, "input sample rate")
    rate_out_hz = check_rate(rate_out_hz, "output sample rate")
    x = np.ascontiguousarray(samples, dtype=np.float32)
    if rate_in_hz == rate_out_hz or x.size == 0:
        return x
    return np.asarray(_soxr().resample(x, rate_in_hz, rate_out_hz, quality="VHQ"), dtype=np.float32)


class StreamingResampler:
    """Resample an endless mono stream chunk by chunk (for microphones fixed at 44.1 or 48 kHz).

    The output of all chunks joined equals a whole-signal resampling up to the filter's delay,
    which soxr compensates; call :meth:`flush` at the end of a finite stream.
    """

    def __init__(self, rate_in_hz: int, rate_out_hz: int, *, quality: str = "HQ") -> None:
        self.rate_in_hz = check_rate(rate_in_hz, "input sample rate")
        self.rate_out_hz = check_rate(rate_out_hz, "output sample rate")
        self.quality = quality
        """soxr quality: 'HQ' for live input (less delay), 'VHQ' for files (as :func:`resample`)."""
        self._stream: Any = None
        self.reset()

    def reset(self) -> None:
        """Drop the filter's history (start of a new stream)."""
        if self.rate_in_hz != self.rate_out_hz:
            self._stream = _soxr().ResampleStream(
                self.rate_in_hz, self.rate_out_hz, 1, dtype="float32", quality=self.quality
            )

    def process(self, chunk: npt.ArrayLike, last: bool = False) -> npt.NDArray[np.float32]:
        """Resample one chunk of mono float32 samples; ``last=True`` flushes the filter."""
        x = np.ascontiguousarray(chunk, dtype=np.float32)
        if self._stream is None:
            return x
        return np.asarray(self._stream.resample_chunk(x, last=last), dtype=np.float32)

    def flush(self) -> npt.NDArray[np.float32]:
        """Return what the filter still holds at the end of a finite stream."""
        return self.process(np.zeros(0, dtype=np.float32), last=True)
