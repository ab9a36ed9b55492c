"""Checkpoint -> streaming ONNX model with its contract in the metadata, and the parity check.

The exported graph is one streaming step (see :mod:`edge_detect.model` for the contract)::

    features [batch, frames, n_mels], h, c  ->  scores [batch, frames, classes], h_out, c_out

``scores`` are probabilities: the softmax (or, for a one-vs-rest model, the sigmoid per class)
is part of the graph, so the runtime never guesses whether it received logits; the metadata key
``edge_detect.scores`` says which. The TorchScript exporter (``dynamo=False``) is used because
torch 2.13's default dynamo exporter fixes an LSTM's time axis at the example's length;
:func:`check_parity` proves on every export that several lengths work and that chunked runs
equal a full run.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edge_detect import __version__, calibrate
from edge_detect.detect import ClassDetection
from edge_detect.errors import CheckpointError, ModelError
from edge_detect.features import FeatureConfig
from edge_detect.model import (
    INPUT_NAMES,
    METADATA_KEYS,
    NOVELTY_OUTPUT,
    OUTPUT_NAMES,
    SCHEMA_VERSION,
)
from edge_detect.provenance import provenance as build_provenance
from edge_detect.provenance import relative_paths
from export.limits import PARITY_CHUNK_FRAMES, PARITY_TOLERANCE
from train.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from train.models import CentroidHead, StreamingLSTM, probabilities

__all__ = [
    "OPSET",
    "PARITY_CHUNK_FRAMES",
    "PARITY_TOLERANCE",
    "ParityError",
    "ParityReport",
    "ScoresModel",
    "build_metadata",
    "check_parity",
    "default_detection",
    "event_classes",
    "export_checkpoint",
    "export_model",
    "has_novelty",
    "write_metadata",
]

log = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the exported graph (ONNX Runtime >= 1.14 runs it)."""
_STREAM_FRAMES = 237
"""Length of the stream compared chunked vs whole (not a multiple of any chunk length)."""
_STATE_SCALE = 0.5
"""Standard deviation of the random non-zero start state (an LSTM's h and c live in about ±1)."""
_BACKGROUND_LABEL = "background"


class ParityError(ModelError):
    """The exported ONNX model does not compute what the torch model computes."""


