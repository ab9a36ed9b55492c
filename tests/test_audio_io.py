"""train.audio_io: WAV/FLAC/OGG decoding for training, with clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from edge_detect.audio import write_wav  # noqa: E402
from edge_detect.errors import AudioError  # noqa: E402
from train.audio_io import read_audio  # noqa: E402

TARGET_HZ = 16_000


def _tone(freq_hz: float, rate_hz: int, seconds: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    mono = (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def _peak_hz(x: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate_hz)[np.argmax(spectrum)])


@pytest.mark.parametrize(
    ("suffix", "subtype", "tolerance"),
    [(".wav", "PCM_16", 1e-4), (".flac", "PCM_16", 1e-4), (".ogg", "VORBIS", 0.05)],
)
def test_reads_each_format_at_16k_unchanged(
    tmp_path: Path, suffix: str, subtype: str, tolerance: float
) -> None:
    x = _tone(440.0, TARGET_HZ)
    path = tmp_path / f"tone{suffix}"
    sf.write(path, x, TARGET_HZ, subtype=subtype)
    y = read_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == len(x)
    # lossless formats round-trip to 16-bit precision; Vorbis is lossy
    assert float(np.max(np.abs(y - x))) < tolerance
    assert abs(_peak_hz(y, TARGET_HZ) - 440.0) < 5.0


@pytest.mark.parametrize("rate_hz", [8_000, 22_050, 44_100, 48_000])
def test_resamples_and_downmixes(tmp_path: Path, rate_hz: int) -> None:
    stereo = _tone(1_000.0, rate_hz, seconds=1.0, channels=2)
    stereo[:, 1] *= 0.0  # the mean of the two channels is half the tone
    path = tmp_path / "stereo.flac"
    sf.write(path, stereo, rate_hz)
    y = read_audio(path, TARGET_HZ)
    assert y.ndim == 1
    assert abs(len(y) - TARGET_HZ) <= 1
    assert abs(_peak_hz(y, TARGET_HZ) - 1_000.0) < 5.0
    middle = y[len(y) // 4 : 3 * len(y) // 4]
    assert float(np.max(np.abs(middle))) == pytest.approx(0.25, abs=0.01)


def test_other_target_rate(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    write_wav(path, _tone(500.0, TARGET_HZ, seconds=1.0), TARGET_HZ)
    y = read_audio(path, sample_rate_hz=8_000)
    assert abs(len(y) - 8_000) <= 1
    assert abs(_peak_hz(y, 8_000) - 500.0) < 5.0


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(AudioError) as info:
        read_audio(path)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.flac", "cannot read")


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _expect_error(path, "empty")


def test_wrong_format(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is a text file, not audio\n" * 20)
    _expect_error(path, "cannot decode", "ffmpeg")


def test_truncated_wav(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    write_wav(path, _tone(440.0, TARGET_HZ), TARGET_HZ)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    _expect_error(path, "truncated")


@pytest.mark.parametrize("suffix", [".flac", ".ogg"])
def test_truncated_compressed(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"cut{suffix}"
    sf.write(path, _tone(440.0, TARGET_HZ, seconds=1.0), TARGET_HZ)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AudioError, match="truncated|cannot decode") as info:
        read_audio(path)
    assert str(path) in str(info.value)


def test_header_only_wav(tmp_path: Path) -> None:
    path = tmp_path / "silent.wav"
    write_wav(path, np.zeros(0, dtype=np.float32), TARGET_HZ)
    with pytest.raises(AudioError) as info:
        read_audio(path)
    assert str(path) in str(info.value)


def test_unsupported_rate_is_named(tmp_path: Path) -> None:
    path = tmp_path / "slow.wav"
    sf.write(path, np.zeros(100, dtype=np.float32), 1_000)
    with pytest.raises(AudioError, match="1000 Hz") as info:
        read_audio(path)
    assert str(path) in str(info.value)
