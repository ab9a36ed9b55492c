"""End to end through a real audio stack: PulseAudio null sink -> ALSA -> PortAudio -> detector.

The fixture starts its own PulseAudio server (no sound hardware needed) with a 16 kHz mono null
sink ``vspk`` whose monitor is the default capture source; ``paplay --device=vspk`` plays into
the "microphone". The detector runs as a subprocess with ``PULSE_SERVER`` in its environment
(it must be set before sounddevice is imported). Skips with the reason where PulseAudio or
PortAudio are missing (``apt install libportaudio2 pulseaudio pulseaudio-utils
libasound2-plugins``).
"""

from __future__ import annotations

import ctypes.util
import json
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import FIXTURES, ROOT
from vmic import RATE, TONE_CONFIG, VirtualMic, tone_wav

from edge_detect.audio import write_wav

TINY = FIXTURES / "tiny_model.onnx"
DEFAULT_MODEL = ROOT / "edge_detect" / "assets" / "default_model.onnx"

MISSING = [tool for tool in ("pulseaudio", "pactl", "paplay", "pacat") if not shutil.which(tool)]
if not ctypes.util.find_library("portaudio"):
    MISSING.append("libportaudio2")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"virtual microphone needs {MISSING}: apt install libportaudio2 pulseaudio "
        "pulseaudio-utils libasound2-plugins",
    ),
]


@pytest.fixture
def vmic():
    # a short path: unix socket paths are limited to 108 bytes
    directory = Path(tempfile.mkdtemp(prefix="vmic-"))
    mic = VirtualMic(directory)
    mic.start()
    yield mic
    mic.stop()
    shutil.rmtree(directory, ignore_errors=True)


