"""A virtual microphone with no sound hardware, shared by ``tests/test_vmic.py`` and
``bench/faults.py``.

A PulseAudio server of its own with a 16 kHz mono null sink ``vspk`` whose monitor is the default
capture source: ``paplay --device=vspk`` plays into the "microphone". A process that records from
it needs ``PULSE_SERVER=unix:<dir>/pulse.sock`` in its environment (set before sounddevice is
imported). Needs ``pulseaudio``, ``pactl``, ``paplay`` and ``pacat`` (apt install pulseaudio
pulseaudio-utils) and, to record, ``libportaudio2`` and ``libasound2-plugins``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np

from edge_detect.audio import write_wav

__all__ = ["RATE", "TONE_CONFIG", "TONE_DETECTION", "VirtualMic", "tone_wav"]

RATE = 16_000

TONE_DETECTION = """
[detection.baby_cry]
threshold_on = 0.215
threshold_off = 0.214
smoothing_ms = 50
confirm_ms = 100
[detection.dog_bark]
enabled = false
[detection.gun_shot]
enabled = false
"""
"""Detection settings under which the random-weight fixture model (tests/fixtures/tiny_model.onnx)
alerts ``baby_cry`` on a loud 300 Hz tone such as :func:`tone_wav`'s."""
TONE_CONFIG = (
    """
[input]
stall_timeout_s = 1.0
backoff_max_s = 1.0
"""
    + TONE_DETECTION
)
""":data:`TONE_DETECTION`, quickly noticing a stalled or lost microphone."""


def tone_wav(path: Path) -> Path:
    """3 s: low noise, 1 s of a loud 300 Hz tone at 1 s, low noise (a WAV at :data:`RATE`)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.01, 3 * RATE).astype(np.float32)
    t = np.arange(RATE) / RATE
    x[RATE : 2 * RATE] += (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    write_wav(path, x, RATE)
    return path


class VirtualMic:
    """A PulseAudio server with a null sink whose monitor is the default source."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.socket = directory / "pulse.sock"
        self.env = {**os.environ, "PULSE_SERVER": f"unix:{self.socket}"}
        self.server: subprocess.Popen | None = None
        self.keepalive: subprocess.Popen | None = None

    def _pactl(self, *args: str) -> None:
        subprocess.run(["pactl", *args], env=self.env, check=True, capture_output=True, timeout=10)

    def start(self) -> None:
        self.socket.unlink(missing_ok=True)
        self.server = subprocess.Popen(
            [
                "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1",
                "--disallow-exit=yes", "--use-pid-file=no",
                f"--log-target=file:{self.dir / 'pulse.log'}",
                "-L", f"module-native-protocol-unix socket={self.socket} auth-anonymous=1",
                "-L", f"module-null-sink sink_name=vspk rate={RATE} channels=1 format=s16le "
                "sink_properties=device.description=VirtualMic",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError(f"pulseaudio did not start: see {self.dir / 'pulse.log'}")
            time.sleep(0.05)
        self._pactl("set-default-sink", "vspk")
        self._pactl("set-default-source", "vspk.monitor")
        # A 10 ms-latency silent stream makes the null sink render in 10 ms blocks; without it a
        # new capture gets its first audio 0.6-1.9 s late. Suspend+resume restarts its clock.
        self.keepalive = subprocess.Popen(
            ["pacat", "--playback", "--device=vspk", "--format=s16le", f"--rate={RATE}",
             "--channels=1", "--latency-msec=10", "--client-name=keepalive", "/dev/zero"],
            env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.3)
        self._pactl("suspend-sink", "vspk", "1")
        self._pactl("suspend-sink", "vspk", "0")

    def stop(self) -> None:
        for process in (self.keepalive, self.server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        self.keepalive = self.server = None

    def play(self, wav: Path) -> None:
        subprocess.run(["paplay", "--device=vspk", str(wav)], env=self.env, check=True, timeout=60)
