"""bench/novelty.py: gates set on validation events and applied to test clips; the whole run on a
real exported model with a centroid head and real audio files."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

torch = pytest.importorskip("torch", reason="exporting a model needs the train extra (torch)")

from edge_detect.audio import write_wav  # noqa: E402
from edge_detect.features import FeatureConfig  # noqa: E402
from export.onnx_export import export_checkpoint  # noqa: E402
from train.checkpoint import save_checkpoint  # noqa: E402
from train.models import ModelConfig, build_model  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_novelty", ROOT / "bench" / "novelty.py")
assert _spec is not None and _spec.loader is not None
novelty = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(novelty)

LABELS = ["dog_bark", "baby_cry", "gun_shot", "background"]


def test_gates_are_set_on_validation_and_count_only_clips_that_pass_the_threshold() -> None:
    val = (np.full(10, 0.9), np.arange(1, 11) / 10)  # novelty 0.1 .. 1.0
    test_events = (np.array([0.9, 0.9, 0.9, 0.2]), np.array([0.2, 0.5, 0.95, 0.0]))
    test_background = (np.array([0.8, 0.6, 0.7, 0.1]), np.array([0.95, 1.5, 0.3, 0.0]))
    row = novelty.gate_report(0.5, val, test_events, test_background, keep=0.9)
    # the last test event and background clip score below the threshold: they never alert
    assert (row["test_events_passing"], row["test_background_passing"]) == (3, 3)
    gate = row["novelty_gate"]
    assert gate["limit"] == pytest.approx(0.91)  # the validation events' 90th percentile
    assert gate["events_kept"] == pytest.approx(2 / 3)  # 0.95 is above the limit
    assert gate["background_kept"] == pytest.approx(1 / 3)  # only 0.3 is under it
    # the score gate keeps 90% of validation events: all score 0.9, so the limit is 0.9
    assert row["score_gate"]["limit"] == pytest.approx(0.9)
    assert row["score_gate"]["background_kept"] == 0.0
    # AUC: passing background novelty (0.95, 1.5, 0.3) above passing events' (0.2, 0.5, 0.95)
    assert row["novelty_auc"] == pytest.approx((3 + 2.5 + 1) / 9)


def test_no_validation_event_passing_leaves_the_gates_undefined() -> None:
    row = novelty.gate_report(0.99, (np.full(3, 0.5), np.zeros(3)), ([], []), ([], []))
    assert row["novelty_gate"] is None and row["score_gate"] is None
    assert row["novelty_auc"] is None


def _centroid_model(path: Path) -> Path:
    config = ModelConfig(
        n_mels=40, num_classes=4, hidden_size=16, embedding_dim=8, head="centroid",
        head_clusters=[2, 1, 1, 3],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config).eval()
    model.norm.set_stats(torch.full((40,), -8.0), torch.full((40,), 3.0))
    features = FeatureConfig(n_mels=40)
    checkpoint = path.with_suffix(".pt")
    save_checkpoint(
        checkpoint,
        {
            "labels": LABELS,
            "model_config": config.to_dict(),
            "feature_config": features.to_dict(),
            "train_config": {"epochs": 1},
            "model_state": model.state_dict(),
            # every clip passes: the gates alone decide
            "detection": {label: {"threshold_on": 0.0, "threshold_off": 0.0} for label in LABELS},
            "metrics": {},
            "data": {},
        },
    )
    export_checkpoint(checkpoint, path)
    return path


def _clips(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for i, label in enumerate(LABELS * 2):
        t = np.arange(8000) / 16000
        tone = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.05 * rng.standard_normal(t.size)
        name = f"{label}_{i}.wav"
        write_wav(folder / name, tone.astype(np.float32), 16000)
        rows.append((name, label))
    manifest = folder / "clips.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return manifest


def test_a_run_on_a_real_model_keeps_every_event_when_validation_is_the_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _centroid_model(tmp_path / "centroid.onnx")
    manifest = _clips(tmp_path)
    out = tmp_path / "novelty.json"
    args = ["--model", str(model), "--val", str(manifest), "--test", str(manifest)]
    assert novelty.main([*args, "--keep", "1.0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["test_clips"] == {label: 2 for label in LABELS}
    for label in LABELS[:3]:
        row = result["classes"][label]
        assert (row["test_events_passing"], row["test_background_passing"]) == (2, 2)
        # gates that keep every validation event keep every test event when they are the same
        assert row["novelty_gate"]["events_kept"] == 1.0
        assert row["score_gate"]["events_kept"] == 1.0
        assert 0.0 <= row["novelty_gate"]["limit"] <= 2.0
    table = capsys.readouterr().out
    assert "| dog_bark | 0.00 | 2 / 2 |" in table


def test_a_model_without_novelty_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _clips(tmp_path)
    bundled = ROOT / "edge_detect" / "assets" / "default_model.onnx"
    code = novelty.main(["--model", str(bundled), "--val", str(manifest), "--test", str(manifest)])
    assert code == 2
    assert "has no novelty output" in capsys.readouterr().err
