"""``edge-detect run`` as a subprocess: WAV and raw stdin input, signals, errors, no torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT
from vmic import TONE_DETECTION

from edge_detect.audio import read_wav, write_wav

RATE = 16_000
TINY = FIXTURES / "tiny_model.onnx"


def planted(seconds: float, tones: list[tuple[float, float]], rate: int = RATE) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.01, round(seconds * rate)).astype(np.float32)
    for start, length in tones:
        t = np.arange(round(length * rate)) / rate
        i = round(start * rate)
        x[i : i + len(t)] += (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    return x


@pytest.fixture
def tone_config(tmp_path):
    path = tmp_path / "tone.toml"
    path.write_text(TONE_DETECTION)
    return path


def edge_detect(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_detect", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        **kwargs,
    )


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_wav_input_gives_one_alert_line_and_nothing_else_on_stdout(tmp_path, tone_config):
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(8.0, [(3.0, 1.0)]), RATE)
    result = edge_detect("run", "--input", wav, "--model", TINY, "--config", tone_config)
    assert result.returncode == 0, result.stderr
    (alert,) = lines(result.stdout)
    assert alert["class"] == "baby_cry" and alert["type"] == "alert"
    assert alert["offset_s"] == pytest.approx(3.0, abs=0.3)
    assert "health: started" in result.stderr and "health: stopping" in result.stderr

    quiet = tmp_path / "quiet.wav"
    write_wav(quiet, planted(8.0, []), RATE)
    result = edge_detect("run", "--input", quiet, "--model", TINY, "--config", tone_config)
    assert result.returncode == 0 and result.stdout == ""


def test_raw_stereo_48k_on_stdin_is_resampled(tone_config):
    mono = planted(6.0, [(2.0, 1.0)], rate=48_000)
    pcm = np.clip(np.round(np.stack([mono, mono], axis=1) * 32767), -32768, 32767)
    result = subprocess.run(
        [sys.executable, "-m", "edge_detect", "run", "--input", "-", "--rate", "48000",
         "--channels", "2", "--format", "s16le", "--model", str(TINY), "--config",
         str(tone_config)],
        input=pcm.astype("<i2").tobytes(), capture_output=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (alert,) = lines(result.stdout.decode())
    assert alert["class"] == "baby_cry"
    assert alert["offset_s"] == pytest.approx(2.0, abs=0.3)


def test_sigterm_finishes_the_event_in_progress_and_exits_cleanly(tmp_path, tone_config):
    wav = tmp_path / "long.wav"
    write_wav(wav, planted(20.0, [(1.0, 6.0)]), RATE)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_detect",
            "run",
            "--input",
            str(wav),
            "--realtime",
            "--alert-on",
            "end",
            "--health-stdout",
            "--model",
            str(TINY),
            "--config",
            str(tone_config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        assert started["event"] == "started"
        time.sleep(3.0)  # the tone (1 s to 7 s of the file) is going on
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, err
    alert, stopping = lines(out)
    assert alert["class"] == "baby_cry"
    # the event was cut by the shutdown: it lasted from ~1 s to the signal (~3 s), not 6 s
    assert 0.8 < alert["duration_s"] < 4.0
    assert stopping["event"] == "stopping" and "stop requested" in stopping["detail"]
    assert "SIGTERM received" in err


def test_user_mistakes_get_a_message_and_exit_2_without_traceback(tmp_path):
    not_wav = tmp_path / "x.wav"
    not_wav.write_bytes(b"hello, this is not audio")
    cases = [
        (("--input", tmp_path / "missing.wav", "--model", TINY), "cannot read audio file"),
        (("--input", not_wav, "--model", TINY), "not a WAV file"),
        (("--input", not_wav, "--model", tmp_path / "no.onnx"), "does not exist"),
        (("--input", not_wav, "--block-ms", 1, "--model", TINY), "input.block_ms must be"),
        (("--config", tmp_path / "none.toml"), "cannot read config file"),
        (("--input", "-", "--rate", 7, "--model", TINY), "rate_hz"),
    ]
    for args, message in cases:
        result = edge_detect("run", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_runs_with_torch_unimportable(tmp_path, tone_config):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "torch.py").write_text("raise ImportError('torch is not allowed in the runtime')\n")
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(6.0, [(2.0, 1.0)]), RATE)
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    code = (
        "import sys, runpy; sys.argv = ['edge-detect', 'run', '--input', sys.argv[1], "
        "'--model', sys.argv[2], '--config', sys.argv[3]]; "
        "import edge_detect.cli as c; rc = c.main(); "
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None; sys.exit(rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(wav), str(TINY), str(tone_config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert [a["class"] for a in lines(result.stdout)] == ["baby_cry"]


def test_configured_metrics_endpoint_counts_blocks_and_alerts(tmp_path):
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "metrics.toml"
    config.write_text(TONE_DETECTION + f'[sinks.metrics]\nlisten = "127.0.0.1:{port}"\n')
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(6.0, [(1.0, 1.0)]), RATE)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge_detect", "run", "--input", str(wav), "--realtime",
         "--model", str(TINY), "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        alert = json.loads(process.stdout.readline())  # after ~1.3 s of paced audio
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=20)
    finally:
        process.kill()
    assert alert["class"] == "baby_cry"
    from edge_detect.metrics import parse_metrics

    values = {
        (sample.name, sample.labels): sample.value for sample in parse_metrics(text)
    }  # label values may hold spaces (thread="metrics http"): parsed, not split
    assert values[("edge_detect_alerts_total", (("class", "baby_cry"),))] == 1
    assert values[("edge_detect_audio_blocks_total", ())] >= 10  # the alert came ~1.3 s in


def test_clip_around_each_alert_is_saved_and_named_in_the_alert(tmp_path):
    clips = tmp_path / "clips"
    config = tmp_path / "clips.toml"
    config.write_text(
        TONE_DETECTION + f'[clips]\ndirectory = "{clips}"\npre_roll_s = 1.0\npost_roll_s = 2.0\n'
    )
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(8.0, [(3.0, 1.0)]), RATE)
    result = edge_detect("run", "--input", wav, "--model", TINY, "--config", config)
    assert result.returncode == 0, result.stderr
    (alert,) = lines(result.stdout)
    clip = read_wav(alert["clip"])
    assert Path(alert["clip"]).parent == clips and alert["id"][:12] in alert["clip"]
    assert clip.duration_s == pytest.approx(3.0, abs=0.01)  # 1 s before the alert, 2 s after
    # the alert came ~0.3 s into the tone: the clip holds the tone from ~0.7 s to ~1.7 s
    loud = np.flatnonzero(np.abs(clip.samples) > 0.3) / RATE
    assert 0.4 < loud[0] < 1.0 and 1.4 < loud[-1] < 2.0
    # a bad [clips] value is a config error
    config.write_text('[clips]\ndirectory = "x"\nmax_count = -1\n')
    result = edge_detect("run", "--input", wav, "--model", TINY, "--config", config)
    assert result.returncode == 2 and "clips.max_count" in result.stderr


def _iso_seconds(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text).timestamp()


def test_file_alert_times_are_never_in_the_future(tmp_path, tone_config):
    """Issue 16 item 8: a file read faster than real time stamped alerts at start + offset,
    seconds after they were printed."""
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(12.0, [(9.0, 1.0)]), RATE)
    result = edge_detect("run", "--input", wav, "--model", TINY, "--config", tone_config)
    finished = time.time()
    assert result.returncode == 0, result.stderr
    (alert,) = lines(result.stdout)
    assert alert["offset_s"] == pytest.approx(9.0, abs=0.3)  # where in the file
    assert _iso_seconds(alert["start"]) <= _iso_seconds(alert["end"]) <= finished


MAXRSS = (
    "import resource, sys; from edge_detect.cli import main; rc = main(sys.argv[1:]); "
    "print('maxrss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
    "sys.exit(rc)"
)


def _peak_rss_mb(*args) -> float:
    result = subprocess.run(
        [sys.executable, "-c", MAXRSS, *map(str, args)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return int(result.stderr.split("maxrss_kb")[-1].split()[0]) / 1024


def _write_long_wav(path: Path, seconds: int, rate: int, channels: int) -> None:
    """A 16-bit WAV written a second at a time (the test itself stays small, too)."""
    import struct

    frames = seconds * rate
    data_bytes = frames * channels * 2
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE")
        f.write(struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, channels, rate, rate * channels * 2,
                            channels * 2, 16))  # fmt: skip
        f.write(b"data" + struct.pack("<I", data_bytes))
        rng = np.random.default_rng(0)
        for _ in range(seconds):
            second = rng.integers(-300, 300, (rate, channels), dtype="<i2")
            f.write(second.tobytes())


@pytest.mark.slow
def test_long_wav_is_read_in_blocks_with_bounded_memory(tmp_path):
    """Issue 15 item 9: files were read whole (1 h at 48 kHz stereo peaked at 4.1 GB)."""
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    _write_long_wav(short, 10, 48_000, 2)
    _write_long_wav(long, 600, 48_000, 2)  # 110 MB of PCM, 230 MB as float32
    base = _peak_rss_mb("run", "--input", short, "--model", TINY)
    peak = _peak_rss_mb("run", "--input", long, "--model", TINY)
    assert peak - base < 25, (base, peak)


def test_devices_and_endless_inputs_are_refused_or_streamed(tmp_path):
    """``--input /dev/zero`` grew without bound; raw PCM from an endless stdin stays bounded."""
    result = edge_detect("run", "--input", "/dev/zero", "--model", TINY)
    assert result.returncode == 2 and "not a WAV file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    with open("/dev/zero", "rb") as zero:
        process = subprocess.Popen(
            [sys.executable, "-m", "edge_detect", "run", "--input", "-", "--model", str(TINY)],
            stdin=zero, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip

        def rss_mb() -> float:
            status = Path(f"/proc/{process.pid}/status").read_text()
            return int(status.split("VmRSS:")[1].split()[0]) / 1024

        try:
            time.sleep(3.0)
            first = rss_mb()
            time.sleep(4.0)
            later = rss_mb()
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            process.kill()
    assert process.returncode == 0, err
    assert later - first < 5, (first, later)
    assert "done:" in err


def test_empty_stdin_says_so(tmp_path):
    """Issue 15 item 12: an empty stdin exited 0 without a word."""
    result = subprocess.run(
        [sys.executable, "-m", "edge_detect", "run", "--input", "-", "--model", str(TINY)],
        input=b"", capture_output=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert "no audio arrived on stdin" in err and "Traceback" not in err


def _webhook_config(tmp_path: Path, url: str, outbox: Path) -> Path:
    from webhook_receiver import SECRET

    config = tmp_path / "webhook.toml"
    config.write_text(
        TONE_DETECTION
        + f'[sinks.webhook]\noutbox = "{outbox}"\nflush_on_exit_s = 10\n'
        + f'url = "{url}"\nsecret = "{SECRET}"\nname = "hook"\nbackoff_initial_s = 0.05\n'
    )
    return config


def test_a_corrupt_outbox_never_stops_detection(tmp_path):
    """Issue 15 item 5: a corrupt outbox file stopped all detection (exit 2); now it is moved
    aside, a new one started, and the alert and a health event are delivered."""
    from webhook_receiver import Receiver

    receiver = Receiver()
    outbox = tmp_path / "state" / "outbox.sqlite"
    outbox.parent.mkdir()
    outbox.write_bytes(b"\x00garbage, not SQLite" * 500)
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(8.0, [(3.0, 1.0)]), RATE)
    config = _webhook_config(tmp_path, receiver.url, outbox)
    try:
        result = edge_detect("run", "--input", wav, "--model", TINY, "--config", config)
    finally:
        receiver.stop()
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "is corrupt" in result.stderr and "moved aside" in result.stderr
    kinds = [(m.get("type"), m.get("event") or m.get("class")) for m in receiver.processed.values()]
    assert ("health", "outbox_replaced") in kinds and ("alert", "baby_cry") in kinds
    assert len(list(outbox.parent.glob("outbox.sqlite.corrupt-*"))) == 1


def test_a_run_that_ends_with_alerts_still_queued_says_so(tmp_path):
    """Issue 16 item 7: a file run that exited with alerts still in the outbox said nothing."""
    import socket

    with socket.socket() as probe:  # a port where nothing listens: every attempt is refused
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/hook"
    outbox = tmp_path / "outbox.sqlite"
    wav = tmp_path / "tone.wav"
    write_wav(wav, planted(8.0, [(3.0, 1.0)]), RATE)
    config = _webhook_config(tmp_path, url, outbox)
    result = edge_detect("run", "--input", wav, "--model", TINY, "--config", config)
    assert result.returncode == 0, result.stderr
    assert f"still queued in {outbox}" in result.stderr, result.stderr
    assert "delivered when edge-detect runs again with this outbox" in result.stderr
