"""``edge-detect bench`` on a short paced input with a known onset."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import FIXTURES, ROOT
from test_cli_run import planted
from vmic import TONE_DETECTION

from edge_detect.audio import write_wav

TINY = FIXTURES / "tiny_model.onnx"


def test_bench_reports_every_figure(tmp_path):
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(3.0, [(1.0, 1.0)]), 16_000)
    events = tmp_path / "events.csv"
    events.write_text("onset_s,label\n1.0,baby_cry\n")
    config = tmp_path / "tone.toml"
    config.write_text(TONE_DETECTION)
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "edge_detect", "bench", "--model", str(TINY), "--input", str(wav),
         "--events", str(events), "--config", str(config), "--minutes", "0.05",
         "--fast-seconds", "6", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert "realtime_cpu_percent_of_one_core" in result.stdout
    assert figures["model_bytes"] == TINY.stat().st_size
    assert figures["realtime_audio_s"] == 3.0 and figures["blocks"] == 30
    assert figures["alerts"] == 1 and figures["onset_to_alert_matched"] == 1
    # the fixture model needs ~0.2 s of tone before its score crosses, then 100 ms to confirm
    assert 100 < figures["onset_to_alert_median_ms"] < 1000
    assert 0 <= figures["block_to_alert_median_ms"] < 100
    assert 0 < figures["realtime_cpu_percent_of_one_core"] < 100
    assert 0 < figures["startup_to_model_loaded_ms"] < figures["startup_to_first_block_ms"]
    assert 20 < figures["rss_mb"] < 500
    assert figures["fast_audio_s"] == 6.0 and figures["fast_realtime_factor"] > 1
