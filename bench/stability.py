"""Days-long stability (BENCHMARKS.md section 2, last bullet; section 5, memory over a day).

A stream of ``--hours`` of audio (24 by default) runs through the pipeline of ``edge-detect run``
(:func:`edge_detect.cli_run.build_pipeline` over a source, the runtime config's defaults, so the
state policy of a device: warm re-synchronisation of the LSTM state in quiet stretches, see
:mod:`edge_detect.pipeline`), as fast as the CPU allows. The stream is never held in memory
(24 h at 16 kHz in float32 is 5.5 GB): :class:`PlannedStream` computes every block on the fly.

The plan: a background *bed* (distinct background audio, looped) runs for the whole stream, and
one *probe* is written over it twice, once in the first hour and once in the last. The probe is
:func:`edge_detect.streams.event_stream`'s output with a 60 s lead: the SAME 60 s of background,
then the SAME event clips at the same event-to-background ratio. The bed before each probe
differs (another place in the loop), so identical scores mean the model forgot the hours before.

Recorded: every frame's scores inside the two probes only (the pipeline's own ``keep_scores``,
switched on for the probe), the alerts (a sink), and at every hour of audio the process's
resident memory (``VmRSS`` of ``/proc/self/status``) and the LSTM state's norms. Reported per
event class: the max and median absolute score difference between the two probes over the
events' frames (+- 1 s), the peak scores, and whether each event was alerted in each probe;
the memory at the first and last marks, its maximum and growth; wall and CPU time and the speed.

Audio: the real corpus (``../shared/data/edge_sed_real_v1``; a few event clips per class and
~10 minutes of background recordings drawn with ``--seed``) when present, else the bundled
audio (the events of ``edge_detect/assets/demo.wav`` over ``tests/fixtures/background_street.wav``),
said so in the output. This is a stability test, not an accuracy test: the model is compared with
itself.

Run (about 3-10 minutes of CPU for 24 h of audio)::

    nice -n 5 python bench/stability.py --hours 24 --json bench/results/stability_24h.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.cli_run import DEMO_PATH, build_pipeline
from edge_detect.config import RuntimeConfig, load_config
from edge_detect.errors import ConfigError, DatasetError, EdgeDetectError
from edge_detect.evaluation import Event
from edge_detect.model import StreamingModel, load_model
from edge_detect.pipeline import Pipeline, StatePolicy
from edge_detect.provenance import provenance, relative_paths
from edge_detect.sources import Block, block_samples
from edge_detect.streams import LabeledClip, event_free_stream, event_stream, load_clip

CHECKOUT = Path(__file__).resolve().parent.parent
CORPUS = CHECKOUT.parent / "shared" / "data" / "edge_sed_real_v1"
BUNDLED_BACKGROUND = CHECKOUT / "tests" / "fixtures" / "background_street.wav"
DEMO_EVENTS = DEMO_PATH.with_name("demo_events.csv")
BACKGROUND = "background"

LEAD_S = 60.0
"""Background before the probe's first event, identical in both probes, in s."""
FIRST_PROBE_AT_S = 300.0
"""Where the first probe starts (at most), in s of audio: the stream has run a while."""
TAIL_S = 60.0
"""Bed after the last probe (at most), in s: its last event ends well before the stream."""
BED_S = 600.0
"""Distinct background audio of the bed, in s (looped for the whole stream)."""
EVENTS_PER_CLASS = 3
"""Event clips per class in the probe (corpus mode)."""
CLIP_SECONDS = (0.5, 6.0)
"""Shortest and longest event clip taken from the corpus, in s."""
EVENT_MARGIN_S = 1.0
"""Frames compared around each event: from this long before its onset to after its offset."""
ONSET_COLLAR_S = 0.5
"""An event counts as alerted when an alert of its class starts from this long before its
onset to its offset (the collar of ``edge-detect eval stream``)."""
MARK_EVERY_S = 3600.0
"""Memory and state are measured every this many seconds of audio."""
DEMO_MARGIN_S = 0.25
"""Audio kept around each labeled event of the demo recording (bundled mode), in s."""
FLOAT_IN_LIST_BYTES = 32
"""Memory of one float in a Python list: the 24-byte float object and the list's 8-byte slot."""
PROBE_PEAK = 0.99
"""The probe is scaled down (all of it, lead included) when mixing would exceed this peak."""

log = logging.getLogger("bench.stability")


