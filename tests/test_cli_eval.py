"""``edge-detect eval clips`` as a subprocess, on WAV clips and the fixture model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import FIXTURES, ROOT
from test_cli_run import planted
from vmic import TONE_DETECTION

from edge_detect.audio import write_wav
from edge_detect.errors import DatasetError
from edge_detect.streams import read_manifest

TINY = FIXTURES / "tiny_model.onnx"


def test_per_clip_top_class_and_per_class_error(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    rows = ["path,label"]
    for i in range(3):
        write_wav(clips / f"tone{i}.wav", planted(5.0, [(2.0, 1.0)]), 16_000)
        write_wav(clips / f"quiet{i}.wav", planted(5.0, []), 16_000)
        rows += [f"clips/tone{i}.wav,baby_cry", f"clips/quiet{i}.wav,background"]
    rows += ["clips/quiet0.wav,dog_bark", "clips/tone0.wav,siren"]  # a miss, a false alert
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "tone.toml"
    config.write_text(TONE_DETECTION)
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "-m", "edge_detect", "eval", "clips", "--model", str(TINY),
         "--manifest", str(tmp_path / "manifest.csv"), "--config", str(config),
         "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "accuracy 0.750" in result.stdout
    assert "counted as background: siren" in result.stdout
    summary = json.loads(out.read_text())
    assert summary["mapped_to_background"] == ["siren"]
    assert summary["per_class"]["baby_cry"] == {
        "clips": 3,
        "errors": 0,
        "error_rate": 0.0,
        "false_alerts": 1,
    }
    assert summary["per_class"]["dog_bark"]["errors"] == 1
    assert summary["per_class"]["background"] == {
        "clips": 4,
        "errors": 1,
        "error_rate": 0.25,
        "false_alerts": 1,
    }
    predicted = {(r["path"].split("/")[-1], r["label"]): r["predicted"] for r in summary["results"]}
    assert predicted[("tone1.wav", "baby_cry")] == "baby_cry"
    assert predicted[("quiet0.wav", "dog_bark")] == "background"
    assert predicted[("tone0.wav", "siren")] == "baby_cry"


def test_bad_manifests_are_refused(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("file,class\na.wav,dog_bark\n")
    with pytest.raises(DatasetError, match=r"needs columns 'path' and 'label'"):
        read_manifest(path)
    path.write_text("path,label\n")
    with pytest.raises(DatasetError, match="lists no clips"):
        read_manifest(path)
    with pytest.raises(DatasetError, match="cannot read manifest"):
        read_manifest(tmp_path / "none.csv")
