"""Reading training audio (WAV, FLAC, OGG/Vorbis) as mono float32 at one sample rate.

The workstation counterpart of :func:`edge_detect.audio.read_wav`: soundfile (libsndfile) decodes
the formats datasets come in; the downmix and the anti-aliasing resampler are the runtime's own
(:func:`edge_detect.audio.to_mono`, :func:`edge_detect.audio.resample`), so training and the
device hear the same signal.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.audio import check_rate, resample, to_mono
from edge_detect.errors import AudioError, MissingExtraError

__all__ = ["AUDIO_SUFFIXES", "read_audio"]

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
"""File name endings the dataset loaders pick up (case-insensitive)."""

_RIFF_HEADER_BYTES = 12
_CHUNK_HEADER_BYTES = 8
# Streaming WAV writers put a placeholder in the data chunk's size field when they cannot seek
# back; such a size says nothing about truncation.
_UNKNOWN_CHUNK_SIZES = (0, 0xFFFFFFFF)


def _soundfile() -> Any:
    try:
        import soundfile
    except ImportError:  # pragma: no cover - soundfile is in the [train] extra
        raise MissingExtraError("soundfile", "train", "Reading FLAC/OGG training audio") from None
    return soundfile


def _check_wav_not_truncated(path: Path, blob_head: bytes, file_size: int) -> None:
    """Raise if a RIFF/WAVE file's data chunk promises more bytes than the file holds.

    libsndfile silently shortens such a file to the bytes present; a training set should hear
    about it, since a cut-off recording usually means a failed copy.
    """
    if len(blob_head) < _RIFF_HEADER_BYTES or blob_head[:4] != b"RIFF":
        return
    pos = _RIFF_HEADER_BYTES
    while pos + _CHUNK_HEADER_BYTES <= len(blob_head):
        chunk_id = blob_head[pos : pos + 4]
        (size,) = struct.unpack("<I", blob_head[pos + 4 : pos + _CHUNK_HEADER_BYTES])
        if chunk_id == b"data":
            available = file_size - pos - _CHUNK_HEADER_BYTES
            if size not in _UNKNOWN_CHUNK_SIZES and available < size:
                raise AudioError(
                    f"{path}: WAV file is truncated: its header declares {size} bytes of audio "
                    f"but the file holds {available}; re-copy or re-export the file"
                )
            return
        pos += _CHUNK_HEADER_BYTES + size + (size & 1)


def read_audio(path: str | Path, sample_rate_hz: int = 16_000) -> npt.NDArray[np.float32]:
    """Decode an audio file to mono float32 at ``sample_rate_hz``.

    Parameters
    ----------
    path : str or Path
        A WAV, FLAC or OGG/Vorbis file (anything libsndfile reads), any channel count, any rate
        that :func:`edge_detect.audio.check_rate` accepts.
    sample_rate_hz : int
        Rate of the returned samples, in Hz.

    Returns
    -------
    ndarray, float32, shape (samples,)
        Samples in [-1, 1]; channels averaged; resampled with soxr (VHQ) when the file's rate
        differs.

    Raises
    ------
    AudioError
        Naming the file: missing, unreadable, empty, truncated, not audio, or holding no samples.
    """
    path = Path(path)
    sample_rate_hz = check_rate(sample_rate_hz, "target sample rate")
    sf = _soundfile()
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise AudioError(f"cannot read audio file {path}: {exc.strerror or exc}") from None
    if file_size == 0:
        raise AudioError(f"{path}: the file is empty (0 bytes); expected WAV, FLAC or OGG audio")
    _check_wav_not_truncated(path, head, file_size)
    try:
        with sf.SoundFile(str(path)) as handle:
            declared_frames = handle.frames
            rate = handle.samplerate
            samples = handle.read(dtype="float32", always_2d=True)
    except sf.LibsndfileError as exc:
        reason = getattr(exc, "error_string", None) or str(exc)
        raise AudioError(
            f"{path}: cannot decode audio ({reason}); expected an intact WAV, FLAC or OGG file "
            "(a truncated or corrupt file, or another format: convert it, e.g. "
            "ffmpeg -i INPUT -ac 1 -ar 16000 OUTPUT.flac)"
        ) from None
    if 0 < len(samples) < declared_frames:
        raise AudioError(
            f"{path}: audio is truncated: the header declares {declared_frames} frames, "
            f"only {len(samples)} could be decoded; re-copy or re-export the file"
        )
    if len(samples) == 0:
        raise AudioError(f"{path}: the file holds no audio (0 samples)")
    check_rate(rate, f"{path}: sample rate")
    mono = to_mono(samples)
    if not np.all(np.isfinite(mono)):
        raise AudioError(f"{path}: the audio holds NaN or infinite samples; re-export the file")
    return resample(mono, rate, sample_rate_hz)
