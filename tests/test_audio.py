from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from edge_detect.audio import (
    COMMON_RATES_HZ,
    StreamingResampler,
    pcm_to_float,
    read_wav,
    resample,
    to_mono,
    write_wav,
)
from edge_detect.errors import AudioError, SampleRateError

TARGET_HZ = 16_000
REQUIRED_STOPBAND_DB = 60.0


def _tone(freq_hz: float, rate_hz: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate_hz * seconds)) / rate_hz
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate_hz)[np.argmax(spectrum)])


def _rms_db(x: np.ndarray) -> float:
    return 20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-20)


@pytest.mark.parametrize("rate_hz", [8_000, 16_000, 22_050, 44_100, 48_000])
def test_resampler_keeps_a_tones_frequency(rate_hz: int) -> None:
    out = resample(_tone(1_000.0, rate_hz), rate_hz, TARGET_HZ)
    assert abs(len(out) - TARGET_HZ) <= 1
    assert abs(_peak_hz(out, TARGET_HZ) - 1_000.0) < 2.0
    assert abs(_rms_db(out[1000:-1000]) - _rms_db(_tone(1_000.0, TARGET_HZ))) < 0.1


@pytest.mark.parametrize("rate_hz", [22_050, 44_100, 48_000])
@pytest.mark.parametrize("freq_hz", [9_000.0, 12_000.0, 20_000.0])
def test_resampler_suppresses_content_above_new_nyquist(rate_hz: int, freq_hz: float) -> None:
    if freq_hz >= rate_hz / 2:
        pytest.skip("tone above the input's Nyquist")
    x = _tone(freq_hz, rate_hz)
    # Skip the first and last 30 ms: the tone's abrupt start and end are broadband clicks.
    edge = int(0.03 * TARGET_HZ)
    out = resample(x, rate_hz, TARGET_HZ)[edge:-edge]
    suppression = _rms_db(x) - _rms_db(out)
    assert suppression >= REQUIRED_STOPBAND_DB, f"{freq_hz} Hz only {suppression:.1f} dB down"


@pytest.mark.parametrize("rate_hz", [44_100, 48_000])
@pytest.mark.parametrize("freq_hz", [1_000.0, 12_000.0])
def test_streaming_resampler(rate_hz: int, freq_hz: float) -> None:
    x = _tone(freq_hz, rate_hz, seconds=2.0)
    stream = StreamingResampler(rate_hz, TARGET_HZ)
    chunks = [stream.process(x[i : i + 4410]) for i in range(0, len(x), 4410)]
    out = np.concatenate(chunks + [stream.flush()])
    assert abs(len(out) - 2 * TARGET_HZ) <= 2
    body = out[2000:-2000]
    if freq_hz < TARGET_HZ / 2:
        assert abs(_peak_hz(body, TARGET_HZ) - freq_hz) < 2.0
        assert abs(_rms_db(body) - _rms_db(x)) < 0.1
    else:
        assert _rms_db(x) - _rms_db(body) >= REQUIRED_STOPBAND_DB


def test_every_common_rate_is_accepted() -> None:
    for rate in COMMON_RATES_HZ:
        assert resample(_tone(500.0, rate, 0.1), rate, TARGET_HZ).size > 0


@pytest.mark.parametrize("rate", [0, -16000, 3, 1_000_000, 44100.5, "fast", True])
def test_unknown_rates_are_refused(rate: object) -> None:
    with pytest.raises(SampleRateError, match="Hz"):
        resample(np.zeros(10, dtype=np.float32), rate, TARGET_HZ)  # type: ignore[arg-type]


def test_mono_downmix_averages_channels() -> None:
    stereo = np.stack([np.ones(4), -np.ones(4) * 0.5], axis=1)
    np.testing.assert_allclose(to_mono(stereo), 0.25)


