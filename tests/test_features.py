from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edge_detect.errors import ConfigError
from edge_detect.features import FeatureConfig, StreamingLogMel, log_mel, mel_filterbank

SR = 16_000
# Tolerance against librosa in the log domain: float64 both sides, only summation order differs.
LIBROSA_ATOL = 1e-4


def _noise_and_tones(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t)
    burst = min(4000, max(0, t.size - SR))
    x[SR : SR + burst] += 0.5 * np.sin(2 * np.pi * 3000 * t[:burst])
    return x.astype(np.float32)


def test_default_config_matches_the_spec() -> None:
    cfg = FeatureConfig()
    assert (cfg.sample_rate_hz, cfg.n_fft, cfg.n_mels) == (16_000, 512, 64)
    assert (cfg.window_samples, cfg.hop_samples) == (400, 160)
    assert cfg.frames_per_second == 100.0


@pytest.mark.parametrize("chunk", [1, 160, 512, 1000, 4799])
def test_streamed_features_equal_whole_clip(chunk: int) -> None:
    x = _noise_and_tones()
    whole = log_mel(x)
    stream = StreamingLogMel()
    parts = [stream.process(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    streamed = np.concatenate(parts)
    assert streamed.shape == whole.shape == (FeatureConfig().num_frames(len(x)), 64)
    np.testing.assert_array_equal(streamed, whole)
    assert stream.frames_emitted == whole.shape[0]


def test_stream_buffer_is_bounded_and_reset_forgets() -> None:
    stream = StreamingLogMel()
    x = _noise_and_tones(1.0)
    for i in range(0, len(x), 333):
        stream.process(x[i : i + 333])
        assert stream._buffer.size < FeatureConfig().window_samples + 333
    stream.reset()
    assert stream.frames_emitted == 0
    np.testing.assert_array_equal(stream.process(x), log_mel(x))


def test_int16_input_equals_float_input() -> None:
    x = _noise_and_tones(0.5)
    ints = np.round(x * 32767).astype(np.int16)
    np.testing.assert_allclose(log_mel(ints), log_mel(ints.astype(np.float32) / 32768.0), atol=1e-6)


def test_short_clip_gives_zero_frames() -> None:
    assert log_mel(np.zeros(399, dtype=np.float32)).shape == (0, 64)
    assert log_mel(np.zeros(400, dtype=np.float32)).shape == (1, 64)


def test_silence_is_the_log_floor() -> None:
    cfg = FeatureConfig()
    out = log_mel(np.zeros(SR, dtype=np.float32), cfg)
    np.testing.assert_allclose(out, np.log(cfg.log_floor), rtol=1e-6)


def test_tone_peaks_in_the_right_band() -> None:
    cfg = FeatureConfig()
    t = np.arange(SR) / SR
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    band = int(np.argmax(log_mel(x, cfg).mean(axis=0)))
    centres = _band_centres(cfg)
    assert abs(centres[band] - 1000) < 60


def _band_centres(cfg: FeatureConfig) -> np.ndarray:
    freqs = np.linspace(0, cfg.sample_rate_hz / 2, cfg.n_fft // 2 + 1)
    fb = mel_filterbank(cfg)
    return (fb * freqs[:, None]).sum(axis=0) / fb.sum(axis=0)


@pytest.mark.parametrize("fmax_hz", [8000.0, 4000.0])
def test_matches_librosa(fmax_hz: float) -> None:
    librosa = pytest.importorskip("librosa")
    cfg = FeatureConfig(fmax_hz=fmax_hz)
    x = _noise_and_tones()
    ours = log_mel(x, cfg)
    # librosa centres the 400-sample window inside the 512-sample frame: pad by the offset so
    # that its frame i covers the same samples [i*hop, i*hop+400) as ours.
    offset = (cfg.n_fft - cfg.window_samples) // 2
    mel = librosa.feature.melspectrogram(
        y=np.pad(x.astype(np.float64), (offset, offset)),
        sr=SR,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_samples,
        win_length=cfg.window_samples,
        window="hann",
        center=False,
        power=2.0,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin_hz,
        fmax=cfg.fmax_hz,
    ).T
    theirs = np.log(np.maximum(mel, cfg.log_floor))
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(ours, theirs, atol=LIBROSA_ATOL, rtol=0)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"window_ms": 25.03}, "whole number of samples"),
        ({"n_fft": 256}, "shorter than the window"),
        ({"fmax_hz": 9000.0}, "fmax_hz"),
        ({"n_mels": 0}, "n_mels"),
        ({"log_floor": 0.0}, "log_floor"),
    ],
)
def test_invalid_config_is_refused(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(FeatureConfig(), **change)


def test_config_dict_round_trip_and_bad_keys() -> None:
    cfg = FeatureConfig(fmax_hz=4000.0)
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown feature config key"):
        FeatureConfig.from_dict({"n_mel": 64})
    with pytest.raises(ConfigError, match="must be a int"):
        FeatureConfig.from_dict({"n_mels": "64"})


def test_mono_only() -> None:
    with pytest.raises(ValueError, match="expected mono audio"):
        log_mel(np.zeros((100, 2), dtype=np.float32))
