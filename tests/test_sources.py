"""Audio sources: WAV (fast, paced, repeated), raw PCM on stdin, and the microphone's errors."""

from __future__ import annotations

import ctypes.util
import io
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import FIXTURES, ROOT

from edge_detect.audio import Audio, resample, write_wav
from edge_detect.errors import ConfigError
from edge_detect.microphone import MicrophoneSource
from edge_detect.sources import RawPcmSource, WavFileSource, block_samples

RATE = 16_000


def joined(source) -> np.ndarray:
    return np.concatenate([b.samples for b in source.blocks()])


def test_wav_at_44k_stereo_becomes_16k_mono_blocks(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (44_100, 2)).astype(np.float32)
    path = tmp_path / "s.wav"
    write_wav(path, stereo, 44_100)
    source = WavFileSource(path, RATE, block_ms=100, realtime=False)
    blocks = list(source.blocks())
    assert [len(b.samples) for b in blocks] == [1600] * 10
    expected = resample(np.round(stereo * 32767).mean(axis=1) / 32768, 44_100, RATE)
    np.testing.assert_allclose(np.concatenate([b.samples for b in blocks]), expected, atol=1e-4)
    # read faster than real time: each block is stamped when it was read, never in the future
    ends = np.array([b.end_time for b in blocks])
    assert np.all(np.diff(ends) >= 0) and ends[-1] <= time.time()


def test_repeat_plays_the_file_again_for_any_block_size():
    x = np.arange(1000, dtype=np.float32) / 1000
    for block_ms in (5.0, 7.0, 100.0):
        source = WavFileSource("x", RATE, block_ms=block_ms, realtime=False, audio=Audio(x, RATE))
        source.repeat = 3
        np.testing.assert_array_equal(joined(source), np.tile(x, 3))


def test_realtime_pacing_and_stop(tmp_path):
    path = tmp_path / "half.wav"
    write_wav(path, np.zeros(RATE // 2, dtype=np.float32), RATE)
    started = time.monotonic()
    blocks = list(WavFileSource(path, RATE, realtime=True).blocks())
    assert sum(len(b.samples) for b in blocks) == RATE // 2
    assert 0.45 <= time.monotonic() - started < 2.0
    # paced: stamped with the audio's own time since the start, never later than when read
    np.testing.assert_allclose(np.diff([b.end_time for b in blocks]), 0.1, atol=1e-6)
    source = WavFileSource(path, RATE, realtime=True)
    blocks = source.blocks()
    next(blocks)
    source.stop()
    assert list(blocks) == []


class Trickle(io.RawIOBase):
    """A pipe that returns at most 7 bytes per read, like a slow arecord."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        part, self.data = self.data[: min(n, 7)], self.data[min(n, 7) :]
        return part


def test_raw_pcm_from_short_reads_with_a_torn_last_frame(caplog):
    x = (np.sin(np.arange(4000) / 10) * 0.5).astype(np.float32)
    data = x.astype("<f4").tobytes() + b"\x01\x02"  # 2 stray bytes at the end
    source = RawPcmSource(Trickle(data), RATE, input_rate_hz=RATE, sample_format="f32le")
    np.testing.assert_array_equal(joined(source), x)
    assert "not a whole f32le frame" in caplog.text


def test_raw_pcm_is_resampled_in_a_stream():
    x = (np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000) * 0.5).astype(np.float32)
    pcm = np.round(x * 32767).astype("<i2").tobytes()
    source = RawPcmSource(io.BytesIO(pcm), RATE, input_rate_hz=48_000, block_ms=100)
    out = joined(source)
    assert abs(len(out) - RATE) <= 2
    np.testing.assert_allclose(out[200:-200], resample(x, 48_000, RATE)[200:-200], atol=2e-3)


def test_bad_source_settings_are_refused():
    with pytest.raises(ConfigError, match="raw PCM format 'u8'"):
        RawPcmSource(io.BytesIO(), RATE, input_rate_hz=RATE, sample_format="u8")
    with pytest.raises(ConfigError, match="channels must be a whole number >= 1"):
        RawPcmSource(io.BytesIO(), RATE, input_rate_hz=RATE, channels=0)
    with pytest.raises(ConfigError, match="block_ms=3000 is out of range"):
        block_samples(3000, RATE)


@pytest.mark.skipif(not ctypes.util.find_library("portaudio"), reason="libportaudio2 missing")
def test_unknown_microphone_is_reported_and_retried_not_fatal():
    # a USB microphone not plugged in yet at boot: report it, keep trying, never exit
    health: list[tuple[str, str]] = []
    source = MicrophoneSource(
        RATE, device="no-such-microphone-xyz", on_health=lambda *e: health.append(e),
        backoff_initial_s=0.05, backoff_max_s=0.1,
    )  # fmt: skip
    thread = threading.Thread(target=lambda: list(source.blocks()))
    thread.start()
    deadline = time.monotonic() + 10
    while not health and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # several retries
    source.stop()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert [event for event, _ in health] == ["microphone_lost"]
    assert "edge-detect devices" in health[0][1]


def test_missing_portaudio_breaks_only_the_microphone(tmp_path):
    # sounddevice raises OSError when the PortAudio library cannot be loaded
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    command = [sys.executable, "-m", "edge_detect"]
    result = subprocess.run(
        [*command, "devices"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60
    )
    assert result.returncode == 2
    assert "sudo apt install libportaudio2" in result.stderr and "Traceback" not in result.stderr
    wav = tmp_path / "q.wav"
    write_wav(wav, np.zeros(RATE, dtype=np.float32), RATE)
    result = subprocess.run(
        [*command, "run", "--input", str(wav), "--model", str(FIXTURES / "tiny_model.onnx")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not ctypes.util.find_library("portaudio"), reason="libportaudio2 missing")
def test_input_overflows_are_counted_and_reported_at_a_bounded_rate():
    import sounddevice

    health: list[tuple[str, str]] = []
    source = MicrophoneSource(RATE, on_health=lambda *e: health.append(e), overflow_report_s=60)
    overflow = sounddevice.CallbackFlags()
    overflow.input_overflow = True
    block = np.zeros((1600, 2), dtype=np.float32)
    for status in (overflow, sounddevice.CallbackFlags(), overflow):
        source._callback(block, len(block), None, status)  # what PortAudio's thread calls
    assert source.overflows == 2
    source._report_overflows()
    source._callback(block, len(block), None, overflow)
    source._report_overflows()  # within overflow_report_s: counted, not reported again
    assert health == [("overflow", "2 input overflow(s) (audio dropped), 2 in total")]
    assert source.overflows == 3
    _, samples, _ = source._queue.get_nowait()
    assert samples.shape == (1600,)  # stereo callback data downmixed


@pytest.mark.skipif(not ctypes.util.find_library("portaudio"), reason="libportaudio2 missing")
def test_no_sound_server_is_named_as_such(tmp_path):
    """Issue 16 item 9: with PortAudio but no sound server, ``run --input mic`` retried forever
    with "Error querying device -1"; it still retries (a server may start later), but says
    what is missing and how to fix it."""
    env = {**os.environ, "PULSE_SERVER": f"unix:{tmp_path / 'no-such-server'}"}
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_detect", "run", "--input", "mic",
             "--model", str(FIXTURES / "tiny_model.onnx")],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "no input device" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None  # still waiting for a microphone, not exited
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
    finally:
        process.kill()
    err = log.read_text()
    assert "no sound server running, or no capture device" in err, err
    assert "edge-detect devices" in err and "Error querying device -1" not in err
    assert process.returncode == 0 and "Traceback" not in err