@pytest.mark.parametrize("channels", [1, 2])
def test_wav_round_trip(tmp_path: Path, channels: int) -> None:
    x = _tone(440.0, 22_050, 0.2)
    data = x if channels == 1 else np.stack([x, -x], axis=1)
    write_wav(tmp_path / "a.wav", data, 22_050)
    audio = read_wav(tmp_path / "a.wav")
    assert audio.sample_rate_hz == 22_050
    assert audio.samples.shape == data.shape
    np.testing.assert_allclose(audio.samples, data, atol=1 / 32767)


def _wav_bytes(tag: int, bits: int, payload: bytes, channels: int = 1, rate: int = 16_000) -> bytes:
    block = channels * bits // 8
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, tag, channels, rate, rate * block, block, bits)
    return (
        b"RIFF"
        + struct.pack("<I", 4 + len(fmt) + 8 + len(payload))
        + b"WAVE"
        + fmt
        + (b"data" + struct.pack("<I", len(payload)) + payload)
    )


@pytest.mark.parametrize(
    "bits, tag, encode",
    [
        (8, 1, lambda v: np.round(v * 127 + 128).astype(np.uint8).tobytes()),
        (
            24,
            1,
            lambda v: b"".join(
                int(round(s * 8388607)).to_bytes(3, "little", signed=True) for s in v
            ),
        ),
        (32, 1, lambda v: np.round(v * 2147483647).astype("<i4").tobytes()),
        (32, 3, lambda v: v.astype("<f4").tobytes()),
    ],
)
def test_wav_sample_formats(tmp_path: Path, bits: int, tag: int, encode) -> None:  # type: ignore[no-untyped-def]
    values = np.array([0.0, 0.5, -0.5, 0.25], dtype=np.float32)
    (tmp_path / "x.wav").write_bytes(_wav_bytes(tag, bits, encode(values)))
    np.testing.assert_allclose(read_wav(tmp_path / "x.wav").samples, values, atol=1 / 127)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"ID3\x03not a wav at all", "not a WAV file"),
        (b"fLaC\x00\x00\x00\x22" + bytes(40), "not a WAV file"),
        (b"RIFF\x10\x00\x00\x00WAVE", "no 'fmt ' chunk"),
        (_wav_bytes(1, 16, b"")[:44], "no audio"),
        (_wav_bytes(1, 16, np.zeros(100, "<i2").tobytes())[:45], "truncated"),
        (_wav_bytes(0x55, 16, np.zeros(10, "<i2").tobytes()), "not supported"),
        (_wav_bytes(1, 12, np.zeros(10, "<i2").tobytes()), "bits per sample"),
        # issue 15 item 8: 0 or 4 bits per sample raised ZeroDivisionError
        (_wav_bytes(1, 0, np.zeros(10, "<i2").tobytes()), "0 bits per sample"),
        (_wav_bytes(1, 4, np.zeros(10, "<i2").tobytes()), "4 bits per sample"),
        (_wav_bytes(3, 0, np.zeros(10, "<i2").tobytes()), "0 bits per sample"),
        (_wav_bytes(1, 16, np.zeros(10, "<i2").tobytes(), channels=0), "0 channels"),
        (_wav_bytes(1, 16, np.zeros(10, "<i2").tobytes(), rate=123), "not supported"),
    ],
)
def test_bad_wav_files_get_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as info:
        read_wav(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="cannot read audio file"):
        read_wav(tmp_path / "nope.wav")


def test_truncated_wav_keeps_whole_samples(tmp_path: Path) -> None:
    full = _wav_bytes(1, 16, np.arange(100, dtype="<i2").tobytes())
    (tmp_path / "t.wav").write_bytes(full[:-51])
    audio = read_wav(tmp_path / "t.wav")
    assert len(audio.samples) == 74


def test_raw_pcm() -> None:
    data = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    np.testing.assert_allclose(pcm_to_float(data, "s16le")[:, 0], [0, 0.5, -1, 32767 / 32768])
    assert pcm_to_float(np.zeros(6, "<f4").tobytes(), "f32le", channels=2).shape == (3, 2)
    with pytest.raises(AudioError, match="whole number"):
        pcm_to_float(b"\x00\x00\x00", "s16le")
    with pytest.raises(AudioError, match="unknown raw PCM format"):
        pcm_to_float(b"", "u8")
