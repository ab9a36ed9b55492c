"""The runtime model loader: accepts the committed tiny model, refuses everything else clearly.

No torch here: the fixture ``tests/fixtures/tiny_model.onnx`` is built by
``tests/fixtures/make_tiny_model.py`` and committed. Broken variants are made with ``onnx``.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError, ModelError
from edge_detect.features import FeatureConfig, StreamingLogMel, log_mel
from edge_detect.model import (
    DEFAULT_MODEL_PATH,
    METADATA_KEYS,
    SCHEMA_VERSION,
    LSTMState,
    StreamingModel,
    load_model,
    score_problem,
)

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny_model.onnx"
LABELS = ("dog_bark", "baby_cry", "gun_shot", "background")
ROOT = Path(__file__).resolve().parent.parent


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-12.0, 4.0, (n, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> StreamingModel:
    return load_model(TINY)


def _variant(tmp_path: Path, *, set_meta=None, drop_meta=(), edit=None, name="variant.onnx"):
    """A copy of the tiny model with metadata changed and/or the graph edited in place."""
    proto = onnx.load(str(TINY))
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(set_meta or {})
    for key in drop_meta:
        meta.pop(key)
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    if edit is not None:
        edit(proto)
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


# -- accepts -------------------------------------------------------------------------------
def test_loads_the_tiny_model_with_its_contract(model: StreamingModel) -> None:
    assert model.labels == LABELS
    assert model.feature_config == FeatureConfig()
    assert set(model.detection) == set(LABELS)
    assert model.detection["background"].enabled is False
    assert model.detection["dog_bark"] == ClassDetection()
    assert model.state_shape == (2, 1, 8)
    assert model.num_classes == 4 and model.n_mels == 64
    assert model.metadata[METADATA_KEYS["schema_version"]] == str(SCHEMA_VERSION)
    assert model.provenance["built_by"] == "tests/fixtures/make_tiny_model.py"
    assert model.model_id.startswith("tiny-test-model-")
    assert model.model_id.endswith(model.sha256[:12]) and len(model.sha256) == 64
    # computed without hashlib (OpenSSL is resident memory the runtime does not need)
    assert model.sha256 == hashlib.sha256(model.path.read_bytes()).hexdigest()
    options = model._session.get_session_options()
    assert options.intra_op_num_threads == 1


def test_step_returns_probabilities_per_frame(model: StreamingModel) -> None:
    model.reset()
    scores = model.step(_frames(30))
    assert scores.shape == (30, 4) and scores.dtype == np.float32
    assert np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
    assert model.step(np.zeros((0, 64), np.float32)).shape == (0, 4)


def test_chunked_steps_equal_one_step_and_state_is_carried(model: StreamingModel) -> None:
    x = _frames(57, seed=1)
    model.reset()
    whole = model.step(x)
    model.reset()
    parts = np.concatenate([model.step(x[a:b]) for a, b in ((0, 1), (1, 11), (11, 40), (40, 57))])
    np.testing.assert_allclose(parts, whole, atol=1e-6)
    # the same frames again, now from the carried state, give other scores than from reset
    carried = model.step(x[:10])
    model.reset()
    fresh = model.step(x[:10])
    assert np.max(np.abs(carried - fresh)) > 1e-4


def test_get_and_set_state_resume_a_stream(model: StreamingModel) -> None:
    x = _frames(40, seed=2)
    model.reset()
    assert np.all(model.get_state().h == 0)
    model.step(x[:20])
    saved = model.get_state()
    assert isinstance(saved, LSTMState) and saved.h.shape == (2, 1, 8)
    assert np.any(saved.h != 0) and np.any(saved.c != 0)
    probe = model.get_state()
    probe.h[...] = 5.0  # get_state returns a copy: editing it leaves the model alone
    np.testing.assert_array_equal(model.get_state().h, saved.h)
    expected = model.step(x[20:])
    model.reset()
    model.set_state(saved)
    saved.h[...] = 5.0  # set_state copies too
    np.testing.assert_array_equal(model.step(x[20:]), expected)


def test_real_audio_features_run(model: StreamingModel) -> None:
    t = np.arange(16_000) / 16_000
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    features = log_mel(audio, model.feature_config)
    stream = StreamingLogMel(model.feature_config)
    streamed = np.concatenate([stream.process(audio[i : i + 1600]) for i in range(0, 16_000, 1600)])
    model.reset()
    a = model.step(features)
    model.reset()
    np.testing.assert_allclose(model.step(streamed), a, atol=1e-6)
    assert a.shape == (98, 4)


def test_runtime_loads_the_model_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from edge_detect.model import load_model\n"
        f"m = load_model({str(TINY)!r})\n"
        "print(m.step(np.zeros((3, 64), np.float32)).shape)\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 4)"


# -- bad use of a good model ---------------------------------------------------------------
def test_step_and_set_state_refuse_wrong_shapes(model: StreamingModel) -> None:
    with pytest.raises(
        ModelError, match=r"expects features of shape \(frames, 64\), got \(5, 40\)"
    ):
        model.step(np.zeros((5, 40), np.float32))
    with pytest.raises(ModelError, match=r"got \(64,\)"):
        model.step(np.zeros(64, np.float32))
    with pytest.raises(ModelError, match=r"state 'h' must have shape \(2, 1, 8\), got \(1, 1, 8\)"):
        model.set_state((np.zeros((1, 1, 8)), np.zeros((2, 1, 8))))
    bad = np.zeros((2, 1, 8))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ModelError, match="state 'c' contains NaN"):
        model.set_state((np.zeros((2, 1, 8)), bad))


def test_thread_count_is_checked() -> None:
    assert load_model(TINY, threads=2)._session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(ConfigError, match="threads must be a positive integer, got 0"):
        load_model(TINY, threads=0)


def test_default_model_path_and_missing_default() -> None:
    assert DEFAULT_MODEL_PATH.name == "default_model.onnx"
    assert DEFAULT_MODEL_PATH.parent.name == "assets"
    if DEFAULT_MODEL_PATH.is_file():
        assert isinstance(load_model(None), StreamingModel)
    else:
        with pytest.raises(ModelError, match="no default model at .*default_model.onnx.*--model"):
            load_model(None)


# -- refuses -------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist; expected an .onnx file"):
        load_model(tmp_path / "nope.onnx")


def test_truncated_file(tmp_path: Path) -> None:
    data = TINY.read_bytes()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=r"is not a loadable ONNX model: .*truncated or corrupt"):
        load_model(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelError, match="4096 bytes\\) is not a loadable ONNX model"):
        load_model(path)


def _add_graph(metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["z"])], "add", [x, y], [z])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    return proto


def test_foreign_onnx_model(tmp_path: Path) -> None:
    path = tmp_path / "add.onnx"
    onnx.save(_add_graph(), str(path))
    with pytest.raises(ModelError, match="is an ONNX model but not an edge-detect model"):
        load_model(path)


def test_foreign_graph_with_our_metadata(tmp_path: Path) -> None:
    meta = {p.key: p.value for p in onnx.load(str(TINY)).metadata_props}
    path = tmp_path / "add_with_meta.onnx"
    onnx.save(_add_graph(meta), str(path))
    with pytest.raises(
        ModelError,
        match=r"expected graph inputs \['features', 'h', 'c'\] .* found inputs \['x', 'y'\]",
    ):
        load_model(path)


def test_unknown_schema_version(tmp_path: Path) -> None:
    path = _variant(tmp_path, set_meta={METADATA_KEYS["schema_version"]: "99"})
    with pytest.raises(ModelError, match="schema version '99'; this edge-detect reads version 1"):
        load_model(path)


@pytest.mark.parametrize("field", ["labels", "feature_config", "detection", "schema_version"])
def test_missing_metadata_key(tmp_path: Path, field: str) -> None:
    path = _variant(tmp_path, drop_meta=[METADATA_KEYS[field]])
    with pytest.raises(ModelError, match=rf"metadata lacks \['{METADATA_KEYS[field]}'\]"):
        load_model(path)


def test_metadata_that_is_not_json(tmp_path: Path) -> None:
    path = _variant(tmp_path, set_meta={METADATA_KEYS["labels"]: "dog_bark,baby_cry"})
    with pytest.raises(ModelError, match="'edge_detect.labels' is not valid JSON"):
        load_model(path)


def test_labels_do_not_match_the_scores(tmp_path: Path) -> None:
    labels = [*LABELS, "glass_break"]
    detection = {label: ClassDetection().to_dict() for label in labels}
    path = _variant(
        tmp_path,
        set_meta={
            METADATA_KEYS["labels"]: json.dumps(labels),
            METADATA_KEYS["detection"]: json.dumps(detection),
        },
    )
    with pytest.raises(
        ModelError, match=r"'scores' must be \[batch, frames, 5\] \(5 = number of labels\), found "
    ):
        load_model(path)


def test_duplicate_labels(tmp_path: Path) -> None:
    path = _variant(tmp_path, set_meta={METADATA_KEYS["labels"]: json.dumps(["a", "a", "b", "c"])})
    with pytest.raises(ModelError, match="labels must be a non-empty JSON list of distinct names"):
        load_model(path)


def test_detection_must_cover_every_label(tmp_path: Path) -> None:
    detection = {label: {} for label in LABELS[:3]}
    path = _variant(tmp_path, set_meta={METADATA_KEYS["detection"]: json.dumps(detection)})
    with pytest.raises(ModelError, match="one entry per label .* found \\['baby_cry', 'dog_bark'"):
        load_model(path)


def test_invalid_detection_settings(tmp_path: Path) -> None:
    detection = {label: {"threshold_on": 0.2, "threshold_off": 0.6} for label in LABELS}
    path = _variant(tmp_path, set_meta={METADATA_KEYS["detection"]: json.dumps(detection)})
    with pytest.raises(ModelError, match="settings of 'dog_bark': need 0 <= threshold_off"):
        load_model(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_mels": 40}, r"'features' must be \[batch, frames, 40\] .*found \[batch, frames, 64\]"),
        (
            {"pcen": True},
            r"cannot produce the features .*unknown feature config key\(s\) \['pcen'\]",
        ),
        ({"hop_ms": 10.03}, "cannot produce the features .*whole number of samples"),
        ({"fmax_hz": 12_000.0}, "cannot produce the features .*fmax_hz <= sample_rate_hz / 2"),
        (
            {"sample_rate_hz": 1_000, "fmax_hz": 500.0, "window_ms": 25.0, "n_fft": 32},
            "expects audio at 1000 Hz; the runtime resamples to rates between 4000 and",
        ),
    ],
)
def test_feature_config_the_runtime_cannot_produce(tmp_path: Path, change, message) -> None:
    config = {**FeatureConfig().to_dict(), **change}
    path = _variant(tmp_path, set_meta={METADATA_KEYS["feature_config"]: json.dumps(config)})
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_fixed_frames_axis_is_refused(tmp_path: Path) -> None:
    """What torch's dynamo exporter produces for an LSTM: the time axis frozen at the example's."""

    def freeze_frames(proto: onnx.ModelProto) -> None:
        dim = proto.graph.input[0].type.tensor_type.shape.dim[1]
        dim.dim_value = 10

    path = _variant(tmp_path, edit=freeze_frames)
    with pytest.raises(
        ModelError, match=r"'features' must be \[batch, frames, 64\] with a dynamic frames axis"
    ):
        load_model(path)


def test_logits_instead_of_probabilities_are_refused(tmp_path: Path) -> None:
    def drop_softmax(proto: onnx.ModelProto) -> None:
        nodes = list(proto.graph.node)
        softmax = next(n for n in nodes if n.op_type == "Softmax")
        for node in nodes:
            for i, name in enumerate(node.output):
                if name == softmax.input[0]:
                    node.output[i] = "scores"
        proto.graph.node.remove(softmax)

    path = _variant(tmp_path, edit=drop_softmax)
    with pytest.raises(ModelError, match="'scores' must be class probabilities .*softmax"):
        load_model(path)


def poison_scores(proto: onnx.ModelProto, *, loud_above: float | None = None) -> None:
    """Make 'scores' NaN: always, or only in calls whose largest feature is above ``loud_above``
    (then silence, which the load check runs, still gives probabilities)."""
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    softmax.output[0] = "probs"
    nodes = []
    if loud_above is None:
        nan = helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")])
        nodes.append(helper.make_node("Constant", [], ["poison"], value=nan))
    else:
        # sqrt(loud_above - max(features)) is NaN exactly when the input is loud; times 0 it
        # is 0 otherwise
        limit = helper.make_tensor("limit", TensorProto.FLOAT, [], [loud_above])
        zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
        nodes += [
            helper.make_node("Constant", [], ["limit"], value=limit),
            helper.make_node("Constant", [], ["zero"], value=zero),
            helper.make_node("ReduceMax", ["features"], ["loudest"], keepdims=0),
            helper.make_node("Sub", ["limit", "loudest"], ["margin"]),
            helper.make_node("Sqrt", ["margin"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["poison"]),
        ]
    nodes.append(helper.make_node("Add", ["probs", "poison"], ["scores"]))
    proto.graph.node.extend(nodes)


def test_nan_scores_are_refused_at_load(tmp_path: Path) -> None:
    """Issue 15 item 4: ``abs(total - 1) > tol`` is False for NaN, so a NaN model loaded."""
    path = _variant(tmp_path, edit=poison_scores)
    with pytest.raises(ModelError, match=r"'scores' must be finite numbers in \[0, 1\].*nan"):
        load_model(path)


def test_scores_out_of_range_are_refused_before_the_sum_rule() -> None:
    from edge_detect.model import score_problem

    assert score_problem(np.array([[0.2, 0.8]], np.float32)) is None
    assert "nan" in str(score_problem(np.array([[np.nan, 1.0]], np.float32)))
    assert "inf" in str(score_problem(np.array([[np.inf, 0.0]], np.float32)))
    assert "-0.5" in str(score_problem(np.array([[-0.5, 1.5]], np.float32)))


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0, 0.5, 1.0],
        [1.0 + 1e-6, -1e-6],  # rounding of a softmax: accepted
        [0.2, 1.0 + 3e-6],
        [-3e-6, 0.5],
        [float("nan"), 0.5],
        [0.5, float("nan")],
        [float("inf")],
        [-float("inf"), 0.1],
        [float("nan"), float("inf")],
    ],
)
def test_score_check_fast_path_agrees_with_its_definition(values: list[float]) -> None:
    """score_problem's two-reduction good case is exactly 'every score finite and in range'."""
    x = np.asarray(values, dtype=np.float32).reshape(1, -1)
    low, high = np.float32(-1e-6), np.float32(1.0 + 1e-6)
    good = bool(np.isfinite(x).all() and ((x >= low) & (x <= high)).all())
    assert (score_problem(x) is None) == good
