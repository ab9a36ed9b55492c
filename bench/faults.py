"""Faults while running (BENCHMARKS.md section 5): the detector on a virtual microphone for half an
hour while the audio server is stalled and killed at random and the webhook endpoint flaps.

Set-up, all real: a PulseAudio server of its own with a null sink whose monitor is the default
capture source (``tests/vmic.py``); ``edge-detect run --input mic`` as a subprocess with a
webhook output (a durable outbox) to the signed receiver of ``tests/webhook_receiver.py``, which
verifies every signature and processes each ``webhook-id`` once; the fixture model with the
tone settings of the tests (a loud 300 Hz tone is a ``baby_cry``); a tone played into the
microphone every ``--tone-every-s`` seconds with ``paplay``.

Faults, from a seeded schedule:

- **audio server stalled**: ``SIGSTOP`` of PulseAudio for 3 to 15 s, then ``SIGCONT``;
- **audio server killed**: ``SIGKILL``, restarted (same socket) 2 to 6 s later;
- **webhook endpoint flapping**: down (connection refused, or answering 503) for 10 to 60 s,
  independently of the audio faults.

Measured: tones played (and, of those, played while no audio fault was going on: the expected
alerts), alerts emitted by the detector and matched to a tone, alerts delivered to the receiver
(once each), duplicates, alerts never delivered, the time from the end of each audio fault to the
detector's ``microphone_restored`` (recovery), detector crashes (an exit before the end, or an
exit code other than 0 after SIGINT), and tracebacks in its log.

Run: ``python bench/faults.py`` (30 minutes; ``--minutes 3`` for a quick look). Results go to
``bench/results/faults_<date>.json`` and a table on stdout. Needs pulseaudio, pulseaudio-utils,
libportaudio2 and libasound2-plugins.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the shared virtual microphone and receiver

from vmic import TONE_CONFIG, VirtualMic, tone_wav  # noqa: E402
from webhook_receiver import SECRET, Receiver  # noqa: E402

from edge_detect.provenance import provenance, relative_paths  # noqa: E402

TINY = ROOT / "tests" / "fixtures" / "tiny_model.onnx"
TONE_AT_S = 1.0
"""Where the tone starts in the played clip, seconds."""
MATCH_WINDOW_S = (-0.5, 3.0)
"""An alert whose start is this close to a tone's start (seconds) belongs to it."""
CONFIG = (
    TONE_CONFIG
    + """
[sinks]
health_stdout = true
[sinks.webhook]
outbox = "{outbox}"
url = "{url}"
secret = "{secret}"
name = "receiver"
timeout_s = 5
backoff_initial_s = 1
backoff_max_s = 8
flush_on_exit_s = 30
"""
)


@dataclass
class Fault:
    kind: str
    """'stall' (SIGSTOP/SIGCONT) or 'kill' (SIGKILL, restart)."""
    started: float
    """Wall-clock time it began."""
    ended: float = 0.0
    """Wall-clock time the server ran again."""
    recovered: float | None = None
    """Wall-clock time of the detector's next 'microphone_restored'."""

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered is None else self.recovered - self.ended


@dataclass
class Tone:
    played: float
    """Wall-clock time the clip began to play."""
    ok: bool
    """paplay returned 0."""
    during_fault: bool = False
    alert: str | None = None
    """The id of the alert matched to it."""


