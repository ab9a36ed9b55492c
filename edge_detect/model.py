"""The streaming model: an ONNX file that carries its own contract, and the object that runs it.

An edge-detect model is one streaming step of a recurrent network::

    features  float32 [batch, frames, n_mels]        raw log-mel frames (edge_detect.features)
    h, c      float32 [num_layers, batch, hidden]     recurrent state going in
    ->
    scores    float32 [batch, frames, classes]        per-frame class probabilities
    h_out, c_out                                      the state after the last frame
    novelty   float32 [batch, frames, 1]              optional: distance of each frame's
                                                      embedding to the nearest event centroid

``frames`` is a dynamic axis, so the runtime can feed any number of frames per call (about 100 ms
at a time) and carry ``(h, c)`` to the next call. The file's metadata (``metadata_props``) holds
everything the runtime needs, under the keys in :data:`METADATA_KEYS`: the schema version, the
labels, the :class:`~edge_detect.features.FeatureConfig`, the per-class
:class:`~edge_detect.detect.ClassDetection` settings and the provenance. :func:`load_model` checks
all of it, and the graph's inputs and outputs, before the first audio arrives, and refuses a model
it cannot honour with a :class:`~edge_detect.errors.ModelError` naming what it expected and what
it found.

Only numpy and onnxruntime are needed here; the exporter (``export/``) writes these files.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from edge_detect.audio import MAX_RATE_HZ, MIN_RATE_HZ
from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError, ModelError
from edge_detect.features import FeatureConfig

__all__ = [
    "DEFAULT_MODEL_PATH",
    "INPUT_NAMES",
    "METADATA_KEYS",
    "NOVELTY_OUTPUT",
    "OUTPUT_NAMES",
    "SCHEMA_VERSION",
    "LSTMState",
    "StreamingModel",
    "load_model",
    "score_problem",
]

FloatArray = npt.NDArray[np.float32]

SCHEMA_VERSION = 1
"""Version of the metadata layout below; bumped when a key changes meaning."""

_PREFIX = "edge_detect."
METADATA_KEYS: dict[str, str] = {
    "schema_version": _PREFIX + "schema_version",  # "1"
    "labels": _PREFIX + "labels",  # JSON list of class names, index = score column
    "feature_config": _PREFIX + "feature_config",  # JSON FeatureConfig.to_dict()
    "detection": _PREFIX + "detection",  # JSON {label: ClassDetection.to_dict()}
    "provenance": _PREFIX + "provenance",  # JSON: data, licenses, checkpoint hash, commit, ...
    "name": _PREFIX + "name",  # short human name of the model
    "scores": _PREFIX + "scores",  # "softmax" (rows sum to 1; the default) or "sigmoid"
}
"""Metadata key of each field, as stored in the ONNX file's ``metadata_props``."""
_REQUIRED_FIELDS = ("schema_version", "labels", "feature_config", "detection")

INPUT_NAMES = ("features", "h", "c")
"""Graph inputs, in order."""
OUTPUT_NAMES = ("scores", "h_out", "c_out")
"""Graph outputs, in order."""
NOVELTY_OUTPUT = "novelty"
"""Optional fourth output of a model trained with the cluster-centroid method: per frame, ``1 -``
the cosine of the embedding to the nearest event-class centroid (0 = on a centroid, up to 2): how
unlike the sounds it was taught a frame is, whatever class the scores favour."""

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "assets" / "default_model.onnx"
"""The packaged model, exported by ``edge-detect export`` from a trained checkpoint."""

SCORE_KINDS = ("softmax", "sigmoid")
"""What a model's ``scores`` are: one distribution over the classes per frame ('softmax', rows
sum to 1: every frame is *some* class), or one independent probability per class ('sigmoid',
one-vs-rest: a frame may be none of the event classes)."""
_PROBABILITY_TOLERANCE = 1e-3
"""How far the scores of one frame may sum from 1 before the model counts as emitting logits."""
_SCORE_RANGE_TOLERANCE = 1e-6
"""How far outside [0, 1] a score may fall by rounding (a softmax gives 1.0000001)."""
_ID_HASH_CHARS = 12
"""Hex digits of the file's SHA-256 in :attr:`StreamingModel.model_id`."""


class LSTMState(NamedTuple):
    """Recurrent state of one stream; each array float32 (num_layers, 1, hidden)."""

    h: FloatArray
    c: FloatArray


