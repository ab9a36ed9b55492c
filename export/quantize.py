"""The int8 variant: ONNX Runtime dynamic quantization, its size, its speed and what it costs.

Dynamic quantization stores the LSTM and linear weights as int8 and quantizes activations on the
fly, so it needs no calibration data. It does change the scores a little, so every int8 export is
checked twice: the score differences against the fp32 model (their 99th percentile has its own,
looser tolerance; the maximum is printed too), and the change of a validation metric (macro F1 of
the clip's top class) on real clips when a manifest is reachable. Without validation data the only
check left is top-class agreement with the fp32 model on inputs in the model's range, and the
report says so plainly.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_detect.errors import ModelError
from edge_detect.features import log_mel
from edge_detect.model import METADATA_KEYS, StreamingModel, load_model
from export.limits import INT8_AGREEMENT_FLOOR, INT8_MAX_F1_DROP_POINTS, INT8_SCORE_TOLERANCE

__all__ = [
    "INT8_AGREEMENT_FLOOR",
    "INT8_MAX_F1_DROP_POINTS",
    "INT8_SCORE_TOLERANCE",
    "Int8Error",
    "Int8Report",
    "compare_int8",
    "macro_f1",
    "quantize_int8",
]

log = logging.getLogger(__name__)

_SPEED_CALLS = 300
"""Timed calls per model; the median is reported (this machine is shared and noisy)."""
_SPEED_FRAMES = 10
"""Frames per timed call: 100 ms at a 10 ms hop, what the runtime feeds."""
_AGREEMENT_FRAMES = 2000
_AGREEMENT_SMOOTHING_FRAMES = 5
"""Random frames are smoothed over time a little so they look more like log-mel of real audio."""


class Int8Error(ModelError):
    """The int8 model differs from the fp32 model by more than allowed."""


class _DropQuantizationAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_int8(fp32_path: str | Path, int8_path: str | Path) -> Path:
    """Write the dynamically quantized (int8 weights) copy of an exported model.

    The metadata is carried over and the provenance notes the quantization.
    """
    import json

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.onnx_export import write_metadata

    int8_path = Path(int8_path)
    # onnxruntime.quantization logs through the root logger: INFO lines per tensor and advice
    # meant for CNNs ("run pre-processing"); keep them out of our stderr unless --debug.
    root = logging.getLogger()
    level, quiet = root.level, root.level > logging.DEBUG
    advice = _DropQuantizationAdvice()
    if quiet:
        root.setLevel(logging.WARNING)
        root.addFilter(advice)
    try:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
        root.removeFilter(advice)
    meta = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    provenance = json.loads(meta.get(METADATA_KEYS["provenance"], "{}"))
    provenance["quantization"] = "int8-dynamic (onnxruntime.quantization.quantize_dynamic, QInt8)"
    meta[METADATA_KEYS["provenance"]] = json.dumps(provenance, sort_keys=True, default=str)
    meta[METADATA_KEYS["name"]] = meta.get(METADATA_KEYS["name"], int8_path.stem) + "-int8"
    write_metadata(int8_path, meta)
    return int8_path


def macro_f1(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> float:
    """Mean over classes of F1 (0-1); a class absent from both truth and prediction is skipped."""
    t = np.asarray(true)
    p = np.asarray(predicted)
    scores = []
    for k in range(num_classes):
        tp = int(np.sum((t == k) & (p == k)))
        fp = int(np.sum((t != k) & (p == k)))
        fn = int(np.sum((t == k) & (p != k)))
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


@dataclass
class Int8Report:
    """Size, speed and accuracy of the int8 model next to the fp32 one."""

    fp32_bytes: int
    int8_bytes: int
    fp32_us_per_call: float
    int8_us_per_call: float
    max_score_diff: float
    """Largest |int8 - fp32| of any frame score."""
    p99_score_diff: float
    """99th percentile of |int8 - fp32| over all frame scores (the gated number)."""
    frame_agreement: float
    """Fraction of frames whose top class is the same in both models."""
    frames_compared: str
    """Which frames the three numbers above come from."""
    metric: str
    """What was compared: 'macro F1 (validation clips)' or 'top-class agreement (no data)'."""
    fp32_value: float
    int8_value: float
    clips: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def f1_drop_points(self) -> float | None:
        """fp32 minus int8 macro F1, in points (None when the metric is not macro F1)."""
        if not self.metric.startswith("macro F1"):
            return None
        return 100.0 * (self.fp32_value - self.int8_value)

    def format(self) -> str:
        """The comparison as a text table."""
        kib32, kib8 = self.fp32_bytes / 1024, self.int8_bytes / 1024
        lines = [
            f"int8 size   {kib8:8.1f} KiB  vs fp32 {kib32:.1f} KiB  ({kib8 / kib32:.0%})",
            f"int8 speed  {self.int8_us_per_call:8.1f} us   vs fp32 {self.fp32_us_per_call:.1f} us"
            f"  per {_SPEED_FRAMES}-frame step, median of {_SPEED_CALLS}, 1 thread"
            f"  (ratio {self.int8_us_per_call / self.fp32_us_per_call:.2f})",
            f"int8 scores |int8 - fp32| on {self.frames_compared}: p99 {self.p99_score_diff:.2e}"
            f" (tolerance {INT8_SCORE_TOLERANCE}), max {self.max_score_diff:.2e}, "
            f"top class unchanged on {self.frame_agreement:.2%} of frames",
        ]
        if self.f1_drop_points is not None:
            lines.append(
                f"int8 {self.metric} on {self.clips} clips: fp32 {100 * self.fp32_value:.2f}, "
                f"int8 {100 * self.int8_value:.2f}, drop {self.f1_drop_points:+.2f} points"
            )
        else:
            lines.append(
                f"int8 {self.metric}: {self.int8_value:.2%} (floor {INT8_AGREEMENT_FLOOR:.0%})"
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def _median_step_us(model: StreamingModel, frames: np.ndarray) -> float:
    model.reset()
    times = []
    for _ in range(_SPEED_CALLS):
        start = time.perf_counter()
        model.step(frames)
        times.append(time.perf_counter() - start)
    model.reset()
    return 1e6 * statistics.median(times)


def _range_frames(fp32_path: Path, n_mels: int, rng: np.random.Generator) -> np.ndarray:
    """Frames in the model's input range: its FeatureNorm statistics read from the graph.

    Falls back to a typical log-mel range when the statistics cannot be found.
    """
    import onnx
    from onnx import numpy_helper

    mean, std = np.full(n_mels, -12.0), np.full(n_mels, 4.0)
    proto = onnx.load(str(fp32_path))
    initializers = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    if "model.norm.mean" in initializers and "model.norm.std" in initializers:
        mean, std = initializers["model.norm.mean"], initializers["model.norm.std"]
    noise = rng.standard_normal((_AGREEMENT_FRAMES + _AGREEMENT_SMOOTHING_FRAMES - 1, n_mels))
    kernel = np.ones(_AGREEMENT_SMOOTHING_FRAMES) / np.sqrt(_AGREEMENT_SMOOTHING_FRAMES)
    smooth = np.stack([np.convolve(noise[:, k], kernel, mode="valid") for k in range(n_mels)], 1)
    return (mean + std * smooth).astype(np.float32)


def _clip_scores(model: StreamingModel, features: np.ndarray) -> np.ndarray:
    """Frame scores of one clip from a fresh state; the clip's top class is the argmax of their
    mean."""
    model.reset()
    return model.step(features)


def compare_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    *,
    clips: Sequence[Any] | None = None,
    max_f1_drop_points: float = INT8_MAX_F1_DROP_POINTS,
    enforce: bool = True,
    seed: int = 0,
) -> Int8Report:
    """Measure the int8 model against the fp32 one; raise Int8Error if it loses too much.

    Parameters
    ----------
    clips : sequence of train.datasets.Clip, optional
        Validation clips (``.path``, ``.label``); labels must be among the model's. Without them
        top-class agreement on frames in the model's input range is compared instead.
    max_f1_drop_points : float
        Largest allowed drop of macro F1 in points.
    enforce : bool
        False: measure and report, never raise.
    """
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    fp32, int8 = load_model(fp32_path), load_model(int8_path)
    rng = np.random.default_rng(seed)
    frames = _range_frames(fp32_path, fp32.n_mels, rng)
    speed_frames = frames[:_SPEED_FRAMES]
    report = Int8Report(
        fp32_bytes=fp32_path.stat().st_size,
        int8_bytes=int8_path.stat().st_size,
        fp32_us_per_call=_median_step_us(fp32, speed_frames),
        int8_us_per_call=_median_step_us(int8, speed_frames),
        max_score_diff=0.0,
        p99_score_diff=0.0,
        frame_agreement=0.0,
        frames_compared="",
        metric="",
        fp32_value=0.0,
        int8_value=0.0,
    )
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    if clips:
        from train.audio_io import read_audio

        index = {label: i for i, label in enumerate(fp32.labels)}
        truth, pred32, pred8 = [], [], []
        for clip in clips:
            audio = read_audio(clip.path, fp32.feature_config.sample_rate_hz)
            features = log_mel(audio, fp32.feature_config)
            if features.shape[0] == 0:
                continue
            pair = (_clip_scores(fp32, features), _clip_scores(int8, features))
            pairs.append(pair)
            truth.append(index[clip.label])
            pred32.append(int(np.argmax(pair[0].mean(axis=0))))
            pred8.append(int(np.argmax(pair[1].mean(axis=0))))
        report.metric = "macro F1 (validation clips)"
        report.clips = len(truth)
        report.fp32_value = macro_f1(truth, pred32, fp32.num_classes)
        report.int8_value = macro_f1(truth, pred8, fp32.num_classes)
        changed = sum(a != b for a, b in zip(pred32, pred8, strict=True))
        report.notes.append(f"{changed} of {len(truth)} clip predictions changed")
    if pairs:
        report.frames_compared = f"{sum(len(a) for a, _ in pairs)} frames of the clips"
    else:
        pairs = [(_clip_scores(fp32, frames), _clip_scores(int8, frames))]
        report.frames_compared = f"{len(frames)} random frames in the model's input range"
        report.metric = "top-class agreement with fp32 (no validation data)"
        report.notes.append(
            "no validation data was reachable (give --manifest): the metric change was NOT "
            "measured; only agreement with fp32 on random frames in the model's input range"
        )
    scores32 = np.concatenate([a for a, _ in pairs])
    scores8 = np.concatenate([b for _, b in pairs])
    diff = np.abs(scores32 - scores8)
    report.max_score_diff = float(diff.max())
    report.p99_score_diff = float(np.quantile(diff, 0.99))
    report.frame_agreement = float(np.mean(scores32.argmax(1) == scores8.argmax(1)))
    if not clips:
        report.fp32_value, report.int8_value = 1.0, report.frame_agreement

    problems = []
    if report.p99_score_diff > INT8_SCORE_TOLERANCE:
        problems.append(
            f"the 99th percentile of score differences is {report.p99_score_diff:.3g} "
            f"(> {INT8_SCORE_TOLERANCE})"
        )
    drop = report.f1_drop_points
    if drop is not None and drop > max_f1_drop_points:
        problems.append(f"macro F1 drops {drop:.2f} points (> {max_f1_drop_points})")
    if drop is None and report.int8_value < INT8_AGREEMENT_FLOOR:
        problems.append(
            f"top class agrees on only {report.int8_value:.1%} of frames "
            f"(< {INT8_AGREEMENT_FLOOR:.0%})"
        )
    if problems and enforce:
        raise Int8Error(
            f"the int8 model {int8_path} loses too much: {'; '.join(problems)}.\n"
            f"{report.format()}\nKeep the fp32 model, or accept the loss with --no-int8-check."
        )
    for problem in problems:
        report.notes.append(f"NOT ENFORCED: {problem}")
    return report