class ScoresModel(nn.Module):
    """The streaming LSTM with its output function on top (softmax, or sigmoid per class):
    (features, h, c) -> (probabilities, h_out, c_out).

    A model with a centroid head (trained with the cluster-centroid method) also returns
    ``novelty`` (B, T, 1), the distance of each frame's embedding to the nearest prototype of an
    event class (:meth:`train.models.CentroidHead.novelty`): a score for "unlike anything I was
    taught" that the runtime can read beside the class probabilities.
    """

    def __init__(self, model: StreamingLSTM, event_classes: Sequence[int] = ()) -> None:
        super().__init__()
        self.model = model
        self.event_classes = list(event_classes) if has_novelty(model) else []

    def forward(
        self, features: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Scores and the new state of one chunk: ``(B, T, F), h, c -> (B, T, C), h, c``, and
        ``(B, T, 1)`` novelty when the model has a centroid head."""
        emb, h_out, c_out = self.model.embed(features, h, c)  # (B, T, E), (L, B, H), (L, B, H)
        head = self.model.classifier
        scores = probabilities(head(emb), self.model.config.output)
        if not self.event_classes:
            return scores, h_out, c_out
        assert isinstance(head, CentroidHead)
        return scores, h_out, c_out, head.novelty(emb, self.event_classes)


def has_novelty(model: nn.Module) -> bool:
    """Whether the exported step of ``model`` carries a ``novelty`` output (a centroid head)."""
    return isinstance(getattr(model, "classifier", None), CentroidHead)


def event_classes(labels: Sequence[str]) -> list[int]:
    """Indices of the labels that are events (every label but ``background``)."""
    return [i for i, label in enumerate(labels) if label != _BACKGROUND_LABEL]


def default_detection(
    labels: Sequence[str], given: dict[str, Any] | None = None
) -> dict[str, ClassDetection]:
    """Detection settings per label: the checkpoint's where given, else the defaults, with
    ``background`` disabled (it is what the detector reports when nothing happens)."""
    given = given or {}
    unknown = sorted(set(given) - set(labels))
    if unknown:
        raise CheckpointError(
            f"detection settings for unknown label(s) {unknown}; labels {list(labels)}"
        )
    settings = {}
    for label in labels:
        if label in given:
            value = given[label]
            settings[label] = (
                value if isinstance(value, ClassDetection) else ClassDetection.from_dict(value)
            )
        else:
            settings[label] = ClassDetection(enabled=label != _BACKGROUND_LABEL)
    return settings


def build_metadata(
    *,
    labels: Sequence[str],
    feature_config: FeatureConfig,
    detection: dict[str, ClassDetection],
    name: str,
    provenance: dict[str, Any],
    scores: str = "softmax",
) -> dict[str, str]:
    """The ONNX ``metadata_props`` that :func:`edge_detect.model.load_model` reads; ``scores``
    is the graph's output function ('softmax' or 'sigmoid')."""

    def dump(value: Any) -> str:
        # default=str: provenance may hold paths or dates; sort_keys: stable bytes per export
        return json.dumps(value, sort_keys=True, default=str)

    return {
        METADATA_KEYS["schema_version"]: str(SCHEMA_VERSION),
        METADATA_KEYS["labels"]: json.dumps(list(labels)),
        METADATA_KEYS["feature_config"]: dump(feature_config.to_dict()),
        METADATA_KEYS["detection"]: dump({k: v.to_dict() for k, v in detection.items()}),
        METADATA_KEYS["provenance"]: dump(provenance),
        METADATA_KEYS["name"]: name,
        METADATA_KEYS["scores"]: scores,
    }


def write_metadata(path: str | Path, metadata: dict[str, str]) -> None:
    """Replace the metadata of the ONNX file at ``path`` (keeps keys not in ``metadata``)."""
    calibrate.write_metadata(path, path, metadata)


def export_model(
    model: StreamingLSTM,
    path: str | Path,
    *,
    metadata: dict[str, str],
    example_frames: int = 10,
) -> Path:
    """Write ``model`` (eval mode, softmax added) as a streaming ONNX graph with ``metadata``.

    Batch and frames are dynamic axes; ``h``/``c`` have a dynamic batch axis.
    """
    if not isinstance(model, StreamingLSTM):
        raise ModelError(
            f"only the streaming LSTM can be exported for the runtime, got {type(model).__name__}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ScoresModel(model, event_classes(json.loads(metadata[METADATA_KEYS["labels"]])))
    wrapper = wrapper.eval()
    output_names = list(OUTPUT_NAMES) + ([NOVELTY_OUTPUT] if wrapper.event_classes else [])
    config = model.config
    features = torch.zeros(1, example_frames, config.n_mels)
    h, c = model.initial_state(1)
    dynamic_axes = {
        "features": {0: "batch", 1: "frames"},
        "h": {1: "batch"},
        "c": {1: "batch"},
        "scores": {0: "batch", 1: "frames"},
        "h_out": {1: "batch"},
        "c_out": {1: "batch"},
        NOVELTY_OUTPUT: {0: "batch", 1: "frames"},
    }
    with torch.no_grad(), warnings.catch_warnings():
        # Chosen on purpose (see the module docstring): the TorchScript exporter keeps the frames
        # axis dynamic. Its LSTM warning is about models without state inputs; ours has h and c.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*with a variable length with LSTM.*")
        # nn.LSTM checks input sizes with Python bools; they are constants of the architecture
        # and the parity check below proves the traced graph at every length that matters.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            (features, h, c),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=output_names,
            dynamic_axes={
                k: v for k, v in dynamic_axes.items() if k in INPUT_NAMES + tuple(output_names)
            },
            opset_version=OPSET,
            dynamo=False,  # the dynamo exporter would fix the frames axis (see module docstring)
        )
    write_metadata(path, metadata)
    onnx.checker.check_model(str(path))
    return path


# -- parity ---------------------------------------------------------------------------------
@dataclass
class ParityReport:
    """Largest absolute differences found by :func:`check_parity`, one row per comparison."""

    tolerance: float
    rows: list[tuple[str, float, float]] = field(default_factory=list)
    """(comparison, max |score diff|, max |state diff|)."""

    @property
    def worst(self) -> float:
        """The largest difference found, over scores and state."""
        return max((max(s, t) for _, s, t in self.rows), default=0.0)

    @property
    def passed(self) -> bool:
        """True when no difference exceeds the tolerance."""
        return self.worst <= self.tolerance

    def format(self) -> str:
        """The comparisons as a text table."""
        lines = [f"{'parity check':<44} {'max |d score|':>14} {'max |d state|':>14}"]
        for what, score, state in self.rows:
            lines.append(f"{what:<44} {score:>14.2e} {state:>14.2e}")
        verdict = "ok" if self.passed else "FAILED"
        lines.append(f"worst {self.worst:.2e}, tolerance {self.tolerance:.0e}: {verdict}")
        return "\n".join(lines)


def _realistic_features(
    model: StreamingLSTM, batch: int, frames: int, rng: np.random.Generator
) -> np.ndarray:
    """Random frames in the model's input range (its normalisation statistics), float32."""
    mean = model.norm.mean.detach().numpy()
    std = model.norm.std.detach().numpy()
    noise = rng.standard_normal((batch, frames, mean.shape[0]))
    return (mean + std * noise).astype(np.float32)


def _ort_session(path: str | Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def check_parity(
    model: StreamingLSTM,
    onnx_path: str | Path,
    *,
    chunk_frames: Sequence[int] = PARITY_CHUNK_FRAMES,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> ParityReport:
    """Compare torch with ONNX Runtime, and chunked ONNX runs with one full-sequence run.

    Every comparison starts from a random non-zero state (a zero state hides a swapped ``h``
    and ``c`` or a dropped state input) on frames in the model's input range:

    - torch vs ONNX for one call of each length in ``chunk_frames`` (batch 1), and of 10 frames
      at batch 3 (the batch axis is dynamic too);
    - ONNX fed ``_STREAM_FRAMES`` frames in chunks of each length, carrying ``h``/``c``, vs one
      ONNX call on the whole stream; and the whole stream in torch vs ONNX.

    Raises
    ------
    ParityError
        Some difference of scores or final state exceeds ``tolerance``; the report is printed in
        the message.
    """
    model = model.eval()
    session = _ort_session(onnx_path)
    labels = json.loads(session.get_modelmeta().custom_metadata_map[METADATA_KEYS["labels"]])
    wrapper = ScoresModel(model, event_classes(labels)).eval()
    rng = np.random.default_rng(seed)
    layers, hidden = model.config.num_layers, model.config.hidden_size
    report = ParityReport(tolerance=tolerance)

    def start_state(batch: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (layers, batch, hidden)
        h = (_STATE_SCALE * rng.standard_normal(shape)).astype(np.float32)
        c = (_STATE_SCALE * rng.standard_normal(shape)).astype(np.float32)
        return h, c

    def run_torch(x: np.ndarray, h: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = wrapper(torch.from_numpy(x), torch.from_numpy(h), torch.from_numpy(c))
        return [t.numpy() for t in out]

    def run_onnx(x: np.ndarray, h: np.ndarray, c: np.ndarray) -> list[np.ndarray]:
        return list(session.run(None, {"features": x, "h": h, "c": c}))

    def compare(what: str, a: list[np.ndarray], b: list[np.ndarray]) -> None:
        if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=False)):
            raise ParityError(
                f"{what}: outputs of shapes {[x.shape for x in a]} vs {[y.shape for y in b]}"
            )
        state = max(_max_diff(a[1], b[1]), _max_diff(a[2], b[2]))
        # the scores column covers every per-frame output: the probabilities and the novelty
        frame = max(
            _max_diff(x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)) if i not in (1, 2)
        )
        report.rows.append((what, frame, state))

    for frames in chunk_frames:
        x = _realistic_features(model, 1, frames, rng)
        h, c = start_state(1)
        compare(f"torch vs onnx, {frames} frame(s)", run_torch(x, h, c), run_onnx(x, h, c))
    x = _realistic_features(model, 3, 10, rng)
    h, c = start_state(3)
    compare("torch vs onnx, batch 3 x 10 frames", run_torch(x, h, c), run_onnx(x, h, c))

    x = _realistic_features(model, 1, _STREAM_FRAMES, rng)
    h0, c0 = start_state(1)
    whole = run_onnx(x, h0, c0)
    compare(f"torch vs onnx, {_STREAM_FRAMES} frames", run_torch(x, h0, c0), whole)
    for frames in chunk_frames:
        h, c = h0, c0
        parts: list[list[np.ndarray]] = []
        for start in range(0, _STREAM_FRAMES, frames):
            out = run_onnx(x[:, start : start + frames], h, c)
            h, c = out[1], out[2]
            parts.append([out[0], *out[3:]])
        joined = [np.concatenate(per_frame, axis=1) for per_frame in zip(*parts, strict=True)]
        chunked = [joined[0], h, c, *joined[1:]]
        compare(f"onnx chunks of {frames} vs one call, {_STREAM_FRAMES} frames", chunked, whole)

    if not report.passed:
        raise ParityError(
            "the exported ONNX model differs from the torch model by more than "
            f"{tolerance:.0e}:\n{report.format()}"
        )
    return report


# -- from a checkpoint ----------------------------------------------------------------------
def checkpoint_provenance(data: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """What the model file says about where it came from."""
    provenance: dict[str, Any] = {
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": file_sha256(checkpoint),
        "exporter": f"edge-detect {__version__}, torch {torch.__version__}, opset {OPSET}",
        "export": build_provenance(),  # commit, dirty, versions, host, command, date
        "model_config": data.get("model_config"),
        "data": data.get("data"),
        "metrics": data.get("metrics"),
        "quantization": "none",
    }
    # the checkpoint's data record holds the training machine's paths (its manifest)
    return dict(relative_paths(provenance))


def export_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    tolerance: float = PARITY_TOLERANCE,
) -> tuple[Path, ParityReport, dict[str, Any]]:
    """Export a training checkpoint and check parity; returns (path, parity report, checkpoint).

    Raises CheckpointError for a file that is not a usable checkpoint, ModelError for a model the
    runtime cannot run (e.g. the CNN), ParityError when ONNX Runtime disagrees with torch.
    """
    checkpoint = Path(checkpoint)
    data = load_checkpoint(checkpoint)
    model, feature_config = model_from_checkpoint(data)
    if not isinstance(model, StreamingLSTM):
        raise ModelError(
            f"{checkpoint} holds a {data['model_config'].get('kind')!r} model; only the streaming "
            "LSTM ('lstm') can run on the device. Export an LSTM checkpoint."
        )
    if model.config.n_mels != feature_config.n_mels:
        raise CheckpointError(
            f"{checkpoint}: the model takes {model.config.n_mels} features per frame but its "
            f"feature config makes {feature_config.n_mels}"
        )
    labels = list(data["labels"])
    detection = default_detection(labels, data.get("detection"))
    output = Path(output)
    metadata = build_metadata(
        labels=labels,
        feature_config=feature_config,
        detection=detection,
        name=name or output.stem,
        provenance=checkpoint_provenance(data, checkpoint),
        scores=model.config.output,
    )
    # Written beside the target and moved in place only after parity passed: a model that
    # failed its check never sits where a deploy script would pick it up.
    pending = output.with_name(output.name + ".pending")
    try:
        export_model(model, pending, metadata=metadata)
        report = check_parity(model, pending, tolerance=tolerance)
        os.replace(pending, output)
    finally:
        pending.unlink(missing_ok=True)
    return output, report, data