def _sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` (hex), with CPython's built-in implementation where there is one.

    ``hashlib`` loads OpenSSL's libcrypto: about 4 MB resident that nothing else on the audio
    path needs (BENCHMARKS.md section 3). The digest is the same either way (a test checks).
    """
    for name in ("_sha2", "_sha256"):  # CPython >= 3.12, and 3.10-3.11
        try:
            return str(importlib.import_module(name).sha256(data).hexdigest())
        except (ImportError, AttributeError):
            continue
    import hashlib  # a Python without the built-in module

    return hashlib.sha256(data).hexdigest()


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a core dependency; only a broken install lacks it
        raise ModelError(
            "running a model needs onnxruntime, which is not installed: pip install onnxruntime"
        ) from None
    return onnxruntime


def _dims(node: Any) -> list[int | str | None]:
    """ONNX Runtime's shape of a graph input/output: ints for fixed axes, names or None else."""
    return list(node.shape) if node.shape is not None else []


def _describe(dims: list[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _is_fixed(dim: int | str | None) -> bool:
    return isinstance(dim, int) and dim > 0


def _json_field(meta: dict[str, str], field: str, where: str) -> Any:
    raw = meta[METADATA_KEYS[field]]
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(
            f"{where}: metadata {METADATA_KEYS[field]!r} is not valid JSON ({exc}); "
            f"found {raw[:80]!r}. Re-export the model with 'edge-detect export'."
        ) from None


def _parse_metadata(
    meta: dict[str, str], where: str
) -> tuple[tuple[str, ...], FeatureConfig, dict[str, ClassDetection], dict[str, Any]]:
    """Labels, feature config, detection settings and provenance from the raw metadata."""
    missing = [METADATA_KEYS[f] for f in _REQUIRED_FIELDS if METADATA_KEYS[f] not in meta]
    if missing:
        if not any(key.startswith(_PREFIX) for key in meta):
            raise ModelError(
                f"{where} is an ONNX model but not an edge-detect model: it has none of the "
                f"metadata keys {[METADATA_KEYS[f] for f in _REQUIRED_FIELDS]} "
                f"(found {sorted(meta) or 'no metadata'}). Export one with 'edge-detect export'."
            )
        raise ModelError(
            f"{where}: metadata lacks {missing} (found {sorted(meta)}); the file is incomplete. "
            "Re-export it with 'edge-detect export'."
        )
    version = meta[METADATA_KEYS["schema_version"]]
    if version != str(SCHEMA_VERSION):
        raise ModelError(
            f"{where} has metadata schema version {version!r}; this edge-detect reads version "
            f"{SCHEMA_VERSION}. Use the edge-detect release that exported it, or re-export it."
        )

    labels = _json_field(meta, "labels", where)
    if (
        not isinstance(labels, list)
        or not labels
        or not all(isinstance(label, str) and label for label in labels)
        or len(set(labels)) != len(labels)
    ):
        raise ModelError(
            f"{where}: labels must be a non-empty JSON list of distinct names, found {labels!r}"
        )

    try:
        feature_config = FeatureConfig.from_dict(_json_field(meta, "feature_config", where))
    except (ConfigError, ValueError, TypeError, OverflowError) as exc:
        # Metadata is input: an inf or a NaN in it can make the arithmetic of the checks
        # themselves fail (round(inf)); still one clear error, never a traceback.
        raise ModelError(
            f"{where}: the runtime cannot produce the features this model expects: {exc}"
        ) from None
    if not MIN_RATE_HZ <= feature_config.sample_rate_hz <= MAX_RATE_HZ:
        raise ModelError(
            f"{where}: the model expects audio at {feature_config.sample_rate_hz} Hz; the runtime "
            f"resamples to rates between {MIN_RATE_HZ} and {MAX_RATE_HZ} Hz only"
        )

    raw_detection = _json_field(meta, "detection", where)
    if not isinstance(raw_detection, dict) or set(raw_detection) != set(labels):
        found = sorted(raw_detection) if isinstance(raw_detection, dict) else raw_detection
        raise ModelError(
            f"{where}: detection settings must be a JSON object with one entry per label "
            f"{labels}, found {found!r}"
        )
    try:
        detection = {
            label: ClassDetection.from_dict(
                raw_detection[label], where=f"{where}: invalid detection settings of {label!r}"
            )
            for label in labels
        }
    except ConfigError as exc:
        raise ModelError(str(exc)) from None

    provenance: dict[str, Any] = {}
    if METADATA_KEYS["provenance"] in meta:
        provenance = _json_field(meta, "provenance", where)
        if not isinstance(provenance, dict):
            raise ModelError(f"{where}: provenance must be a JSON object, found {provenance!r}")
    return tuple(labels), feature_config, detection, provenance


def _score_kind(meta: dict[str, str], where: str) -> str:
    """The model's :data:`SCORE_KINDS` entry ('softmax' when the key is absent: older files)."""
    kind = meta.get(METADATA_KEYS["scores"], "softmax")
    if kind not in SCORE_KINDS:
        raise ModelError(
            f"{where}: metadata {METADATA_KEYS['scores']} must be one of {SCORE_KINDS}, found "
            f"{kind!r}; re-export the model with 'edge-detect export'"
        )
    return kind


def _check_graph(session: Any, n_mels: int, n_classes: int, where: str) -> tuple[int, int]:
    """Check names, types and shapes of the graph's inputs and outputs; (num_layers, hidden)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    input_names = tuple(node.name for node in inputs)
    output_names = tuple(node.name for node in outputs)
    if input_names != INPUT_NAMES or output_names not in (
        OUTPUT_NAMES,
        (*OUTPUT_NAMES, NOVELTY_OUTPUT),
    ):
        raise ModelError(
            f"{where}: expected graph inputs {list(INPUT_NAMES)} and outputs "
            f"{list(OUTPUT_NAMES)} (and optionally {NOVELTY_OUTPUT!r}), found inputs "
            f"{list(input_names)} and outputs {list(output_names)}"
        )
    for node in (*inputs, *outputs):
        if node.type != "tensor(float)":
            raise ModelError(f"{where}: {node.name!r} must be tensor(float), found {node.type}")
        if len(_dims(node)) != 3:
            raise ModelError(
                f"{where}: {node.name!r} must have 3 axes, found shape {_describe(_dims(node))}"
            )
    features, h, c = (_dims(node) for node in inputs)
    scores, h_out, c_out = (_dims(node) for node in outputs[:3])
    if len(outputs) == 4:
        novelty = _dims(outputs[3])
        if novelty[2] != 1 or _is_fixed(novelty[1]):
            raise ModelError(
                f"{where}: output {NOVELTY_OUTPUT!r} must be [batch, frames, 1], found "
                f"{_describe(novelty)}"
            )
    if features[2] != n_mels or _is_fixed(features[1]):
        raise ModelError(
            f"{where}: input 'features' must be [batch, frames, {n_mels}] with a dynamic frames "
            f"axis ({n_mels} = n_mels of the feature config), found {_describe(features)}"
        )
    if scores[2] != n_classes or _is_fixed(scores[1]):
        raise ModelError(
            f"{where}: output 'scores' must be [batch, frames, {n_classes}] "
            f"({n_classes} = number of labels), found {_describe(scores)}"
        )
    if not (_is_fixed(h[0]) and _is_fixed(h[2])):
        raise ModelError(
            f"{where}: input 'h' must be [num_layers, batch, hidden] with fixed layers and "
            f"hidden size, found {_describe(h)}"
        )
    for name, dims in (("c", c), ("h_out", h_out), ("c_out", c_out)):
        if dims[0] != h[0] or dims[2] != h[2]:
            raise ModelError(
                f"{where}: {name!r} must have the shape of 'h' {_describe(h)}, "
                f"found {_describe(dims)}"
            )
    return int(h[0]), int(h[2])  # type: ignore[arg-type]


def score_problem(scores: npt.ArrayLike) -> str | None:
    """What is wrong with a block of scores, or None: each must be a finite number in [0, 1].

    Checked at load and on every block at run time, before any rule on how a frame's scores
    relate (class probabilities sum to 1): a NaN compares False with every threshold and would
    slip through such rules, and strict JSON parsers refuse a ``"score": NaN``.

    Parameters
    ----------
    scores : array, shape (frames, classes)
    """
    x = np.asarray(scores, dtype=np.float32)
    low, high = -_SCORE_RANGE_TOLERANCE, 1.0 + _SCORE_RANGE_TOLERANCE
    # every block passes here at run time: the good case in two reductions (a NaN makes the
    # minimum and maximum NaN, which fail both comparisons; an infinity fails one)
    if x.size == 0 or (x.min() >= low and x.max() <= high):
        return None
    finite = np.isfinite(x)
    if not finite.all():
        bad = x[~finite]
    else:
        bad = x[(x < low) | (x > high)]
    shown = ", ".join(f"{v:g}" for v in bad[:3])
    return f"{bad.size} of {x.size} score(s) are not finite numbers in [0, 1] (e.g. {shown})"


class StreamingModel:
    """A loaded edge-detect model with the recurrent state of one stream.

    Build it with :func:`load_model`. ``step()`` feeds frames and carries ``(h, c)`` to the next
    call, so scores do not depend on how the stream is cut into chunks; ``reset()`` starts a new
    stream. One ONNX Runtime thread by default: on a small device the audio thread and the model
    should not fight over cores.
    """

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        self.path = Path(path)
        where = f"model {self.path}"
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"model threads must be a positive integer, got {threads!r}")
        if not self.path.is_file():
            raise ModelError(
                f"{where} does not exist; expected an .onnx file from 'edge-detect export'"
            )
        data = self.path.read_bytes()
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # ORT's warnings would go to stderr, which we keep for logs
        try:
            self._session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own types (Fail, InvalidProtobuf, ...)
            message = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise ModelError(
                f"{where} ({len(data)} bytes) is not a loadable ONNX model: {message}. "
                "Expected an .onnx file from 'edge-detect export'; it may be truncated or corrupt."
            ) from None
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        """The raw ONNX metadata (key -> string)."""
        labels, feature_config, detection, provenance = _parse_metadata(self.metadata, where)
        self.labels: tuple[str, ...] = labels
        """Class names; column ``i`` of :meth:`step`'s scores belongs to ``labels[i]``."""
        self.feature_config: FeatureConfig = feature_config
        """The front end the model was trained on; the runtime must compute exactly these."""
        self.detection: dict[str, ClassDetection] = detection
        """Default post-processing settings per label, from training."""
        self.provenance: dict[str, Any] = provenance
        """Training data and licenses, checkpoint hash, git commit, date, validation metrics."""
        self.score_kind: str = _score_kind(self.metadata, where)
        """'softmax' (each frame's scores sum to 1) or 'sigmoid' (one probability per class)."""
        self.num_layers, self.hidden_size = _check_graph(
            self._session, feature_config.n_mels, len(labels), where
        )
        name = self.metadata.get(METADATA_KEYS["name"]) or self.path.stem
        self.sha256 = _sha256_hex(data)
        """SHA-256 of the model file."""
        self.model_id = f"{name}-{self.sha256[:_ID_HASH_CHARS]}"
        """Short identifier for logs and alerts: name and the start of the file's SHA-256."""
        self._state = self.initial_state()
        # named: the wrapper need not list them each call
        self._outputs = [node.name for node in self._session.get_outputs()]
        self.has_novelty: bool = NOVELTY_OUTPUT in self._outputs
        """Whether the model reports :data:`NOVELTY_OUTPUT` (a cluster-centroid model)."""
        self.last_novelty: FloatArray | None = None
        """The novelty of each frame of the last :meth:`step` (frames,), or None when the model
        has no such output."""
        self._check_probabilities(where)

    # -- state -------------------------------------------------------------------------------
    @property
    def state_shape(self) -> tuple[int, int, int]:
        """Shape of ``h`` and ``c``: (num_layers, 1, hidden)."""
        return (self.num_layers, 1, self.hidden_size)

    @property
    def n_mels(self) -> int:
        """Mel bands per feature frame (``feature_config.n_mels``)."""
        return self.feature_config.n_mels

    @property
    def num_classes(self) -> int:
        """Number of classes (columns of :meth:`step`'s scores)."""
        return len(self.labels)

    def initial_state(self) -> LSTMState:
        """The state of a fresh stream (zeros)."""
        zeros = np.zeros(self.state_shape, dtype=np.float32)
        return LSTMState(zeros, zeros.copy())

    def reset(self) -> None:
        """Start a new stream: the next step begins from the initial state."""
        self._state = self.initial_state()
        self.last_novelty = None

    def state_magnitude(self) -> float:
        """Largest ``|c|`` of the current state (a drift/saturation indicator), without the
        copies :meth:`get_state` makes: the pipeline asks after every block."""
        return float(np.abs(self._state.c).max())

    def get_state(self) -> LSTMState:
        """A copy of the current state (changing it does not change the model)."""
        return LSTMState(self._state.h.copy(), self._state.c.copy())

    def set_state(self, state: LSTMState | tuple[npt.ArrayLike, npt.ArrayLike]) -> None:
        """Continue from ``state`` (e.g. one saved by :meth:`get_state`)."""
        h, c = (np.array(part, dtype=np.float32) for part in state)
        for name, array in (("h", h), ("c", c)):
            if array.shape != self.state_shape:
                raise ModelError(
                    f"state {name!r} must have shape {self.state_shape}, got {array.shape}"
                )
            if not np.all(np.isfinite(array)):
                raise ModelError(f"state {name!r} contains NaN or infinity")
        self._state = LSTMState(h, c)

    # -- running -----------------------------------------------------------------------------
    def step(self, features: npt.ArrayLike) -> FloatArray:
        """Feed frames of one stream and carry the state to the next call.

        Parameters
        ----------
        features : array, float32, shape (frames, n_mels)
            Log-mel frames from :class:`~edge_detect.features.StreamingLogMel`; any number of
            frames, also 0.

        Returns
        -------
        ndarray, float32, shape (frames, classes)
            Per-frame class probabilities, columns in the order of :attr:`labels` (a
            distribution per frame, or one-vs-rest probabilities: :attr:`score_kind`).
        """
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_config.n_mels:
            raise ModelError(
                f"step() expects features of shape (frames, {self.n_mels}), got {x.shape}"
            )
        if x.shape[0] == 0:
            if self.has_novelty:
                self.last_novelty = np.zeros(0, dtype=np.float32)
            return np.zeros((0, self.num_classes), dtype=np.float32)
        scores, h_out, c_out, *novelty = self._session.run(
            self._outputs,
            {"features": np.ascontiguousarray(x[None]), "h": self._state.h, "c": self._state.c},
        )
        self._state = LSTMState(h_out, c_out)
        if novelty:
            self.last_novelty = np.asarray(novelty[0][0, :, 0], dtype=np.float32)
        return np.asarray(scores[0], dtype=np.float32)

    def _check_probabilities(self, where: str) -> None:
        """Run one silent frame: the scores must be one probability row per frame."""
        silence = np.full((1, self.n_mels), np.log(self.feature_config.log_floor), dtype=np.float32)
        try:
            scores = self.step(silence)
        except ModelError:
            raise
        except Exception as exc:  # the graph may fail at run time despite matching shapes
            raise ModelError(f"{where} fails on one frame of silence: {exc}") from None
        finally:
            self.reset()
        problem = score_problem(scores)
        if problem is not None and not np.isfinite(scores).all():
            raise ModelError(
                f"{where}: 'scores' must be finite numbers in [0, 1], but on one frame of silence "
                f"{problem}; the exported graph is broken (re-export it, check its weights)"
            )
        total = float(scores.sum())
        if self.score_kind == "sigmoid":  # the range rule only: rows need not sum to 1
            if scores.shape != (1, self.num_classes) or problem is not None:
                raise ModelError(
                    f"{where}: 'scores' must be one probability in [0, 1] per class and frame "
                    f"(metadata says sigmoid), got shape {scores.shape} with values "
                    f"{np.round(scores, 4).tolist()}; was the sigmoid left out at export?"
                )
            return
        if (
            problem is not None
            or scores.shape != (1, self.num_classes)
            or abs(total - 1.0) > _PROBABILITY_TOLERANCE
        ):
            raise ModelError(
                f"{where}: 'scores' must be class probabilities (one row per frame summing to 1), "
                f"got shape {scores.shape} summing to {total:.4g}; was softmax left out at export?"
            )

    def __repr__(self) -> str:
        return (
            f"StreamingModel({self.model_id!r}, labels={list(self.labels)}, "
            f"state={self.state_shape})"
        )


def load_model(path: str | Path | None = None, *, threads: int = 1) -> StreamingModel:
    """Load and validate an edge-detect ONNX model.

    Parameters
    ----------
    path : path, optional
        The ``.onnx`` file; ``None`` means the packaged default :data:`DEFAULT_MODEL_PATH`.
    threads : int
        ONNX Runtime intra-op threads (1 suits a small device).

    Raises
    ------
    ModelError
        The file is missing, not ONNX, truncated, not an edge-detect model, of another schema
        version, or its labels, features or graph do not fit together.
    """
    if path is None:
        if not DEFAULT_MODEL_PATH.is_file():
            raise ModelError(
                f"no default model at {DEFAULT_MODEL_PATH}: this install ships without one. "
                "Pass a model file explicitly (--model PATH), or export one with "
                "'edge-detect export CHECKPOINT -o model.onnx'."
            )
        path = DEFAULT_MODEL_PATH
    return StreamingModel(path, threads=threads)
