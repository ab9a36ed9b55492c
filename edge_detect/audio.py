"""Audio input for the runtime: WAV files, raw PCM, mono downmix and resampling.

Only the standard library, numpy and soxr are used, so a device install stays small. Training
reads FLAC/OGG too, through ``train.audio_io`` (soundfile), which reuses the helpers here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.errors import AudioError, SampleRateError

__all__ = [
    "COMMON_RATES_HZ",
    "PCM_FORMATS",
    "Audio",
    "StreamingResampler",
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
    if float(rate_hz) != int(rate_hz) or not MIN_RATE_HZ <= int(rate_hz) <= MAX_RATE_HZ:
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
        return raw.astype(np.float32)
    scale = float(2 ** (8 * dtype.itemsize - 1))
    return (raw.astype(np.float64) / scale).astype(np.float32)


def _decode_wav_samples(
    path: Path, data: bytes, fmt_tag: int, bits: int, channels: int
) -> npt.NDArray[np.float32]:
    width = bits // 8
    frame_bytes = width * channels
    usable = len(data) - len(data) % frame_bytes
    data = data[:usable]
    if fmt_tag == _WAVE_FORMAT_IEEE_FLOAT:
        if bits not in (32, 64):
            raise AudioError(f"{path}: float WAV with {bits} bits per sample; expected 32 or 64")
        out = np.frombuffer(data, dtype=f"<f{width}").astype(np.float32)
    elif bits == 8:  # unsigned
        out = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif bits == 16:
        out = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif bits == 24:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        out = (ints.astype(np.float64) / float(1 << 23)).astype(np.float32)
    elif bits == 32:
        out = (np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0).astype(
            np.float32
        )
    else:
        raise AudioError(f"{path}: PCM WAV with {bits} bits per sample; expected 8, 16, 24 or 32")
    return out.reshape(-1, channels)


def read_wav(path: str | Path) -> Audio:
    """Read a PCM (8/16/24/32-bit) or IEEE-float WAV file.

    Returns
    -------
    Audio
        float32 samples of shape (samples,) for mono, (samples, channels) otherwise.

    Raises
    ------
    AudioError
        The file is missing, empty, truncated, not a WAV, or in an encoding we do not read.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise AudioError(f"cannot read audio file {path}: {exc.strerror or exc}") from None
    if not blob:
        raise AudioError(f"{path}: the file is empty; expected a WAV file")
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise AudioError(
            f"{path}: not a WAV file (expected a RIFF/WAVE header, found {blob[:12]!r}); "
            "convert it, e.g. ffmpeg -i INPUT -ac 1 -ar 16000 OUTPUT.wav"
        )
    fmt: tuple[int, int, int, int] | None = None
    data: bytes | None = None
    truncated = False
    pos = 12
    while pos + 8 <= len(blob):
        chunk_id = blob[pos : pos + 4]
        (size,) = struct.unpack("<I", blob[pos + 4 : pos + 8])
        body = blob[pos + 8 : pos + 8 + size]
        if len(body) < size:
            truncated = True
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise AudioError(f"{path}: WAV 'fmt ' chunk is {len(body)} bytes; expected >= 16")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
                (tag,) = struct.unpack("<H", body[24:26])
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None:
        raise AudioError(f"{path}: WAV file has no 'fmt ' chunk (truncated or corrupt)")
    if data is None:
        raise AudioError(f"{path}: WAV file has no 'data' chunk (truncated or corrupt)")
    tag, channels, rate, bits = fmt
    if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT):
        raise AudioError(
            f"{path}: WAV encoding 0x{tag:04x} is not supported; expected PCM or IEEE float. "
            "Convert it, e.g. ffmpeg -i INPUT -c:a pcm_s16le OUTPUT.wav"
        )
    if channels < 1:
        raise AudioError(f"{path}: WAV header says {channels} channels; expected at least 1")
    check_rate(rate, f"{path}: sample rate")
    samples = _decode_wav_samples(path, data, tag, bits, channels)
    if truncated and len(samples) == 0:
        raise AudioError(f"{path}: WAV file is truncated: its data chunk holds no whole sample")
    if len(samples) == 0:
        raise AudioError(f"{path}: WAV file holds no audio (0 samples)")
    out = samples[:, 0] if channels == 1 else samples
    return Audio(np.ascontiguousarray(out), rate)


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

    def __init__(self, rate_in_hz: int, rate_out_hz: int) -> None:
        self.rate_in_hz = check_rate(rate_in_hz, "input sample rate")
        self.rate_out_hz = check_rate(rate_out_hz, "output sample rate")
        self._stream: Any = None
        self.reset()

    def reset(self) -> None:
        """Drop the filter's history (start of a new stream)."""
        if self.rate_in_hz != self.rate_out_hz:
            self._stream = _soxr().ResampleStream(
                self.rate_in_hz, self.rate_out_hz, 1, dtype="float32", quality="HQ"
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