# -- the plan and the on-the-fly source ----------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """What the stream holds: a looped bed with the probe written over it at ``probe_starts``."""

    bed: npt.NDArray[np.float32]
    """Background looped from sample 0 (sample ``i`` of the stream is ``bed[i % len(bed)]``)."""
    probe: npt.NDArray[np.float32]
    """The audio written at every probe start (lead, then the events)."""
    events: list[Event]
    """The probe's events, times in s from the probe's start."""
    probe_starts: tuple[int, ...]
    """Sample at which each probe starts."""
    total_samples: int
    sample_rate_hz: int
    audio_note: str
    """Where the audio came from (corpus or bundled fallback)."""
    clips: list[str] = field(default_factory=list)
    """The event clip behind each of ``events``."""

    def samples(self, start: int, stop: int) -> npt.NDArray[np.float32]:
        """Samples ``start:stop`` of the stream (float32), computed from the plan."""
        out = self.bed[np.arange(start, stop) % len(self.bed)]
        for begin in self.probe_starts:
            lo, hi = max(start, begin), min(stop, begin + len(self.probe))
            if lo < hi:
                out[lo - start : hi - start] = self.probe[lo - begin : hi - begin]
        return out


def place_probes(
    total_samples: int, probe_samples: int, align: int, sample_rate_hz: int
) -> tuple[int, int]:
    """Start of the first probe (in the first hour) and of the last one (ending ``TAIL_S`` or
    less before the stream's end), both multiples of ``align`` samples."""
    slack = total_samples - 2 * probe_samples
    first = min(round(FIRST_PROBE_AT_S * sample_rate_hz), max(0, slack // 4))
    first = -(-first // align) * align
    tail = min(round(TAIL_S * sample_rate_hz), max(0, slack // 4))
    last = (total_samples - probe_samples - tail) // align * align
    if last < first + probe_samples:
        need_h = (2 * probe_samples + 2 * align) / sample_rate_hz / 3600
        raise ConfigError(
            f"the stream is too short for two probes of {probe_samples / sample_rate_hz:.1f} s: "
            f"got {total_samples / sample_rate_hz:.1f} s of audio; use --hours {need_h:.3f} or more"
        )
    return first, last


class PlannedStream:
    """A :class:`~edge_detect.sources.Source` that computes the plan's blocks as it goes.

    ``on_block`` (optional) is called with a block's first sample before the block is handed
    out, i.e. after the pipeline has processed everything before it.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        block_ms: float,
        on_block: Callable[[int], None] | None = None,
    ) -> None:
        self.plan = plan
        self.name = f"planned stream ({plan.total_samples / plan.sample_rate_hz / 3600:.3f} h)"
        self.sample_rate_hz = plan.sample_rate_hz
        self.block = block_samples(block_ms, plan.sample_rate_hz)
        self.on_block = on_block
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True

    def blocks(self) -> Iterator[Block]:
        start_wall = time.time()
        total = self.plan.total_samples
        for begin in range(0, total, self.block):
            if self._stopped:
                return
            if self.on_block is not None:
                self.on_block(begin)
            end = min(total, begin + self.block)
            yield Block(self.plan.samples(begin, end), start_wall + end / self.sample_rate_hz)


# -- audio -------------------------------------------------------------------------------------
def _corpus_rows(corpus: Path) -> list[dict[str, str]]:
    try:
        with (corpus / "manifest.csv").open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except OSError as exc:
        raise DatasetError(f"cannot read {corpus / 'manifest.csv'}: {exc}") from None


def corpus_audio(
    corpus: Path, labels: tuple[str, ...], rate: int, seed: int
) -> tuple[list[LabeledClip], list[LabeledClip], str]:
    """Event clips (``EVENTS_PER_CLASS`` per class, foreground events of moderate length) and
    ``BED_S`` of background recordings, drawn with ``seed``."""
    rows = sorted(_corpus_rows(corpus), key=lambda row: row["path"])
    rng = np.random.default_rng(seed)
    events: list[LabeledClip] = []
    for label in labels:
        if label == BACKGROUND:
            continue
        candidates = [
            row
            for row in rows
            if row["label"] == label
            and "salience=2" not in row.get("notes", "")  # event only in the background
            and CLIP_SECONDS[0] <= float(row["duration_s"] or 0) <= CLIP_SECONDS[1]
        ]
        if not candidates:
            raise DatasetError(f"{corpus}: no usable clip of class {label!r} in its manifest")
        picks = rng.choice(len(candidates), min(EVENTS_PER_CLASS, len(candidates)), replace=False)
        events += [
            load_clip(corpus / candidates[i]["path"], label, rate) for i in sorted(picks.tolist())
        ]
    backgrounds: list[LabeledClip] = []
    pool = [row for row in rows if row["label"] == BACKGROUND]
    filled = 0.0
    for i in rng.permutation(len(pool)).tolist():
        clip = load_clip(corpus / pool[i]["path"], BACKGROUND, rate)
        backgrounds.append(clip)
        filled += len(clip.samples) / rate
        if filled >= BED_S:
            break
    note = (
        f"real corpus {corpus.name}: {len(events)} event clips, "
        f"{filled / 60:.1f} min of distinct background from {len(backgrounds)} recordings"
    )
    return events, backgrounds, note


def bundled_audio(rate: int) -> tuple[list[LabeledClip], list[LabeledClip], str]:
    """The demo recording's labeled events and the bundled 4 s street background."""
    demo = load_clip(DEMO_PATH, "demo", rate)
    events = []
    with DEMO_EVENTS.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            lo = max(0, round((float(row["onset_s"]) - DEMO_MARGIN_S) * rate))
            hi = round((float(row["offset_s"]) + DEMO_MARGIN_S) * rate)
            events.append(LabeledClip(demo.samples[lo:hi].copy(), row["label"], row["source"]))
    background = load_clip(BUNDLED_BACKGROUND, BACKGROUND, rate)
    note = (
        "BUNDLED AUDIO (no corpus): 3 events cut from edge_detect/assets/demo.wav over "
        "4 s of tests/fixtures/background_street.wav looped; a weak test of a day's audio"
    )
    return events, [background], note


def make_plan(
    events: list[LabeledClip],
    backgrounds: list[LabeledClip],
    *,
    hours: float,
    sample_rate_hz: int,
    align: int,
    ratio_db: float,
    seed: int,
    note: str,
) -> Plan:
    """The bed (backgrounds in a seeded order), the probe (60 s lead, then every event clip at
    ``ratio_db``) and where the two probes go."""
    if not math.isfinite(hours) or hours <= 0:
        raise ConfigError(f"--hours must be a number of hours > 0, got {hours}")
    bed_s = min(BED_S, sum(len(c.samples) for c in backgrounds) / sample_rate_hz)
    bed = event_free_stream(
        backgrounds, sample_rate_hz=sample_rate_hz, duration_s=bed_s, seed=seed
    ).samples
    probe = event_stream(
        events,
        backgrounds,
        sample_rate_hz=sample_rate_hz,
        ratio_db=ratio_db,
        seed=seed + 1,
        lead_s=LEAD_S,
    )
    samples = probe.samples
    peak = float(np.abs(samples).max())
    if peak > PROBE_PEAK:
        # a microphone would clip it; scale the whole probe instead, so the ratio stays
        log.info(
            "probe peaks at %.2f: scaled by %.3f to stay in full scale", peak, PROBE_PEAK / peak
        )
        samples = (samples * (PROBE_PEAK / peak)).astype(np.float32)
    total = round(hours * 3600 * sample_rate_hz)
    first, last = place_probes(total, len(probe.samples), align, sample_rate_hz)
    return Plan(
        bed=bed,
        probe=samples,
        events=probe.events,
        probe_starts=(first, last),
        total_samples=total,
        sample_rate_hz=sample_rate_hz,
        audio_note=note,
        clips=probe.sources,
    )


# -- measuring ---------------------------------------------------------------------------------
def rss_mb() -> float:
    """Resident memory of this process now (``VmRSS``), in MB (10^6 bytes)."""
    return _status_kb("VmRSS") * 1024 / 1e6


def peak_rss_mb() -> float:
    """Largest resident memory of this process so far (``VmHWM``), in MB."""
    return _status_kb("VmHWM") * 1024 / 1e6


def _status_kb(key: str) -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    # no /proc (not Linux): the peak is all that getrusage knows (kB on Linux, bytes on macOS)
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


@dataclass
class Mark:
    """Memory and state after ``audio_h`` hours of audio."""

    audio_h: float
    rss_mb: float
    h_norm: float
    """L2 norm of the LSTM's h over all layers."""
    c_norm: float
    max_abs_c: float
    resyncs: int
    alerts: int
    wall_s: float
    per_block_entries: int
    """Length of the pipeline's per-block timing list (``RunStats.block_seconds``), which grows
    by one float per block: a candidate for memory growth."""


class ProbeSink:
    """Keeps the alerts that start inside a probe (times from its start) and counts the rest."""

    def __init__(self, probe_windows_s: list[tuple[float, float]]) -> None:
        self.windows = probe_windows_s
        self.in_probe: list[list[tuple[str, float, float]]] = [[] for _ in probe_windows_s]
        """Per probe: (label, start in s from the probe's start, peak score)."""
        self.outside: dict[str, int] = {}
        """Alerts outside the probes (false alarms on the looped bed), per class."""

    def emit(self, message: Alert | HealthEvent) -> None:
        if not isinstance(message, Alert):
            return
        at = float(message.extra["offset_s"])
        for k, (begin, end) in enumerate(self.windows):
            if begin - ONSET_COLLAR_S <= at < end:
                self.in_probe[k].append((message.label, at - begin, message.score))
                return
        self.outside[message.label] = self.outside.get(message.label, 0) + 1

    def close(self) -> None:
        pass


class Recorder:
    """Called before every block: takes the hourly marks, switches score keeping on and off
    around the probes (the pipeline's own ``keep_scores``)."""

    def __init__(
        self, pipeline: Pipeline, plan: Plan, mark_every_s: float, drop_block_timings: bool
    ) -> None:
        self.pipeline = pipeline
        self.drop_block_timings = drop_block_timings
        self.plan = plan
        self.hop = pipeline.model.feature_config.hop_samples
        self.mark_every = round(mark_every_s * plan.sample_rate_hz)
        self.next_mark = 0
        self.marks: list[Mark] = []
        self.started = time.perf_counter()
        self.recording: int | None = None
        self.first_frame: list[int] = []
        self.scores: list[npt.NDArray[np.float32]] = []
        self.entry_state: list[dict[str, float]] = []
        """The LSTM state and the time since the last re-synchronisation at each probe start."""
        self.resyncs_in_probe_s: list[list[float]] = []
        """Per probe: when the state was re-synchronised, in s from the probe's start."""

    def mark(self, sample: int) -> None:
        state = self.pipeline.model.get_state()
        stats = self.pipeline.stats
        self.marks.append(
            Mark(
                audio_h=round(sample / self.plan.sample_rate_hz / 3600, 4),
                rss_mb=round(rss_mb(), 2),
                h_norm=round(float(np.linalg.norm(state.h)), 4),
                c_norm=round(float(np.linalg.norm(state.c)), 4),
                max_abs_c=round(float(np.abs(state.c).max()), 4),
                resyncs=stats.resyncs,
                alerts=stats.alerts,
                wall_s=round(time.perf_counter() - self.started, 2),
                per_block_entries=len(stats.block_seconds),
            )
        )
        log.info(
            "%.2f h of audio: RSS %.1f MB, |c| %.2f, %d re-syncs, %.0f s",
            *(getattr(self.marks[-1], k) for k in ("audio_h", "rss_mb", "c_norm", "resyncs")),
            self.marks[-1].wall_s,
        )

    def __call__(self, sample: int) -> None:
        if self.drop_block_timings:
            self.pipeline.stats.block_seconds.clear()
        while sample >= self.next_mark:
            self.mark(sample)
            self.next_mark += self.mark_every
        pipeline = self.pipeline
        if self.recording is not None:
            begin = self.plan.probe_starts[self.recording]
            if sample >= begin + len(self.plan.probe):
                self._stop_recording()
        for k, begin in enumerate(self.plan.probe_starts):
            if sample == begin:
                state = pipeline.model.get_state()
                last = pipeline.stats.resync_frames[-1] if pipeline.stats.resync_frames else 0
                self.entry_state.append(
                    {
                        "c_norm": round(float(np.linalg.norm(state.c)), 4),
                        "h_norm": round(float(np.linalg.norm(state.h)), 4),
                        "s_since_resync": round((pipeline.stats.frames - last) * self.hop_s, 2),
                    }
                )
                self.recording = k
                self.first_frame.append(pipeline.stats.frames)
                pipeline.scores.clear()
                pipeline.keep_scores = True

    @property
    def hop_s(self) -> float:
        return self.hop / self.plan.sample_rate_hz

    def _stop_recording(self) -> None:
        pipeline = self.pipeline
        assert self.recording is not None
        begin = self.plan.probe_starts[self.recording]
        rate = self.plan.sample_rate_hz
        # read now: RunStats keeps only the latest re-syncs, a week-long run would lose these
        self.resyncs_in_probe_s.append(
            [
                round((frame * self.hop - begin) / rate, 2)
                for frame in pipeline.stats.resync_frames
                if begin <= frame * self.hop < begin + len(self.plan.probe)
            ]
        )
        pipeline.keep_scores = False
        self.scores.append(np.concatenate(pipeline.scores))
        pipeline.scores.clear()
        self.recording = None

    def finish(self) -> None:
        if self.recording is not None:
            self._stop_recording()
        self.mark(self.plan.total_samples)

    def probe_scores(self) -> list[npt.NDArray[np.float32]]:
        """Per probe: scores (frames, classes), frame ``j`` starting ``j`` hops after the probe's
        first sample; all probes cut to the same length."""
        out = []
        for begin, first, scores in zip(
            self.plan.probe_starts, self.first_frame, self.scores, strict=True
        ):
            skip = begin // self.hop - first  # frames that started before the probe
            if skip < 0:
                raise AssertionError(f"score keeping began {-skip} frame(s) after the probe")
            out.append(scores[skip:])
        n = min(len(s) for s in out)
        return [s[:n] for s in out]


# -- running and reporting ---------------------------------------------------------------------
def _alert_key(alerts: list[tuple[str, float, float]]) -> tuple[tuple[str, float, float], ...]:
    """A probe's alerts to the millisecond (their times come from different stream offsets)."""
    return tuple((name, round(at, 3), score) for name, at, score in alerts)


def run_stability(
    model: StreamingModel,
    config: RuntimeConfig,
    plan: Plan,
    *,
    mark_every_s: float = MARK_EVERY_S,
    drop_block_timings: bool = False,
) -> dict[str, Any]:
    """Run the plan's stream through ``edge-detect run``'s pipeline and compare the probes.

    ``drop_block_timings`` (a diagnostic) empties the pipeline's per-block timing list before
    every block, to show how much of the memory growth that list is."""
    rate = plan.sample_rate_hz
    windows = [(begin / rate, (begin + len(plan.probe)) / rate) for begin in plan.probe_starts]
    sink = ProbeSink(windows)
    pipeline = build_pipeline(config, model, [sink])
    recorder = Recorder(pipeline, plan, mark_every_s, drop_block_timings)
    source = PlannedStream(plan, block_ms=config.block_ms, on_block=recorder)
    cpu_start = time.process_time()
    wall_start = time.perf_counter()
    stats = pipeline.run(source)
    recorder.finish()
    wall_s = time.perf_counter() - wall_start
    cpu_s = time.process_time() - cpu_start
    first, last = recorder.probe_scores()
    labels = list(model.labels)
    hop_s = recorder.hop_s
    per_class: dict[str, dict[str, Any]] = {}
    for label in labels:
        mine = [e for e in plan.events if e.label == label]
        if not mine:
            continue
        column = labels.index(label)
        diffs, own_diffs, peaks = [], [], ([], [])  # type: ignore[var-annotated]
        alerted = [0, 0]
        for event in mine:
            lo = max(0, math.floor((event.onset_s - EVENT_MARGIN_S) / hop_s))
            hi = min(len(first), math.ceil((event.offset_s + EVENT_MARGIN_S) / hop_s))
            delta = np.abs(first[lo:hi] - last[lo:hi])
            diffs.append(delta.ravel())
            own_diffs.append(delta[:, column])
            peaks[0].append(float(first[lo:hi, column].max()))
            peaks[1].append(float(last[lo:hi, column].max()))
            for k, found in enumerate(sink.in_probe):
                alerted[k] += any(
                    name == label and event.onset_s - ONSET_COLLAR_S <= at <= event.offset_s
                    for name, at, _ in found
                )
        every = np.concatenate(diffs)
        own = np.concatenate(own_diffs)
        per_class[label] = {
            "events": len(mine),
            "max_abs_diff": float(every.max()),
            "median_abs_diff": float(np.median(every)),
            "max_abs_diff_own_score": float(own.max()),
            "peak_first": [round(p, 4) for p in peaks[0]],
            "peak_last": [round(p, 4) for p in peaks[1]],
            "alerted_first": alerted[0],
            "alerted_last": alerted[1],
        }
    whole = np.abs(first - last)
    rss = [m.rss_mb for m in recorder.marks]
    after_first_hour = [m.rss_mb for m in recorder.marks if m.audio_h >= 1.0] or rss
    audio_s = plan.total_samples / rate
    return {
        "model_id": model.model_id,
        "audio": plan.audio_note,
        "hours": round(audio_s / 3600, 4),
        "block_ms": config.block_ms,
        "state_policy": asdict(config.state),
        "probe": {
            "starts_s": [round(b / rate, 2) for b in plan.probe_starts],
            "length_s": round(len(plan.probe) / rate, 2),
            "lead_s": LEAD_S,
            "events": [asdict(e) for e in plan.events],
            "clips": plan.clips,
            "entry_state": recorder.entry_state,
            "resyncs_in_probe_s": recorder.resyncs_in_probe_s,
        },
        "per_class": per_class,
        "whole_probe_max_abs_diff": float(whole.max()),
        "identical_frames": float(np.mean(np.all(whole == 0, axis=1))),
        "alerts_in_probes": [
            [[name, round(at, 3), score] for name, at, score in found] for found in sink.in_probe
        ],
        "probe_alerts_identical": len({_alert_key(found) for found in sink.in_probe}) == 1,
        "alerts_outside_probes": sink.outside,
        "marks": [asdict(m) for m in recorder.marks],
        "rss_mb": {
            "first": rss[0],
            "max": max(rss),
            "last": rss[-1],
            "growth": round(rss[-1] - rss[0], 2),
            "growth_after_first_hour": round(after_first_hour[-1] - after_first_hour[0], 2),
            "peak_vmhwm": round(peak_rss_mb(), 2),
        },
        "max_abs_c_whole_run": round(stats.max_abs_state, 4),
        "resyncs": stats.resyncs,
        "alerts": stats.alerts,
        "runstats_per_block_entries": len(stats.block_seconds),
        "dropped_block_timings": drop_block_timings,
        "wall_s": round(wall_s, 1),
        "cpu_s": round(cpu_s, 1),
        "speed_x_realtime_wall": round(audio_s / wall_s, 1),
        "speed_x_realtime_cpu": round(audio_s / cpu_s, 1) if cpu_s > 0 else None,
    }


def format_markdown(result: dict[str, Any]) -> str:
    rss = result["rss_mb"]
    policy = result["state_policy"]
    lines = [
        f"Stability over {result['hours']:g} h of audio, model `{result['model_id']}`, "
        f"{result['block_ms']:g} ms blocks. Audio: {result['audio']}.",
        f"State policy: {'warm re-sync' if policy['enabled'] else 'OFF (state never reset)'}"
        + (
            f" (quiet {policy['quiet_s']:g} s, every >= {policy['interval_s']:g} s, forced after "
            f"{policy['max_interval_s']:g} s, {policy['warmup_s']:g} s replay): "
            f"{result['resyncs']} re-syncs"
            if policy["enabled"]
            else ""
        )
        + f". Probes at {', '.join(f'{s:g} s' for s in result['probe']['starts_s'])}"
        f" ({result['probe']['length_s']:g} s each, {result['probe']['lead_s']:g} s lead).",
        "",
        "| class | events | max abs diff | median abs diff | peak score first / last hour "
        "| alerted first / last hour |",
        "|---|---|---|---|---|---|",
    ]
    for label, row in result["per_class"].items():
        peaks = ", ".join(
            f"{a:.3f}/{b:.3f}" for a, b in zip(row["peak_first"], row["peak_last"], strict=True)
        )
        lines.append(
            f"| {label} | {row['events']} | {row['max_abs_diff']:.2e} | "
            f"{row['median_abs_diff']:.2e} | {peaks} | "
            f"{row['alerted_first']}/{row['events']} / {row['alerted_last']}/{row['events']} |"
        )
    lines += [
        "",
        "| audio h | RSS MB | norm h | norm c | max abs c | re-syncs | alerts | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in result["marks"]:
        lines.append(
            f"| {m['audio_h']:g} | {m['rss_mb']:.1f} | {m['h_norm']:.3f} | {m['c_norm']:.3f} | "
            f"{m['max_abs_c']:.3f} | {m['resyncs']} | {m['alerts']} | {m['wall_s']:.0f} |"
        )
    lines += [
        "",
        f"RSS: first {rss['first']:.1f} MB, max {rss['max']:.1f}, last {rss['last']:.1f}, "
        f"growth {rss['growth']:+.2f} MB ({rss['growth_after_first_hour']:+.2f} after the first "
        f"hour; aim <= 2 MB). Pipeline's per-block timing list: "
        f"{result['runstats_per_block_entries']} entries "
        f"(~{result['runstats_per_block_entries'] * FLOAT_IN_LIST_BYTES / 1e6:.1f} MB)"
        + (
            " (emptied before every block: diagnostic)." if result["dropped_block_timings"] else "."
        ),
        f"Largest abs c over the run: {result['max_abs_c_whole_run']:.3f}. Whole probe: max abs "
        f"score diff {result['whole_probe_max_abs_diff']:.2e}, "
        f"{100 * result['identical_frames']:.1f} % of frames bit-identical. State re-syncs "
        "inside the probes (s from their start): "
        + " / ".join(
            ", ".join(f"{t:g}" for t in times) or "none"
            for times in result["probe"]["resyncs_in_probe_s"]
        )
        + ". Alerts in the probes identical (label, start to the ms, score): "
        + ("yes" if result["probe_alerts_identical"] else "NO")
        + f" ({len(result['alerts_in_probes'][0])} / {len(result['alerts_in_probes'][-1])}).",
        f"Time: {result['wall_s']:.0f} s wall ({result['speed_x_realtime_wall']:.0f}x real time), "
        f"{result['cpu_s']:.0f} s CPU ({result['speed_x_realtime_cpu']:.0f}x real time per CPU "
        f"second). Alerts outside the probes (looped bed): {result['alerts_outside_probes']}.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = load_config(None)
    parser.add_argument("--hours", type=float, default=24.0, help="length of the stream (24)")
    parser.add_argument("--model", help="ONNX model (default: the bundled model)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    parser.add_argument(
        "--block-ms",
        type=float,
        default=defaults.block_ms,
        help=f"audio block length, as in 'run' ({defaults.block_ms:g})",
    )
    parser.add_argument(
        "--snr-db", type=float, default=6.0, help="event-to-background ratio in the probe (6)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the clips and layout (0)")
    parser.add_argument("--corpus", type=Path, default=CORPUS, help=f"the real corpus ({CORPUS})")
    parser.add_argument(
        "--bundled", action="store_true", help="use the bundled audio even if the corpus exists"
    )
    parser.add_argument(
        "--no-resync",
        action="store_true",
        help="diagnostic: disable the state policy (the LSTM runs from one state all the way)",
    )
    parser.add_argument(
        "--drop-block-timings",
        action="store_true",
        help="diagnostic: empty the pipeline's per-block timing list (RunStats.block_seconds) "
        "before every block, to see how much of the memory growth it is",
    )
    parser.add_argument("--debug", action="store_true", help="debug logging")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
    )
    if not args.debug:
        logging.getLogger("edge_detect.pipeline").setLevel(logging.WARNING)
    try:
        config = load_config(None).replace(block_ms=args.block_ms)
        if args.model:
            config = config.replace(model=args.model)
        if args.no_resync:
            config = config.replace(state=StatePolicy(enabled=False))
        model = load_model(config.model, threads=config.threads)
        rate = model.feature_config.sample_rate_hz
        if not args.bundled and (args.corpus / "manifest.csv").is_file():
            events, backgrounds, note = corpus_audio(args.corpus, model.labels, rate, args.seed)
        else:
            if not args.bundled:
                log.warning("corpus not found at %s: using the bundled audio", args.corpus)
            events, backgrounds, note = bundled_audio(rate)
        align = math.lcm(block_samples(config.block_ms, rate), model.feature_config.hop_samples)
        plan = make_plan(
            events,
            backgrounds,
            hours=args.hours,
            sample_rate_hz=rate,
            align=align,
            ratio_db=args.snr_db,
            seed=args.seed,
            note=note,
        )
        del events, backgrounds  # the plan holds what the stream needs
        log.info(
            "%s; %.2f h, probes at %s s", note, args.hours, [b / rate for b in plan.probe_starts]
        )
        result = run_stability(model, config, plan, drop_block_timings=args.drop_block_timings)
    except EdgeDetectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = provenance([__file__, *(sys.argv[1:] if argv is None else argv)])
    result["command"] = record["command"]
    result["date_utc"] = record["date_utc"]
    result["provenance"] = record
    print(format_markdown(result))
    if args.json:
        text = json.dumps(relative_paths(result), indent=2) + "\n"
        Path(args.json).write_text(text, encoding="utf-8")
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