@dataclass
class Run:
    faults: list[Fault] = field(default_factory=list)
    tones: list[Tone] = field(default_factory=list)
    flaps: list[tuple[float, float, str]] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def read_detector(process: subprocess.Popen[str], run: Run, events: queue.Queue[dict]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        message["_seen"] = time.time()
        with run.lock:
            run.messages.append(message)
        events.put(message)


def play_tones(args: argparse.Namespace, vmic: VirtualMic, clip: Path, run: Run,
               stop: threading.Event) -> None:  # fmt: skip
    while not stop.wait(args.tone_every_s):
        started = time.time()
        try:
            result = subprocess.run(
                ["paplay", "--device=vspk", str(clip)], env=vmic.env, capture_output=True,
                timeout=20,
            )  # fmt: skip
            ok = result.returncode == 0
        except subprocess.TimeoutExpired:
            ok = False
        tone = Tone(played=started, ok=ok)
        with run.lock:
            run.tones.append(tone)


def audio_faults(args: argparse.Namespace, vmic: VirtualMic, run: Run, stop: threading.Event,
                 rng: random.Random) -> None:  # fmt: skip
    while not stop.wait(rng.uniform(args.fault_every_s[0], args.fault_every_s[1])):
        kind = rng.choice(["stall", "kill"])
        fault = Fault(kind=kind, started=time.time())
        with run.lock:
            run.faults.append(fault)
        assert vmic.server is not None
        if kind == "stall":
            vmic.server.send_signal(signal.SIGSTOP)
            stop.wait(rng.uniform(3, 15))
            vmic.server.send_signal(signal.SIGCONT)
        else:
            vmic.server.kill()
            vmic.server.wait(10)
            if vmic.keepalive is not None:
                vmic.keepalive.kill()
                vmic.keepalive.wait(10)
            stop.wait(rng.uniform(2, 6))
            vmic.start()
        fault.ended = time.time()
        print(f"  fault: {kind} {fault.ended - fault.started:.1f} s", flush=True)


def webhook_flaps(args: argparse.Namespace, receiver: Receiver, run: Run, stop: threading.Event,
                  rng: random.Random) -> None:  # fmt: skip
    while not stop.wait(rng.uniform(60, 180)):
        how = rng.choice(["refused", "503"])
        began = time.time()
        if how == "refused":
            receiver.stop()
        else:
            receiver.mode = "503"
        stop.wait(rng.uniform(10, 60))
        if how == "refused":
            receiver.start()
        else:
            receiver.mode = "200"
        run.flaps.append((began, time.time(), how))


def match(run: Run) -> None:
    """Pair alerts with tones, faults with the detector's recovery, and mark the tones played
    while an audio fault (or the reopening after it) was going on: those are not expected."""
    for fault in run.faults:
        restored = [
            m["_seen"]
            for m in run.messages
            if m.get("event") == "microphone_restored" and m["_seen"] >= fault.ended - 0.5
        ]
        fault.recovered = min(restored) if restored else None
    for tone in run.tones:
        tone.during_fault = any(
            f.started - 0.5 < tone.played + 3.0
            and tone.played < (f.recovered or f.ended + 30.0) + 0.5
            for f in run.faults
        )
    alerts = [m for m in run.messages if m.get("type") == "alert"]
    for alert in alerts:
        start = datetime.fromisoformat(alert["start"]).timestamp()
        for tone in run.tones:
            offset = start - (tone.played + TONE_AT_S)
            if tone.alert is None and MATCH_WINDOW_S[0] <= offset <= MATCH_WINDOW_S[1]:
                tone.alert = alert["id"]
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--tone-every-s", type=float, default=20.0, dest="tone_every_s")
    parser.add_argument(
        "--fault-every-s", type=float, nargs=2, default=(90.0, 240.0), dest="fault_every_s",
        metavar=("MIN", "MAX"), help="an audio fault every MIN to MAX seconds",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    args = parser.parse_args()
    missing = [t for t in ("pulseaudio", "pactl", "paplay", "pacat") if not shutil.which(t)]
    if missing:
        sys.exit(f"faults.py needs {missing}: apt install pulseaudio pulseaudio-utils")
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="vmic-"))  # short: unix socket paths are limited
    vmic = VirtualMic(workdir)
    vmic.start()
    receiver = Receiver()
    config = workdir / "faults.toml"
    config.write_text(
        CONFIG.format(outbox=workdir / "outbox.sqlite", url=receiver.url, secret=SECRET)
    )
    clip = tone_wav(workdir / "tone.wav")
    log = workdir / "detector.log"
    run = Run()
    events: queue.Queue[dict] = queue.Queue()
    with open(log, "w") as stderr:
        detector = subprocess.Popen(
            [sys.executable, "-m", "edge_detect", "run", "--input", "mic", "--model", str(TINY),
             "--config", str(config)],
            env=vmic.env, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
        )  # fmt: skip
    reader = threading.Thread(target=read_detector, args=(detector, run, events), daemon=True)
    reader.start()
    stop = threading.Event()
    started = time.time()
    print(f"fault benchmark: {args.minutes:g} min, seed {args.seed}, workdir {workdir}")
    threads = [
        threading.Thread(target=play_tones, args=(args, vmic, clip, run, stop), daemon=True),
        threading.Thread(target=audio_faults, args=(args, vmic, run, stop, rng), daemon=True),
        threading.Thread(
            target=webhook_flaps, args=(args, receiver, run, stop, random.Random(args.seed + 1)),
            daemon=True,
        ),
    ]  # fmt: skip
    time.sleep(3.0)  # the detector starts
    for thread in threads:
        thread.start()
    crashed_at = None
    deadline = started + 60 * args.minutes
    while time.time() < deadline:
        if detector.poll() is not None:
            crashed_at = time.time()
            break
        time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(60)
    receiver.mode = "200"
    if receiver.server is None:
        receiver.start()
    time.sleep(5.0)
    exit_code = detector.poll()
    if exit_code is None:
        detector.send_signal(signal.SIGINT)  # flush_on_exit_s lets the outbox drain
        try:
            exit_code = detector.wait(120)
        except subprocess.TimeoutExpired:
            detector.kill()
            exit_code = detector.wait()
    reader.join(10)
    vmic.stop()
    receiver.stop()
    match(run)
    text = log.read_text()
    alerts = {m["id"]: m for m in run.messages if m.get("type") == "alert"}
    delivered_alerts = [i for i, p in receiver.processed.items() if p.get("type") == "alert"]
    expected = [t for t in run.tones if t.ok and not t.during_fault]
    matched = {t.alert for t in run.tones if t.alert is not None}
    unmatched = [m for i, m in alerts.items() if i not in matched]
    windows = [(f.started - 1.0, (f.recovered or f.ended) + 15.0) for f in run.faults]
    unmatched_outside = [
        m for m in unmatched
        if not any(a <= datetime.fromisoformat(m["start"]).timestamp() <= b for a, b in windows)
    ]  # fmt: skip
    recovery = [f.recovery_s for f in run.faults if f.recovery_s is not None]
    results = {
        "minutes": args.minutes,
        "seed": args.seed,
        "faults": {
            "stall": sum(f.kind == "stall" for f in run.faults),
            "kill": sum(f.kind == "kill" for f in run.faults),
            "webhook_down": len(run.flaps),
            "webhook_down_s": round(sum(b - a for a, b, _ in run.flaps), 1),
        },
        "tones_attempted": len(run.tones),
        "tones_played": sum(t.ok for t in run.tones),
        "tones_expected": len(expected),
        "expected_alerted": sum(t.alert is not None for t in expected),
        "alerts_emitted": len(alerts),
        "alerts_matched": sum(t.alert is not None for t in run.tones),
        "alerts_unmatched": len(unmatched),
        "alerts_unmatched_outside_faults": len(unmatched_outside),
        "alerts_delivered": len(delivered_alerts),
        "alerts_not_delivered": sorted(set(alerts) - set(delivered_alerts)),
        "duplicate_requests": receiver.duplicates,
        "bad_signatures": receiver.bad_signatures,
        "recovery_s": [round(r, 2) for r in recovery],
        "recovery_median_s": round(statistics.median(recovery), 2) if recovery else None,
        "recovery_max_s": round(max(recovery), 2) if recovery else None,
        "not_recovered": sum(f.recovered is None for f in run.faults),
        "crashes": int(crashed_at is not None) + int(exit_code != 0),
        "exit_code": exit_code,
        "tracebacks_in_log": text.count("Traceback"),
        "health_events": {
            e: sum(m.get("event") == e for m in run.messages)
            for e in sorted({m["event"] for m in run.messages if m.get("type") == "health"})
        },
    }
    results["provenance"] = provenance([__file__, *sys.argv[1:]])
    results = relative_paths(results)
    out = args.out or ROOT / "bench" / "results" / f"faults_{datetime.now():%Y%m%d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"\ndetector log: {log}\nresults: {out}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
