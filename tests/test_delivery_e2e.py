"""The detector itself (``edge-detect run`` as a subprocess) SIGKILLed with webhook alerts
pending, then restarted on the same outbox: every alert arrives, in order, each id once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from test_webhook import SECRET, Receiver, wait_until

from edge_detect.audio import read_wav

DEMO = ROOT / "edge_detect" / "assets" / "demo.wav"
DEMO_ALERTS = ["dog_bark", "baby_cry", "gun_shot"]


def _config(path: Path, url: str, outbox: Path) -> Path:
    path.write_text(
        f"""
[sinks.webhook]
outbox = "{outbox}"
url = "{url}"
secret = "{SECRET}"
backoff_initial_s = 0.05
backoff_max_s = 0.2
"""
    )
    return path


def delivered_alerts(receiver: Receiver) -> list[dict]:
    """Alerts the receiver processed, in arrival order (health events left out)."""
    with receiver.lock:
        return [p for p in receiver.processed.values() if p.get("type") == "alert"]


class StdinDetector:
    """``edge-detect run --input -`` fed raw PCM; stdin stays open so the process keeps running."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge_detect", "run", "--input", "-", "--rate", "16000",
             "--config", str(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        self.alerts: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.alerts.append(json.loads(line))

    def end(self) -> None:
        """Kill the process if it still runs and close its pipes."""
        self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass

    def feed(self, samples: np.ndarray) -> None:
        assert self.process.stdin is not None
        pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
        self.process.stdin.write(pcm.tobytes())
        self.process.stdin.flush()


@pytest.mark.skipif(not DEMO.is_file(), reason=f"demo recording {DEMO} missing")
@pytest.mark.skipif(
    not (ROOT / "edge_detect" / "assets" / "default_model.onnx").is_file(),
    reason="no bundled default model",
)
def test_detector_sigkilled_with_pending_alerts_delivers_all_after_restart(tmp_path: Path) -> None:
    receiver = Receiver()
    url = receiver.url
    receiver.stop()  # the endpoint is down while the first detector runs
    outbox = tmp_path / "outbox.sqlite"
    config = _config(tmp_path / "run.toml", url, outbox)
    demo = read_wav(DEMO).samples

    first = StdinDetector(config)
    try:
        first.feed(demo)
        assert wait_until(lambda: len(first.alerts) == len(DEMO_ALERTS), 60), first.alerts
        time.sleep(0.5)  # a few failed delivery attempts against the dead endpoint
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
    finally:
        first.end()
    assert first.process.returncode == -signal.SIGKILL
    assert [a["class"] for a in first.alerts] == DEMO_ALERTS
    pending_ids = [a["id"] for a in first.alerts]

    receiver.start()  # the endpoint is back; a new detector opens the same outbox
    second = StdinDetector(config)
    try:
        second.feed(np.zeros(16_000, dtype=np.float32))  # quiet audio: no new alerts
        assert wait_until(lambda: len(delivered_alerts(receiver)) >= len(pending_ids), 30)
        second.process.send_signal(signal.SIGINT)
        assert second.process.stdin is not None
        second.process.stdin.close()
        assert second.process.wait(timeout=20) == 0
    finally:
        second.end()
        receiver.stop()
    alerts = delivered_alerts(receiver)
    assert [a["id"] for a in alerts] == pending_ids
    assert [a["class"] for a in alerts] == DEMO_ALERTS
    assert receiver.bad_signatures == 0
    ids = receiver.ids()
    assert len(ids) == len(set(ids)), "a delivered message was sent again"
    assert os.path.exists(outbox)
