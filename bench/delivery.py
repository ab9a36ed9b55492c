"""Delivery reliability (BENCHMARKS.md section 5): outages and SIGKILL against a real server.

Scenarios, each against a ThreadingHTTPServer on 127.0.0.1 that verifies every signature with the
``standardwebhooks`` package and processes each ``webhook-id`` once (an idempotent receiver):

- ``outage refused`` / ``outage 503``: the endpoint is down (connection refused, or answering 503)
  for a simulated hour while alerts keep coming, then back. Time is compressed with
  :class:`edge_detect.webhook.ScaledClock`, so the *production* backoff schedule runs unchanged.
- ``SIGKILL while down``: a detector process queues alerts for a dead endpoint and is SIGKILLed;
  a new process on the same outbox delivers them.
- ``SIGKILL mid-delivery``: the process is SIGKILLed while it is delivering a backlog.

Run: ``python bench/delivery.py`` (about a minute; ``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the signed receiver the tests use

from webhook_receiver import SECRET, Receiver  # noqa: E402

from edge_detect.alerts import Alert  # noqa: E402
from edge_detect.webhook import ScaledClock, WebhookSink  # noqa: E402
from edge_detect.webhook_endpoint import Backoff, Secret, WebhookEndpoint  # noqa: E402

ENDPOINT_NAME = "bench"


def make_alert(seq: int) -> Alert:
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    return Alert(
        id=uuid.uuid4().hex,
        seq=seq,
        label="baby_cry",
        score=0.9,
        start=now,
        end=now,
        duration_s=1.0,
        device="bench",
        model_id="bench",
    )


def endpoint(url: str, backoff: Backoff) -> WebhookEndpoint:
    return WebhookEndpoint(
        url=url, secret=Secret(SECRET), name=ENDPOINT_NAME, timeout_s=5.0, backoff=backoff
    )


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if values else 0.0


def outage(args: argparse.Namespace, mode: str, workdir: Path) -> dict[str, object]:
    """The endpoint down for ``outage_s`` simulated seconds (refused or 503), then back."""
    receiver = Receiver()
    url = receiver.url
    if mode == "refused":
        receiver.stop()
    else:
        receiver.mode = "503"
    clock = ScaledClock(args.speed)
    backoff = Backoff(max_s=args.backoff_max_s)
    sink = WebhookSink(
        [endpoint(url, backoff)],
        workdir / f"outage-{mode}-{args.backoff_max_s:g}.sqlite",
        clock=clock,
        rng=random.Random(args.seed),
    )
    period_real_s = args.alert_every_s / args.speed
    emitted: list[str] = []
    emit_ms: list[float] = []

    def emit_one() -> None:
        alert = make_alert(len(emitted) + 1)
        start = time.perf_counter()
        sink.emit(alert)
        emit_ms.append((time.perf_counter() - start) * 1000)
        emitted.append(alert.id)
        time.sleep(period_real_s)

    start_sim = clock.now()
    while clock.now() - start_sim < args.outage_s:
        emit_one()
    attempts_during_outage = sink.stats[ENDPOINT_NAME].attempts
    if mode == "refused":
        receiver.start()
    receiver.mode = "200"
    back_sim, back_real = clock.now(), time.monotonic()
    backlog = list(emitted)
    for _ in range(args.after):
        emit_one()
    # Wait (in real time) long enough for the longest backoff step to come round.
    flushed = sink.flush(timeout_s=2 * args.backoff_max_s / args.speed + 30)
    drained_sim = clock.now() - back_sim
    backlog_times = [receiver.processed_at.get(i, float("nan")) for i in backlog]
    backlog_sim_min = (max(backlog_times) - back_real) * args.speed / 60
    stats = sink.stats[ENDPOINT_NAME]
    sink.close()
    receiver.stop()
    return {
        "scenario": f"down ({mode}) {args.outage_s / 60:g} min, max {args.backoff_max_s:g} s",
        "emitted": len(emitted),
        "delivered": len(receiver.processed),
        "lost": len(set(emitted) - set(receiver.processed)),
        "dup_requests": receiver.duplicates,
        "in_order": list(receiver.processed) == emitted,
        "bad_sig": receiver.bad_signatures,
        "attempts": stats.attempts,
        "note": (
            f"{attempts_during_outage} attempts while down; the {len(backlog)} queued while down "
            f"delivered {backlog_sim_min:.1f} sim-min after recovery, all "
            f"{drained_sim / 60:.1f} sim-min after; emit p50 "
            f"{percentile(emit_ms, 50):.2f} ms, p99 {percentile(emit_ms, 99):.2f} ms, "
            f"max {max(emit_ms):.2f} ms" + ("" if flushed else "; NOT FLUSHED")
        ),
    }


def _spawn(*argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, __file__, *argv]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)


def sigkill(args: argparse.Namespace, mid_delivery: bool, workdir: Path) -> dict[str, object]:
    """A detector process SIGKILLed with alerts pending; a new process delivers them."""
    receiver = Receiver(delay_s=0.02 if mid_delivery else 0.0)
    url = receiver.url
    if not mid_delivery:
        receiver.stop()
    outbox = workdir / f"kill-{int(mid_delivery)}.sqlite"
    child = _spawn("_emit", str(outbox), url, str(args.kill_count))
    assert child.stdout is not None
    emitted = [child.stdout.readline().strip() for _ in range(args.kill_count)]
    if mid_delivery:
        deadline = time.monotonic() + 30
        while len(receiver.processed) < args.kill_count // 3 and time.monotonic() < deadline:
            time.sleep(0.005)
    delivered_before_kill = len(receiver.processed)
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    if not mid_delivery:
        receiver.start()
    restarted = _spawn("_drain", str(outbox), url)
    out, _ = restarted.communicate(timeout=120)
    receiver.stop()
    return {
        "scenario": "SIGKILL mid-delivery" if mid_delivery else "SIGKILL while endpoint down",
        "emitted": len(emitted),
        "delivered": len(receiver.processed),
        "lost": len(set(emitted) - set(receiver.processed)),
        "dup_requests": receiver.duplicates,
        "in_order": list(receiver.processed) == emitted,
        "bad_sig": receiver.bad_signatures,
        "attempts": len(receiver.ids()),
        "note": (
            f"killed (exit {child.returncode}) after {delivered_before_kill} delivered; "
            f"restarted process: {out.strip()}"
        ),
    }


def child_emit(outbox: str, url: str, count: int) -> None:
    sink = WebhookSink([endpoint(url, Backoff())], outbox)
    for i in range(count):
        alert = make_alert(i + 1)
        sink.emit(alert)
        print(alert.id, flush=True)
    time.sleep(600)  # pending, waiting to be killed


def child_drain(outbox: str, url: str) -> None:
    start = time.monotonic()
    sink = WebhookSink([endpoint(url, Backoff())], outbox)
    pending = sink.outbox.pending_count()
    flushed = sink.flush(timeout_s=60)
    sink.close()
    print(f"found {pending} pending, flushed={flushed} in {time.monotonic() - start:.2f} s")


def main() -> None:
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    if len(sys.argv) > 1 and sys.argv[1] == "_emit":
        child_emit(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_drain":
        child_drain(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--speed", type=float, default=600.0, help="simulated s per real s")
    parser.add_argument("--outage-s", type=float, default=3600.0, help="simulated outage")
    parser.add_argument("--alert-every-s", type=float, default=60.0, help="simulated s")
    parser.add_argument("--after", type=int, default=10, help="alerts after recovery")
    parser.add_argument(
        "--backoff-max-s", type=float, nargs="+", default=[3600.0, 300.0], help="runs per value"
    )
    parser.add_argument("--kill-count", type=int, default=50, help="alerts pending at SIGKILL")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for backoff_max_s in args.backoff_max_s:
            args_one = argparse.Namespace(**{**vars(args), "backoff_max_s": backoff_max_s})
            for mode in ("refused", "503"):
                rows.append(outage(args_one, mode, workdir))
        rows.append(sigkill(args, mid_delivery=False, workdir=workdir))
        rows.append(sigkill(args, mid_delivery=True, workdir=workdir))
    columns = ["scenario", "emitted", "delivered", "lost", "dup_requests", "in_order", "bad_sig"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print(" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
    print()
    for row in rows:
        print(f"{row['scenario']}: {row['attempts']} requests; {row['note']}")
    print(
        "\ndelivered = distinct webhook-ids processed by the idempotent receiver; dup_requests ="
        " repeated requests it de-duplicated"
    )


if __name__ == "__main__":
    main()
