"""``edge-detect bench``: the runtime figures of BENCHMARKS.md section 3, measured on this machine.

1. **Start-up**: from the process start (the kernel's record of it) to the model loaded, and
   to the first processed block.
2. **Real time**: the input (the bundled demo by default, repeated) is delivered at the pace of
   a microphone for ``--minutes``; the whole pipeline runs as in ``edge-detect run`` (stdout sink
   off). CPU share = process CPU time / wall time over that span; blocks that finished later
   than one block duration after their last sample are counted as late (real time not kept).
3. **Latency**: block-to-alert (end of the block that confirmed the event -> the alert handed to
   the sinks) and onset-to-alert (the event's true onset in the input -> the alert), from the
   events file (``demo_events.csv`` for the demo).
4. **Memory**: resident set size at the end and its peak. **Model**: file size.
5. **Throughput**: the same input as fast as possible: CPU seconds per second of audio, and the
   effective FLOP rate against the physical floor of about 20 MFLOP per second of audio.

Run it under a CPU quota to check real time on a small budget, e.g.
``../shared/tools/pi_budget.sh 3 -- edge-detect bench --minutes 2``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import resource
import statistics
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from edge_detect.cli_run import add_model_argument, build_pipeline
from edge_detect.config import load_config
from edge_detect.errors import ConfigError
from edge_detect.model import load_model
from edge_detect.progress import with_progress
from edge_detect.sources import WavFileSource

__all__ = ["register"]

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent / "assets"
DEMO = ASSETS / "demo.wav"
DEMO_EVENTS = ASSETS / "demo_events.csv"
FLOOR_FLOP_PER_AUDIO_S = 20e6
"""BENCHMARKS.md: ~0.13 MFLOP (2x64 LSTM) + ~0.06 MFLOP (log-mel) per 10 ms frame."""
EVENT_MATCH_S = 3.0
"""Without an ``offset_s`` column, an event is taken to last this long for matching alerts."""


def process_start_wall() -> float | None:
    """Wall-clock time at which this process started (Linux /proc), or None."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat(5): starttime, in clock ticks
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return time.time() - uptime_s + start_ticks / ticks


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    current = peak
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                current = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return current, peak


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_events(path: Path) -> list[tuple[float, float, str]]:
    """(onset_s, offset_s, label) rows of an events CSV (columns onset_s, label, optional
    offset_s)."""
    try:
        with path.open(newline="") as handle:
            return [
                (
                    float(r["onset_s"]),
                    float(r.get("offset_s") or float(r["onset_s"]) + EVENT_MATCH_S),
                    r["label"],
                )
                for r in csv.DictReader(handle)
            ]
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"cannot read events file {path} (columns onset_s,label expected): {exc}"
        ) from None