class Detector:
    """``edge-detect run`` on the default microphone; its stdout lines arrive on a queue."""

    def __init__(self, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        with open(log, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge_detect", "run", "--input", "mic", "--health-stdout",
                 *args],
                env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
            )  # fmt: skip
        self.lines: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def wait_for(self, what: str, timeout: float) -> dict:
        """The next message whose event or class is ``what`` (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(message)
            if what in (message.get("event"), message.get("class")):
                return message
        raise AssertionError(
            f"no {what!r} within {timeout} s; got {self.seen}; log:\n{self.log.read_text()}"
        )

    def wait_until_listening(self, timeout: float = 30) -> None:
        """Until the microphone stream is open: 'started' comes before PortAudio opens it, and on
        a cold machine opening took more than the 2 s the tests used to wait (CI, stop 18)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " open: " in self.log.read_text():
                return
            time.sleep(0.1)
        raise AssertionError(f"microphone not open within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> str:
        """SIGINT, wait for the exit, collect the remaining lines; returns the stderr log."""
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        finally:
            self.process.kill()
        self._reader.join(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.log.read_text()


def alerts(detector: Detector) -> list[str]:
    return [m["class"] for m in detector.seen if m["type"] == "alert"]


def test_event_played_into_the_virtual_microphone_alerts_once(vmic, tmp_path):
    config = tmp_path / "tone.toml"
    config.write_text(TONE_CONFIG)
    detector = Detector(
        vmic.env, tmp_path / "stderr.log", "--model", str(TINY), "--config", str(config)
    )
    try:
        detector.wait_for("started", 30)
        detector.wait_until_listening()
        # let the cold-start transient of the fixture model and the refractory time pass
        time.sleep(2.0)
        vmic.play(tone_wav(tmp_path / "tone.wav"))
        alert = detector.wait_for("baby_cry", 10)
        time.sleep(1.0)
    finally:
        err = detector.stop()
    assert alert["model_id"].startswith("tiny-test-model")
    assert alerts(detector) == ["baby_cry"], err
    assert detector.seen[-1]["event"] == "stopping"
    assert detector.process.returncode == 0, err


def test_detector_recovers_when_the_audio_server_restarts(vmic, tmp_path):
    config = tmp_path / "tone.toml"
    config.write_text(TONE_CONFIG)
    wav = tone_wav(tmp_path / "tone.wav")
    # by name: after PortAudio is re-initialised the name is looked up again
    detector = Detector(
        vmic.env, tmp_path / "stderr.log", "--device", "pulse", "--model", str(TINY),
        "--config", str(config),
    )  # fmt: skip
    try:
        detector.wait_for("started", 30)
        detector.wait_until_listening()
        time.sleep(2.0)
        vmic.play(wav)
        detector.wait_for("baby_cry", 10)
        vmic.stop()
        lost = detector.wait_for("microphone_lost", 15)
        time.sleep(1.0)  # a few failed reopen attempts while the server is down
        vmic.start()
        restored = detector.wait_for("microphone_restored", 30)
        time.sleep(2.0)
        vmic.play(wav)
        detector.wait_for("baby_cry", 10)
    finally:
        err = detector.stop()
    assert detector.process.returncode == 0, err
    assert lost["seq"] < restored["seq"]
    assert alerts(detector) == ["baby_cry", "baby_cry"], err
    assert "microphone lost" in err and "microphone restored" in err


def test_detector_survives_the_audio_server_stalling(vmic, tmp_path):
    """Issue 15 item 1: SIGSTOP of the audio server for 9 s, then SIGCONT, crashed the detector
    (SIGSEGV or "double free or corruption") 3 runs of 3: a close blocked by the stall was
    abandoned in its own thread and PortAudio re-initialised beside it. Now one thread makes
    every PortAudio call in order; two stalls in a row, detection before, between and after."""
    config = tmp_path / "tone.toml"
    config.write_text(TONE_CONFIG)
    wav = tone_wav(tmp_path / "tone.wav")
    detector = Detector(
        vmic.env, tmp_path / "stderr.log", "--model", str(TINY), "--config", str(config)
    )
    assert vmic.server is not None
    try:
        detector.wait_for("started", 30)
        detector.wait_until_listening()
        time.sleep(2.0)
        vmic.play(wav)
        detector.wait_for("baby_cry", 10)
        for _ in range(2):
            vmic.server.send_signal(signal.SIGSTOP)
            try:
                detector.wait_for("microphone_lost", 15)
                time.sleep(9.0)
            finally:
                vmic.server.send_signal(signal.SIGCONT)
            detector.wait_for("microphone_restored", 30)
            assert detector.process.poll() is None, detector.log.read_text()
            time.sleep(2.0)
            vmic.play(wav)
            detector.wait_for("baby_cry", 10)
    finally:
        err = detector.stop()
    assert detector.process.returncode == 0, err
    assert alerts(detector) == ["baby_cry"] * 3, err
    events = [m["event"] for m in detector.seen if m["type"] == "health"]
    assert events[-1] == "stopping", err
    assert events.count("microphone_lost") == events.count("microphone_restored") == 2, events
    assert "ALSA lib" not in err and "jack server" not in err  # no library chatter in the log


def test_devices_lists_the_virtual_microphone(vmic):
    result = subprocess.run(
        [sys.executable, "-m", "edge_detect", "devices"],
        env=vmic.env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    names = [line.split()[-1] for line in result.stdout.splitlines()[1:]]
    assert "pulse" in names and "default" in names


@pytest.mark.skipif(
    not DEFAULT_MODEL.is_file(), reason=f"no trained default model at {DEFAULT_MODEL} yet"
)
def test_real_event_through_the_virtual_microphone_with_the_default_model(vmic, tmp_path):
    from edge_detect.audio import read_wav

    demo = read_wav(ROOT / "edge_detect" / "assets" / "demo.wav")
    # the gunshot of the demo (19.0-20.2 s) with 1.5 s of its background before and after
    cut = demo.samples[round(17.5 * RATE) : round(21.7 * RATE)]
    wav = tmp_path / "gun_shot.wav"
    write_wav(wav, cut, RATE)
    # The bundled gun_shot threshold_on (0.991, calibrated for 1 false alarm per hour) sits at
    # this gunshot's smoothed peak: 0.990-0.994 once PulseAudio's 44.1 kHz capture has resampled
    # it, so the bundled setting alone alerted in 9 of 12 runs (CI stop 18 was one of the other
    # 3). This test is about the real audio path, not that margin: a threshold with room.
    config = tmp_path / "gun.toml"
    config.write_text("[detection.gun_shot]\nthreshold_on = 0.9\n")
    detector = Detector(vmic.env, tmp_path / "stderr.log", "--config", str(config))
    try:
        detector.wait_for("started", 30)
        detector.wait_until_listening()
        time.sleep(2.0)
        vmic.play(wav)
        detector.wait_for("gun_shot", 10)
        time.sleep(1.5)
    finally:
        err = detector.stop()
    assert alerts(detector) == ["gun_shot"], err
