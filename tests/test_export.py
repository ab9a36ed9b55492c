"""Export: checkpoint -> streaming ONNX, parity, metadata round trip, int8, bad checkpoints."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edge_detect.audio import write_wav  # noqa: E402
from edge_detect.detect import ClassDetection  # noqa: E402
from edge_detect.errors import CheckpointError, ModelError  # noqa: E402
from edge_detect.features import FeatureConfig  # noqa: E402
from edge_detect.model import METADATA_KEYS, load_model  # noqa: E402
from export.onnx_export import (  # noqa: E402
    PARITY_CHUNK_FRAMES,
    ParityError,
    check_parity,
    export_checkpoint,
)
from export.quantize import (  # noqa: E402
    INT8_SCORE_TOLERANCE,
    Int8Error,
    compare_int8,
    macro_f1,
    quantize_int8,
)
from train.checkpoint import file_sha256, save_checkpoint  # noqa: E402
from train.datasets import load_manifest  # noqa: E402
from train.models import ModelConfig, StreamingLSTM, build_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LABELS = ["dog_bark", "baby_cry", "gun_shot", "background"]
# a non-default front end, so that the round trip cannot pass by falling back to defaults
FEATURES = FeatureConfig(n_mels=40, fmax_hz=4_000.0)
SMALL = ModelConfig(n_mels=40, num_classes=4, hidden_size=16, num_layers=2, embedding_dim=8)


def _model(config: ModelConfig = SMALL, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(config).eval()
    if isinstance(model, StreamingLSTM):
        model.norm.set_stats(torch.full((config.n_mels,), -10.0), torch.full((config.n_mels,), 3.0))
    return model


def _checkpoint(path: Path, model: torch.nn.Module | None = None, **extra) -> Path:
    model = model if model is not None else _model()
    payload = {
        "labels": LABELS,
        "model_config": model.config.to_dict(),
        "feature_config": FEATURES.to_dict(),
        "train_config": {"epochs": 1},
        "model_state": model.state_dict(),
        "detection": {"dog_bark": {"threshold_on": 0.7, "threshold_off": 0.4}},
        "metrics": {"val_macro_f1": 0.81},
        # the trainer records the absolute path of its manifest: export makes it relative
        "data": {"manifest": str(ROOT / "corpus" / "manifest.csv"), "licenses": ["CC BY 4.0"]},
        **extra,
    }
    save_checkpoint(path, payload)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("export")
    checkpoint = _checkpoint(folder / "small.pt")
    path, report, _ = export_checkpoint(checkpoint, folder / "small.onnx")
    return checkpoint, path, report


def test_parity_is_checked_at_every_length_and_passes(exported) -> None:
    _, _, report = exported
    names = [row[0] for row in report.rows]
    for frames in PARITY_CHUNK_FRAMES:
        assert f"torch vs onnx, {frames} frame(s)" in names
        assert any(name.startswith(f"onnx chunks of {frames} vs one call") for name in names)
    assert report.passed and report.worst < 1e-4
    assert "worst" in report.format() and ": ok" in report.format()


def test_onnx_matches_torch_through_the_runtime_loader(exported) -> None:
    checkpoint, path, _ = exported
    model = _model()
    runtime = load_model(path)
    x = np.random.default_rng(3).normal(-10, 3, (111, 40)).astype(np.float32)
    with torch.no_grad():
        logits, _, _ = model(torch.from_numpy(x[None]))
    expected = torch.softmax(logits, -1)[0].numpy()
    got = np.concatenate([runtime.step(x[a : a + n]) for a, n in ((0, 1), (1, 10), (11, 100))])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_metadata_round_trip(exported) -> None:
    checkpoint, path, _ = exported
    runtime = load_model(path)
    assert list(runtime.labels) == LABELS
    assert runtime.feature_config == FEATURES
    assert runtime.detection["dog_bark"] == ClassDetection(threshold_on=0.7, threshold_off=0.4)
    assert runtime.detection["gun_shot"] == ClassDetection()
    assert runtime.detection["background"].enabled is False
    assert runtime.model_id.startswith("small-")
    provenance = runtime.provenance
    assert provenance["checkpoint_sha256"] == file_sha256(checkpoint)
    assert provenance["data"] == {"manifest": "corpus/manifest.csv", "licenses": ["CC BY 4.0"]}
    assert provenance["metrics"] == {"val_macro_f1": 0.81}
    assert provenance["model_config"] == SMALL.to_dict()
    assert provenance["quantization"] == "none"
    export = provenance["export"]  # edge_detect.provenance's record
    assert export["date_utc"].endswith("Z") and export["versions"]["torch"]
    assert export["commit"] is None or len(export["commit"]) == 40
    assert str(ROOT) not in json.dumps(provenance)  # no path of the build machine


def test_graph_axes_are_named_and_dynamic(exported) -> None:
    _, path, _ = exported
    graph = onnx.load(str(path)).graph
    dims = {
        value.name: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*graph.input, *graph.output]
    }
    assert dims == {
        "features": ["batch", "frames", 40],
        "h": [2, "batch", 16],
        "c": [2, "batch", 16],
        "scores": ["batch", "frames", 4],
        "h_out": [2, "batch", 16],
        "c_out": [2, "batch", 16],
    }


def test_parity_check_catches_a_model_that_differs(exported) -> None:
    _, path, _ = exported
    other = _model(seed=1)  # same architecture, other weights
    with pytest.raises(ParityError, match=r"differs from the torch model by more than 1e-04"):
        check_parity(other, path)


def test_a_model_that_fails_parity_is_not_left_behind(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "small.pt")
    # torch and ONNX Runtime round differently (about 1e-8): a zero tolerance must fail
    with pytest.raises(ParityError, match="by more than 0e[+]00"):
        export_checkpoint(checkpoint, tmp_path / "strict.onnx", tolerance=0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pt"]


def test_fixture_script_rebuilds_the_committed_fixture(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_tiny", FIXTURES / "make_tiny_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rebuilt = load_model(module.build(tmp_path / "tiny.onnx"))
    committed = load_model(FIXTURES / "tiny_model.onnx")
    assert rebuilt.metadata == committed.metadata
    x = np.random.default_rng(0).normal(-12, 4, (50, 64)).astype(np.float32)
    np.testing.assert_allclose(rebuilt.step(x), committed.step(x), atol=1e-6)


# -- bad checkpoints -------------------------------------------------------------------------
def test_random_bytes_are_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(CheckpointError, match="is not a readable edge-detect checkpoint"):
        export_checkpoint(path, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_a_saved_tensor_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="is not an edge-detect checkpoint .*found 'Tensor'"):
        export_checkpoint(path, tmp_path / "out.onnx")


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        export_checkpoint(tmp_path / "nope.pt", tmp_path / "out.onnx")


def test_cnn_checkpoint_is_refused(tmp_path: Path) -> None:
    cnn = _model(ModelConfig(kind="cnn", n_mels=40, num_classes=4, hidden_size=16))
    path = _checkpoint(tmp_path / "cnn.pt", cnn)
    with pytest.raises(ModelError, match="holds a 'cnn' model; only the streaming LSTM"):
        export_checkpoint(path, tmp_path / "out.onnx")


def test_feature_and_model_sizes_must_agree(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path / "bad.pt", feature_config=FeatureConfig(n_mels=64).to_dict())
    with pytest.raises(CheckpointError, match="takes 40 features per frame but .* makes 64"):
        export_checkpoint(path, tmp_path / "out.onnx")


# -- int8 ------------------------------------------------------------------------------------
def test_macro_f1_by_hand() -> None:
    # class 0: tp 1, fp 0, fn 1 -> 2/3; class 1: tp 1, fp 1, fn 0 -> 2/3; class 2 absent: skipped
    assert macro_f1([0, 0, 1], [0, 1, 1], 3) == pytest.approx(2 / 3)
    # class 0 never predicted: F1 0; class 1: tp 1, fp 2, fn 0 -> 0.5
    assert macro_f1([0, 0, 1], [1, 1, 1], 2) == pytest.approx(0.25)
    assert macro_f1([0, 0, 1, 1], [0, 1, 1, 0], 3) == pytest.approx(0.5)
    assert macro_f1([0, 1], [0, 1], 4) == 1.0


def _tone_manifest(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["path,label,group"]
    t = np.arange(8_000) / 16_000
    for i, label in enumerate(LABELS * 2):
        audio = 0.2 * np.sin(2 * np.pi * (300 + 400 * i) * t) + 0.01 * rng.standard_normal(t.size)
        write_wav(folder / f"{i}.wav", audio.astype(np.float32), 16_000)
        rows.append(f"{i}.wav,{label},g{i}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def test_int8_variant_carries_the_contract_and_is_compared(exported, tmp_path: Path) -> None:
    _, path, _ = exported
    int8 = quantize_int8(path, tmp_path / "small.int8.onnx")
    runtime = load_model(int8)
    assert runtime.labels == load_model(path).labels
    assert runtime.metadata[METADATA_KEYS["name"]] == "small-int8"
    assert runtime.provenance["quantization"].startswith("int8-dynamic")
    clips = load_manifest(_tone_manifest(tmp_path))
    report = compare_int8(path, int8, clips=clips)
    assert report.int8_bytes < report.fp32_bytes
    assert report.clips == 8 and report.metric.startswith("macro F1")
    assert 0.0 <= report.int8_value <= 1.0 and report.f1_drop_points is not None
    assert report.p99_score_diff <= INT8_SCORE_TOLERANCE and report.frame_agreement > 0.9
    assert report.frames_compared.endswith("frames of the clips")
    assert "int8 size" in report.format() and "drop" in report.format()
    blind = compare_int8(path, int8)
    assert blind.metric.startswith("top-class agreement") and blind.int8_value >= 0.95
    assert "metric change was NOT measured" in blind.format()
    assert f"(no validation data): {blind.int8_value:.2%} (floor 95%)" in blind.format()


def test_int8_check_fails_when_the_model_differs(exported, tmp_path: Path) -> None:
    _, path, _ = exported
    other, _, _ = export_checkpoint(
        _checkpoint(tmp_path / "other.pt", _model(seed=7)), tmp_path / "other.onnx"
    )
    with pytest.raises(
        Int8Error, match="loses too much: the 99th percentile of score differences is"
    ):
        compare_int8(path, other)
    report = compare_int8(path, other, enforce=False)
    assert any(note.startswith("NOT ENFORCED") for note in report.notes)


# -- the CLI ---------------------------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "export", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=300,
    )


def test_cli_exports_with_int8_and_a_manifest(exported, tmp_path: Path) -> None:
    checkpoint, _, _ = exported
    manifest = _tone_manifest(tmp_path)
    out = tmp_path / "cli.onnx"
    result = _cli(str(checkpoint), "-o", str(out), "--int8", "--manifest", str(manifest))
    assert result.returncode == 0, result.stderr
    assert "torch vs onnx, 100 frame(s)" in result.stdout and ": ok" in result.stdout
    assert "int8 check on: 8 clips of" in result.stdout
    assert "int8 macro F1 (validation clips) on 8 clips" in result.stdout
    assert "Traceback" not in result.stderr and "pre-processing" not in result.stderr
    assert load_model(out).labels == tuple(LABELS)
    assert json.loads(load_model(tmp_path / "cli.int8.onnx").metadata[METADATA_KEYS["labels"]])


def test_cli_reports_a_bad_checkpoint_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    result = _cli(str(path), "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 2
    assert (
        "edge-detect: error:" in result.stderr
        and "is not an edge-detect checkpoint" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_validation_clips_come_from_the_checkpoint_provenance(tmp_path: Path) -> None:
    import argparse

    from export.export_cli import _validation_clips

    manifest = _tone_manifest(tmp_path)
    args = argparse.Namespace(manifest=None, int8_clips=100)
    data = {"data": {"manifest": str(manifest), "validation_groups": ["g0", "g5", "g7"]}}
    clips, source = _validation_clips(args, data, LABELS)
    assert clips is not None and sorted(clip.group for clip in clips) == ["g0", "g5", "g7"]
    assert source == f"3 clips of {manifest}, the checkpoint's validation groups"
    clips, source = _validation_clips(args, {"data": {"manifest": "/nowhere/m.csv"}}, LABELS)
    assert clips is None and source == "no validation data"
    args = argparse.Namespace(manifest=manifest, int8_clips=5)
    clips, source = _validation_clips(args, {}, LABELS)
    assert clips is not None and len(clips) == 5
    assert source.endswith("(all clips: the checkpoint names no validation groups)")


def test_cli_int8_gate_fails_and_removes_the_int8_model(exported, tmp_path: Path) -> None:
    checkpoint, _, _ = exported
    manifest = _tone_manifest(tmp_path)
    out = tmp_path / "gate.onnx"
    # a negative allowed drop demands that int8 be better than fp32: the gate must refuse
    result = _cli(
        str(checkpoint), "-o", str(out), "--int8", "--manifest", str(manifest),
        "--int8-max-drop", "-1",
    )  # fmt: skip
    assert result.returncode == 2
    assert "loses too much: macro F1 drops" in result.stderr and "(> -1.0)" in result.stderr
    assert "--no-int8-check" in result.stderr
    assert out.is_file() and not (tmp_path / "gate.int8.onnx").exists()


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_centroid_head_and_sigmoid_scores_export_with_parity(tmp_path: Path, output: str) -> None:
    # the cluster method's cosine head over 6 + 1 + 2 + 16 prototypes, either output function
    config = ModelConfig(
        n_mels=40,
        num_classes=4,
        hidden_size=16,
        embedding_dim=8,
        head="centroid",
        head_clusters=[6, 1, 2, 16],
        output=output,
    )
    model = _model(config, seed=2)
    with torch.no_grad():  # prototypes somewhere other than their random start
        model.classifier.weight.add_(0.3 * torch.randn_like(model.classifier.weight))
    checkpoint = _checkpoint(tmp_path / "centroid.pt", model)
    path, report, _ = export_checkpoint(checkpoint, tmp_path / "centroid.onnx")
    assert report.passed and report.worst < 1e-4, report.format()
    runtime = load_model(path)
    assert runtime.score_kind == output
    x = np.random.default_rng(4).normal(-10, 3, (57, 40)).astype(np.float32)
    with torch.no_grad():
        logits, _, _ = model(torch.from_numpy(x[None]))
    expected = (torch.sigmoid(logits) if output == "sigmoid" else torch.softmax(logits, -1))[0]
    got = np.concatenate([runtime.step(x[:7]), runtime.step(x[7:])])
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    if output == "sigmoid":  # one-vs-rest: rows are not distributions
        assert np.abs(got.sum(1) - 1.0).max() > 1e-2


def test_centroid_head_exports_novelty_to_the_nearest_event_centroid(tmp_path: Path) -> None:
    # the rejection score of issue 14: 1 - cosine to the nearest prototype of an event class
    # (background's 16 prototypes do not count), per frame, through the runtime loader
    config = ModelConfig(
        n_mels=40, num_classes=4, hidden_size=16, embedding_dim=8, head="centroid",
        head_clusters=[6, 1, 2, 16],
    )  # fmt: skip
    model = _model(config, seed=3)
    checkpoint = _checkpoint(tmp_path / "centroid.pt", model)
    path, report, _ = export_checkpoint(checkpoint, tmp_path / "centroid.onnx")
    assert report.passed and report.worst < 1e-4, report.format()
    runtime = load_model(path)
    assert runtime.has_novelty and runtime.last_novelty is None
    x = np.random.default_rng(5).normal(-10, 3, (61, 40)).astype(np.float32)
    got = []
    for part in (x[:9], x[9:10], x[10:]):  # chunked, the state carried
        runtime.step(part)
        assert runtime.last_novelty is not None and runtime.last_novelty.shape == (len(part),)
        got.append(runtime.last_novelty)
    with torch.no_grad():
        emb = model.embed(torch.from_numpy(x[None]))[0][0].numpy()  # (T, E)
    prototypes = model.classifier.weight.detach().numpy()[:9]  # dog 6, cry 1, gun 2
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    protos = prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True)
    expected = 1.0 - (unit @ protos.T).max(1)
    np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-5)
    assert 0.0 <= expected.min() and expected.max() <= 2.0
    # a frame on an event prototype has novelty 0: the head alone, in torch
    on_prototype = torch.from_numpy(3.0 * prototypes[6:7])  # the crying prototype, scaled
    with torch.no_grad():
        assert float(model.classifier.novelty(on_prototype, [0, 1, 2])) == pytest.approx(
            0, abs=1e-6
        )
        assert float(model.classifier.novelty(on_prototype, [0, 2])) > 1e-3  # without crying's


def test_a_linear_head_has_no_novelty_output(exported) -> None:
    _, path, _ = exported
    runtime = load_model(path)
    runtime.step(np.zeros((3, runtime.n_mels), dtype=np.float32))
    assert not runtime.has_novelty and runtime.last_novelty is None


def test_an_unknown_score_kind_is_refused(exported, tmp_path: Path) -> None:
    _, path, _ = exported
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEYS["scores"]:
            prop.value = "logits"
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelError, match="must be one of"):
        load_model(tmp_path / "bad.onnx")


def test_crafted_checkpoint_is_refused_without_running_its_code(tmp_path: Path) -> None:
    """Issue 15 item 11: ``torch.load(weights_only=False)`` ran a crafted file's code."""
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "edge-detect-checkpoint", "x": Payload()}, crafted, pickle_module=pickle)
    out = tmp_path / "m.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "edge_detect", "export", str(crafted), "-o", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert not marker.exists(), "the checkpoint's code ran"
    assert result.returncode == 2, result.stderr
    assert "names posix.system" in result.stderr and "refused without running" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_frequency_front_exports_with_parity_at_every_length(tmp_path: Path) -> None:
    config = ModelConfig(
        n_mels=40, num_classes=4, hidden_size=16, embedding_dim=8, front_channels=4
    )
    checkpoint = _checkpoint(tmp_path / "front.pt", _model(config, seed=3))
    path, report, _ = export_checkpoint(checkpoint, tmp_path / "front.onnx")
    assert report.passed and report.worst < 1e-4, report.format()
    assert load_model(path).num_classes == 4