def onset_latencies(
    alert_offsets: list[tuple[float, str, float]],
    events: list[tuple[float, float, str]],
    loop_s: float,
    start_wall: float,
) -> list[float]:
    """Alert time minus true onset time, for alerts whose event starts inside an event of their
    class (from 0.5 s before its onset to its end)."""
    out = []
    for offset_s, label, alert_wall in alert_offsets:
        loop = int(offset_s // loop_s)
        base = loop * loop_s
        candidates = [
            base + onset
            for onset, end, name in events
            if name == label and base + onset - 0.5 <= offset_s <= base + end
        ]
        if candidates:
            out.append(alert_wall - (start_wall + max(candidates)))
    return out


def _median_ms(values: Collection[float]) -> float | None:
    return round(1e3 * statistics.median(values), 2) if values else None


def bench_command(args: argparse.Namespace) -> int:
    started_wall = process_start_wall()
    config = load_config(args.config).replace(stdout=False)
    if getattr(args, "model", None):
        config = config.replace(model=args.model)
    if args.block_ms is not None:
        config = config.replace(block_ms=args.block_ms)
    model = load_model(config.model, threads=config.threads)
    loaded_wall = time.time()
    wav = Path(args.input) if args.input else DEMO
    events_path = Path(args.events) if args.events else (DEMO_EVENTS if wav == DEMO else None)
    events = read_events(events_path) if events_path else []
    rate = model.feature_config.sample_rate_hz
    probe = WavFileSource(wav, rate, block_ms=config.block_ms, realtime=False)
    repeat = max(1, round(args.minutes * 60 / probe.duration_s))
    results: dict[str, Any] = {
        "model_id": model.model_id,
        "model_bytes": model.path.stat().st_size,
        "block_ms": config.block_ms,
        "input": str(wav),
    }

    # -- real time ---------------------------------------------------------------------------
    source = WavFileSource(wav, rate, block_ms=config.block_ms, realtime=True, repeat=repeat)
    pipeline = build_pipeline(config, model, [])
    log.info(
        "real time: %.1f min of %s (%d passes); this takes as long",
        repeat * probe.duration_s / 60,
        wav.name,
        repeat,
    )
    cpu0, wall0 = cpu_seconds(), time.time()
    first_block_wall: list[float] = []
    original = pipeline.process_block

    def timed(block: Any) -> Any:
        out = original(block)
        if not first_block_wall:
            first_block_wall.append(time.time())
        return out

    pipeline.process_block = timed  # type: ignore[method-assign]
    # a terminal sees the progress (two redraws a second, inside the measured CPU); a pipe not
    stats = pipeline.run(with_progress(source, repeat * probe.duration_s, "bench, real time"))
    cpu1, wall1 = cpu_seconds(), time.time()
    current_mb, peak_mb = rss_mb()
    start_wall = stats.stream_start_wall or wall0
    offsets = [
        (float(a.extra["offset_s"]), a.label, t)
        for a, t in zip(pipeline.emitted, stats.alert_wall, strict=False)
    ]
    onset = onset_latencies(offsets, events, probe.duration_s, start_wall) if events else []
    results.update(
        {
            "startup_to_model_loaded_ms": (
                round(1e3 * (loaded_wall - started_wall), 1) if started_wall else None
            ),
            "startup_to_first_block_ms": (
                round(1e3 * (first_block_wall[0] - started_wall), 1)
                if started_wall and first_block_wall
                else None
            ),
            "realtime_audio_s": round(stats.audio_s, 1),
            "realtime_cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 3),
            "late_blocks": stats.late_blocks,
            "blocks": stats.blocks,
            "max_lag_ms": round(1e3 * stats.max_lag_s, 1),
            "alerts": stats.alerts,
            "block_to_alert_median_ms": _median_ms(stats.alert_latency_s),
            "block_to_alert_max_ms": (
                round(1e3 * max(stats.alert_latency_s), 2) if stats.alert_latency_s else None
            ),
            "onset_to_alert_median_ms": _median_ms(onset),
            "onset_to_alert_matched": len(onset),
            "block_processing_median_ms": _median_ms(stats.block_seconds),
            "rss_mb": round(current_mb, 1),
            "rss_peak_mb": round(peak_mb, 1),
            "state_resyncs": stats.resyncs,
        }
    )

    # -- as fast as possible -----------------------------------------------------------------
    fast_repeat = max(1, round(args.fast_seconds / probe.duration_s))
    fast = WavFileSource(wav, rate, block_ms=config.block_ms, realtime=False, repeat=fast_repeat)
    pipeline = build_pipeline(config, model, [])
    cpu0 = cpu_seconds()
    fast_stats = pipeline.run(fast)
    cpu_per_audio_s = (cpu_seconds() - cpu0) / max(fast_stats.audio_s, 1e-9)
    results.update(
        {
            "fast_audio_s": round(fast_stats.audio_s, 1),
            "fast_cpu_s_per_audio_s": round(cpu_per_audio_s, 5),
            "fast_realtime_factor": round(1.0 / max(cpu_per_audio_s, 1e-9), 1),
            "effective_mflop_per_cpu_s": round(FLOOR_FLOP_PER_AUDIO_S / cpu_per_audio_s / 1e6, 1),
        }
    )
    print(format_results(results))
    if args.json:
        # imported here, after the figures: importlib.metadata and subprocess are ~1.7 MB
        # resident that the measured detector does not need
        from edge_detect.provenance import provenance, relative_paths

        record = relative_paths({**results, "provenance": provenance()})
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


def format_results(results: dict[str, Any]) -> str:
    width = max(len(k) for k in results)
    return "\n".join(f"{key:{width}}  {value}" for key, value in results.items())


def register(subparsers: argparse._SubParsersAction, formatter: Any) -> None:
    """Add ``edge-detect bench`` to the CLI's subcommands."""
    bench = subparsers.add_parser(
        "bench",
        help="measure CPU, latency, memory and start-up of the runtime (BENCHMARKS.md section 3)",
        description=__doc__,
        formatter_class=formatter,
    )
    add_model_argument(bench)
    bench.add_argument(
        "--minutes", type=float, default=10.0, help="minutes of real-time audio to measure"
    )
    bench.add_argument(
        "--fast-seconds",
        dest="fast_seconds",
        type=float,
        default=600.0,
        help="seconds of audio for the as-fast-as-possible throughput run",
    )
    bench.add_argument("--input", metavar="WAV", help="input (default: the bundled demo)")
    bench.add_argument(
        "--events", metavar="CSV", help="true onsets (onset_s,label) of the input, for latency"
    )
    bench.add_argument(
        "--block-ms", dest="block_ms", type=float, default=None, help="audio per block, in ms"
    )
    bench.add_argument("--config", metavar="TOML", help="runtime config (detection overrides)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    bench.set_defaults(func=bench_command)
