"""The provenance record every result file carries: commit, dirty flag, versions, host, command
and date, with no absolute path of the machine that made it."""

from __future__ import annotations

import json
import os
import re

from conftest import ROOT

from edge_detect.provenance import checkout_root, provenance, relative_paths


def test_paths_become_relative_to_the_checkout() -> None:
    value = {
        "manifest": str(ROOT.parent / "shared" / "data" / "x" / "manifest.csv"),
        "model": str(ROOT / "runs" / "m.onnx"),
        "nested": [("/tmp/results/out.json", 3), {"url_path": "/metrics", "name": "clip.wav"}],
        "argv": ["--model=/tmp/m.onnx", "--seed", "0"],
    }
    assert relative_paths(value, ROOT) == {
        "manifest": "../shared/data/x/manifest.csv",
        "model": "runs/m.onnx",
        "nested": [[tmp("results/out.json"), 3], {"url_path": "/metrics", "name": "clip.wav"}],
        "argv": [f"--model={tmp('m.onnx')}", "--seed", "0"],
    }


def tmp(name: str) -> str:
    """A /tmp path as seen from the checkout (../../tmp/... here; depends on its depth)."""
    return os.path.relpath(f"/tmp/{name}", ROOT)


def test_the_record_says_which_code_machine_command_and_when() -> None:
    argv = [str(ROOT / ".venv" / "bin" / "edge-detect"), "bench", "--model", str(ROOT / "m.onnx")]
    record = provenance(argv)
    assert set(record) == {"commit", "dirty", "versions", "host", "command", "date_utc"}
    if checkout_root() is not None:  # a clone (CI, a developer); None for an installed copy
        assert re.fullmatch(r"[0-9a-f]{40}", record["commit"])
        assert isinstance(record["dirty"], bool)
    assert record["command"] == "edge-detect bench --model m.onnx"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["date_utc"])
    assert {"edge-detect", "python", "numpy", "onnxruntime"} <= set(record["versions"])
    assert record["host"]["cpus"] >= 1
    assert str(ROOT) not in json.dumps(record)


def test_a_script_is_named_by_its_path_in_the_checkout() -> None:
    record = provenance([str(ROOT / "bench" / "stability.py"), "--hours", "1"])
    assert record["command"] == "python bench/stability.py --hours 1"
    module = provenance([str(ROOT / "edge_detect" / "__main__.py"), "bench"])
    assert module["command"] == "python -m edge_detect bench"
    bare = provenance(["edge-detect", "bench", "--minutes", "1"])  # as typed, found on PATH
    assert bare["command"] == "edge-detect bench --minutes 1"
