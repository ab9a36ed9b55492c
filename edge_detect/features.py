"""The one log-mel front end, shared by training and the runtime.

Audio (mono float32 in [-1, 1] at ``FeatureConfig.sample_rate_hz``) is cut into frames of
``window_ms`` every ``hop_ms`` with no centring padding (a frame needs only past samples, so the
streaming extractor can emit it as soon as its last sample arrives). Each frame is multiplied by a
periodic Hann window, zero-padded to ``n_fft`` points, turned into a power spectrum, projected on
``n_mels`` triangular mel filters (Slaney mel scale and area normalisation, as librosa's default)
and logged with a floor: ``log(max(mel_power, log_floor))``.

Frame ``i`` covers samples ``[i * hop, i * hop + window)``; a clip of ``N >= window`` samples has
``1 + (N - window) // hop`` frames.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.errors import ConfigError

__all__ = ["FeatureConfig", "StreamingLogMel", "log_mel", "mel_filterbank"]

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FeatureConfig:
    """How audio becomes log-mel frames. Stored in every checkpoint and ONNX model."""

    sample_rate_hz: int = 16_000
    """Sample rate of the audio the features are computed from, in Hz."""
    window_ms: float = 25.0
    """Length of one analysis window, in milliseconds (400 samples at 16 kHz)."""
    hop_ms: float = 10.0
    """Distance between the starts of two frames, in milliseconds (160 samples at 16 kHz)."""
    n_fft: int = 512
    """FFT size in samples; the window is zero-padded to it. Must be >= the window in samples."""
    n_mels: int = 64
    """Number of mel bands (the feature dimension)."""
    fmin_hz: float = 0.0
    """Lower edge of the lowest mel band, in Hz."""
    fmax_hz: float = 8_000.0
    """Upper edge of the highest mel band, in Hz (at most half the sample rate). A model may set
    4000 Hz so that phone-bandwidth and full-band recordings look alike."""
    log_floor: float = 1e-8
    """Floor applied to the mel power before the natural log (power of a full-scale sine is
    about 1e4), so silence gives ``log(log_floor)`` instead of minus infinity."""

    def __post_init__(self) -> None:
        problems = []
        if self.sample_rate_hz <= 0:
            problems.append(f"sample_rate_hz must be > 0, got {self.sample_rate_hz}")
        if self.window_ms <= 0 or self.hop_ms <= 0:
            problems.append(
                f"window_ms and hop_ms must be > 0, got {self.window_ms}, {self.hop_ms}"
            )
        for name, ms in (("window_ms", self.window_ms), ("hop_ms", self.hop_ms)):
            samples = ms * self.sample_rate_hz / 1000.0
            if not math.isclose(samples, round(samples), abs_tol=1e-6):
                problems.append(
                    f"{name}={ms} is {samples:g} samples at {self.sample_rate_hz} Hz; "
                    "it must be a whole number of samples"
                )
        if not problems and self.n_fft < self.window_samples:
            problems.append(
                f"n_fft={self.n_fft} is shorter than the window ({self.window_samples})"
            )
        if self.n_mels <= 0:
            problems.append(f"n_mels must be > 0, got {self.n_mels}")
        if not 0 <= self.fmin_hz < self.fmax_hz <= self.sample_rate_hz / 2:
            problems.append(
                f"need 0 <= fmin_hz < fmax_hz <= sample_rate_hz / 2, got fmin_hz={self.fmin_hz}, "
                f"fmax_hz={self.fmax_hz}, sample_rate_hz={self.sample_rate_hz}"
            )
        if not self.log_floor > 0:
            problems.append(f"log_floor must be > 0, got {self.log_floor}")
        if problems:
            raise ConfigError("invalid FeatureConfig: " + "; ".join(problems))

    @property
    def window_samples(self) -> int:
        """Window length in samples."""
        return round(self.window_ms * self.sample_rate_hz / 1000.0)

    @property
    def hop_samples(self) -> int:
        """Hop length in samples."""
        return round(self.hop_ms * self.sample_rate_hz / 1000.0)

    @property
    def frames_per_second(self) -> float:
        """Feature frames per second of audio."""
        return 1000.0 / self.hop_ms

    def num_frames(self, num_samples: int) -> int:
        """Number of frames that a clip of ``num_samples`` samples gives."""
        if num_samples < self.window_samples:
            return 0
        return 1 + (num_samples - self.window_samples) // self.hop_samples

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/TOML-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureConfig:
        """Build from a dict, refusing unknown keys and wrong types with a clear message."""
        if not isinstance(data, dict):
            raise ConfigError(f"feature config must be a table/dict, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown feature config key(s) {unknown}; expected some of {sorted(fields)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            default = getattr(cls, key)
            if isinstance(default, int) and not isinstance(default, bool):
                ok = isinstance(value, int) and not isinstance(value, bool)
            else:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok else value
            if not ok:
                raise ConfigError(
                    f"feature config key {key!r} must be a {type(default).__name__}, "
                    f"got {value!r} ({type(value).__name__})"
                )
            kwargs[key] = value
        return cls(**kwargs)


def _hz_to_mel(hz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    mel = hz / f_sp
    log_region = hz >= min_log_hz
    mel = np.where(
        log_region, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel
    )
    return np.asarray(mel, dtype=np.float64)


def _mel_to_hz(mel: npt.ArrayLike) -> npt.NDArray[np.float64]:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    hz = f_sp * mel
    return np.asarray(
        np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), hz),
        dtype=np.float64,
    )


def mel_filterbank(config: FeatureConfig) -> npt.NDArray[np.float64]:
    """Triangular mel filters with Slaney area normalisation.

    Returns
    -------
    ndarray, float64, shape (n_fft // 2 + 1, n_mels)
        Multiply a power spectrum ``(frames, n_fft // 2 + 1)`` by it to get mel power.
    """
    n_bins = config.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, config.sample_rate_hz / 2, n_bins)
    mel_edges = np.linspace(
        _hz_to_mel(config.fmin_hz), _hz_to_mel(config.fmax_hz), config.n_mels + 2
    )
    hz_edges = _mel_to_hz(mel_edges)
    widths = np.diff(hz_edges)
    ramps = hz_edges[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_edges[2:] - hz_edges[:-2]))[:, None]
    return np.ascontiguousarray(weights.T)


class _FrontEnd:
    """Precomputed window and filterbank; turns audio into log-mel frames.

    Written for a 100 ms block every 100 ms on a small device: each block's cost is mostly
    per-call overhead with cold caches, so it uses few numpy calls and no Python loop over frames.
    """

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.window_samples = config.window_samples
        self.hop_samples = config.hop_samples
        n = self.window_samples
        # periodic Hann (as scipy.signal.get_window('hann', n, fftbins=True))
        self.window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
        self.filters = mel_filterbank(config)

    def log_mel(self, samples: npt.NDArray[np.float64], frames: int) -> FloatArray:
        """The log-mel of the first ``frames`` frames of ``samples`` (1-D, C-contiguous float64)."""
        if frames == 0:
            return np.zeros((0, self.config.n_mels), dtype=np.float32)
        width = samples.itemsize
        # a view: frame i starts at sample i * hop (as_strided's Python wrapper costs more)
        windows = np.ndarray(
            (frames, self.window_samples),
            np.float64,
            samples,
            strides=(self.hop_samples * width, width),
        )
        # zero-padded to n_fft here rather than by rfft(n=...): the same numbers, one copy fewer
        padded = np.zeros((frames, self.config.n_fft))
        np.multiply(windows, self.window, out=padded[:, : self.window_samples])
        spectrum = np.fft.rfft(padded, axis=1)
        power = spectrum.real**2 + spectrum.imag**2
        # One (1, bins) @ (bins, mels) product per frame (a stacked matmul: the same BLAS call
        # for every frame), never one (frames, bins) product: BLAS picks different kernels for
        # different shapes, and a frame's features must not depend on how many frames were
        # batched with it (streaming == whole clip, bit for bit).
        mel = np.matmul(power[:, None, :], self.filters)[:, 0]
        np.maximum(mel, self.config.log_floor, out=mel)
        return np.log(mel, out=mel).astype(np.float32)


def _as_float_mono(samples: npt.ArrayLike) -> npt.NDArray[np.float64]:
    array = np.asarray(samples)
    if array.ndim != 1:
        raise ValueError(
            f"expected mono audio of shape (samples,), got shape {array.shape}; "
            "downmix first (edge_detect.audio.to_mono)"
        )
    if array.dtype == np.int16:
        return array.astype(np.float64) / 32768.0
    if array.dtype.kind != "f":
        raise ValueError(f"expected float samples in [-1, 1] or int16, got dtype {array.dtype}")
    return array.astype(np.float64, copy=False)


def log_mel(samples: npt.ArrayLike, config: FeatureConfig | None = None) -> FloatArray:
    """Log-mel features of a whole clip.

    Parameters
    ----------
    samples : array, shape (samples,)
        Mono audio at ``config.sample_rate_hz``, float in [-1, 1] or int16.
    config : FeatureConfig, optional
        Defaults to ``FeatureConfig()``.

    Returns
    -------
    ndarray, float32, shape (frames, n_mels)
        ``frames = config.num_frames(len(samples))``; zero frames for clips shorter than a window.
    """
    config = config or FeatureConfig()
    x = _as_float_mono(samples)
    return _FrontEnd(config).log_mel(np.ascontiguousarray(x), config.num_frames(len(x)))


class StreamingLogMel:
    """Log-mel features of an endless stream, fed in chunks of any size.

    The frames emitted over a stream are exactly those that :func:`log_mel` gives for the
    concatenated audio: the extractor keeps the samples that the next frame still needs (at most
    one window) and nothing else, so memory is bounded.
    """

    def __init__(self, config: FeatureConfig | None = None) -> None:
        self.config = config or FeatureConfig()
        self._front = _FrontEnd(self.config)
        self._buffer = np.zeros(0, dtype=np.float64)
        self.frames_emitted = 0
        """Frames emitted since the last reset (frame ``i`` starts at sample ``i * hop``)."""

    def reset(self) -> None:
        """Forget buffered samples and the frame count (start of a new stream)."""
        self._buffer = np.zeros(0, dtype=np.float64)
        self.frames_emitted = 0

    def process(self, chunk: npt.ArrayLike) -> FloatArray:
        """Add a chunk of samples; return the frames it completed.

        Parameters
        ----------
        chunk : array, shape (samples,)
            Mono float audio in [-1, 1] or int16, any length (also 0).

        Returns
        -------
        ndarray, float32, shape (new_frames, n_mels)
        """
        if isinstance(chunk, np.ndarray) and chunk.ndim == 1 and chunk.dtype.kind == "f":
            x: npt.NDArray[Any] = chunk  # the common case; concatenate casts it to float64
        else:
            x = _as_float_mono(chunk)
        # always a new contiguous float64 array, never the caller's: what is kept below is ours
        buffer = np.concatenate((self._buffer, x), dtype=np.float64)
        front = self._front
        n = (
            0
            if len(buffer) < front.window_samples
            else 1 + (len(buffer) - front.window_samples) // front.hop_samples
        )
        out = front.log_mel(buffer, n)
        # only what the next frame still needs (a view of that new array: no copy to make)
        self._buffer = buffer[n * front.hop_samples :]
        self.frames_emitted += n
        return out
