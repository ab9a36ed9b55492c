"""The runtime path: audio source -> log-mel -> model step -> detection -> alerts -> sinks.

One :class:`Pipeline` object owns the stream's state (the feature buffer, the model's ``(h, c)``,
the per-class state machines) and turns each audio block into zero or more alerts at once, so
the latency from a block to its alert is the processing time of one block.

Recurrent state over endless streams
------------------------------------
An LSTM run for days from one initial state can drift into regions it never saw in training
(which starts every clip from the zero state and lasts seconds): its cell state may saturate and
its scores go stale. The pipeline therefore re-synchronises the state, under these rules
(:class:`StatePolicy`):

1. **Only when it is quiet.** A re-synchronisation happens only after every enabled class has
   stayed *quiet* for ``quiet_s`` (its smoothed score below ``threshold_off``, no event pending or
   going on), and at most once per ``interval_s``. An event that is in progress, or about to be
   confirmed, is never touched.
2. **Warm, not cold.** The state is reset to zeros and the last ``warmup_s`` of features are
   replayed through the model (their scores discarded). The new state is that of a model that
   heard only the recent audio, which is what training showed it, and there is no cold-start
   transient: an event that begins right after a re-synchronisation is scored almost as if the
   model had been running all along (a trained model's scores depend on the last seconds, not on
   hours ago).
3. **Bounded even without silence.** If the stream is never quiet for ``max_interval_s`` (a
   crying baby next to the microphone for an hour), the warm re-synchronisation happens anyway.
   The detector's state (smoothing, hysteresis, refractory time) is kept and the warm replay
   keeps the scores continuous, so an event in progress is not ended or restarted by it (tested
   with an event every 3 s for 2 minutes: every one alerted once).

The 1-hour test in ``tests/test_pipeline.py`` checks the rules (resets only in quiet stretches,
state finite and bounded, every planted event found); the cost is ``warmup_s`` of model steps per
``interval_s`` at most (3 % more model work at the defaults, in one call of 200 frames).

Time
----
Frame ``i`` of the stream starts at sample ``i * hop``. A block carries the wall-clock time of its
last sample; sample times in between are counted back from it at the model's rate. Alerts carry
``offset_s``, the event's start in seconds from the start of the stream (for files: the position
in the file).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import numpy.typing as npt

from edge_detect.alerts import Alert, HealthEvent
from edge_detect.clips import ClipRecorder
from edge_detect.detect import ClassDetection, Detector, Event
from edge_detect.errors import ConfigError
from edge_detect.features import StreamingLogMel
from edge_detect.model import StreamingModel, score_problem
from edge_detect.sinks import Output, Sink
from edge_detect.sources import Block, Source
from edge_detect.strict import check_fields, check_number, setting

__all__ = ["ALERT_ON", "Pipeline", "RunStats", "StatePolicy", "iso_time"]

log = logging.getLogger(__name__)

ALERT_ON = ("onset", "end")
"""When an alert is sent: when the event is confirmed (lowest latency; ``end`` and
``duration_s`` are then those of the confirmation), or when it ends (full duration and peak)."""


_ROUTINE_EVENTS = frozenset({"started", "stopping", "heartbeat", "microphone_restored"})
"""Health events logged at INFO; every other one says something went wrong (WARNING)."""


def iso_time(wall_s: float) -> str:
    """Wall-clock seconds as ISO 8601 in UTC, e.g. 2026-01-31T12:00:00.250+00:00."""
    return datetime.fromtimestamp(wall_s, timezone.utc).isoformat(timespec="milliseconds")


_DAY_S = 86_400.0
MAX_HEARTBEAT_S = 7 * _DAY_S
"""Longest heartbeat interval, in s (0 = no heartbeat)."""


@dataclass(frozen=True)
class StatePolicy:
    """When the model's recurrent state is re-synchronised (see the module docstring)."""

    quiet_s: float = setting(5.0, low=0.0, high=_DAY_S)
    """Every enabled class must have been quiet this long, in s."""
    interval_s: float = setting(60.0, low=0.0, high=_DAY_S)
    """At most one re-synchronisation per this many seconds of audio."""
    max_interval_s: float = setting(1800.0, low=0.0, high=_DAY_S)
    """Re-synchronise after this long even if the stream was never quiet, in s (0 = never)."""
    warmup_s: float = setting(2.0, low=0.0, high=60.0)
    """Seconds of recent features replayed into the fresh state."""
    enabled: bool = setting(True, kind=bool)

    def __post_init__(self) -> None:
        check_fields(self, "state policy")
        if 0 < self.max_interval_s < self.interval_s:
            raise ConfigError(
                f"state policy max_interval_s ({self.max_interval_s}) must be 0 or >= "
                f"interval_s ({self.interval_s})"
            )


INVALID_REPORT_S = 600.0
"""Least audio time between two 'model_output_invalid' health events, in s (no storm)."""

STATS_WINDOW = 10_000
"""How many per-block and per-alert entries :class:`RunStats` keeps (the latest ones): a detector
runs for weeks, and one entry per 100 ms block grew its memory by 28 MB a day
(``bench/stability.py``)."""


@dataclass
class RunStats:
    """What a run did, for logs, ``eval`` and ``bench``."""

    blocks: int = 0
    frames: int = 0
    audio_s: float = 0.0
    alerts: int = 0
    resyncs: int = 0
    resync_frames: deque[int] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    """Frame index of the latest state re-synchronisations (the last STATS_WINDOW)."""
    busy_s: float = 0.0
    """Total processing time of all blocks, in s."""
    block_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    """Processing time of the latest blocks (features, model, detection, sinks), in s."""
    alert_latency_s: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    """For the latest alerts: time from the end of the block that completed it to the sink
    call."""
    alert_wall: deque[float] = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    """Wall-clock time at which the latest alerts were handed to the sinks."""
    max_abs_state: float = 0.0
    """Largest |c| seen at a block end (a drift/saturation indicator)."""
    max_lag_s: float = 0.0
    """Largest delay from a block's last sample to the end of its processing, in s."""
    late_blocks: int = 0
    """Blocks finished later than one block duration after their last sample: the detector
    fell behind real time (only meaningful for live or paced input)."""
    stream_start_wall: float | None = None
    """Wall-clock time of the stream's first sample."""
    invalid_frames: int = 0
    """Frames whose scores were not finite numbers in [0, 1] (counted as silence)."""


class Pipeline:
    """Turns audio blocks into alerts for one stream.

    Parameters
    ----------
    model : StreamingModel
    sinks : sequence of Sink
        Every alert and health event goes to all of them.
    detection : mapping label -> ClassDetection, optional
        Overrides of the model's per-class settings (whole settings per label).
    device_name : str, optional
        Name of this detector in alerts (host name by default).
    alert_on : 'onset' or 'end'
    state_policy : StatePolicy
    keep_scores : bool
        Keep every frame's scores in :attr:`scores` (for evaluation and tests; memory grows with
        the stream, so never on a device).
    heartbeat_s : float
        Send a 'heartbeat' health event every this many seconds of audio (0 = never), so that a
        receiver can tell a quiet detector from a dead one.
    clips : ClipRecorder, optional
        Records the audio around every alert; the alert's ``clip`` names the file. The pipeline
        closes it when the stream ends.
    """

    def __init__(
        self,
        model: StreamingModel,
        sinks: Sequence[Sink],
        *,
        detection: Mapping[str, ClassDetection] | None = None,
        device_name: str | None = None,
        alert_on: str = "onset",
        state_policy: StatePolicy | None = None,
        keep_scores: bool = False,
        heartbeat_s: float = 0.0,
        clips: ClipRecorder | None = None,
    ) -> None:
        if alert_on not in ALERT_ON:
            raise ConfigError(f"alert_on must be one of {list(ALERT_ON)}, got {alert_on!r}")
        self.model = model
        model.reset()  # a pipeline is one stream
        self.sinks = list(sinks)
        self._health_lock = threading.Lock()
        self.device_name = device_name or socket.gethostname()
        self.alert_on = alert_on
        self.policy = state_policy or StatePolicy()
        config = model.feature_config
        self.sample_rate_hz = config.sample_rate_hz
        self._hop = config.hop_samples
        self._window = config.window_samples
        settings = dict(model.detection)
        settings.update(detection or {})
        self.detector = Detector(model.labels, settings, config.hop_ms)
        self.features = StreamingLogMel(config)
        fps = config.frames_per_second
        self._quiet_frames = round(self.policy.quiet_s * fps)
        self._interval_frames = round(self.policy.interval_s * fps)
        self._max_interval_frames = round(self.policy.max_interval_s * fps)
        # the latest blocks of features, at least warmup_frames of them (whole blocks: one
        # append per block rather than one per frame)
        self._warmup_frames = max(1, round(self.policy.warmup_s * fps))
        self._warmup: deque[npt.NDArray[np.float32]] = deque()
        self._warmup_held = 0
        self._last_resync = 0
        self._samples = 0
        self._anchor_wall = time.time()
        self._stream_start_wall: float | None = None
        self._alert_seq = 0
        self._health_seq = 0
        self._next_invalid_report_s = 0.0
        self._pending: dict[str, Event] = {}
        self._stop = threading.Event()
        self.stats = RunStats()
        self.emitted: list[Alert] = []
        """Alerts of this run, in order (kept for eval; bounded by keep_alerts)."""
        self.keep_alerts = 10_000
        self.keep_scores = keep_scores
        self.clips = clips
        heartbeat_s = check_number(heartbeat_s, "heartbeat_s", low=0.0, high=MAX_HEARTBEAT_S)
        for sink in self.sinks:
            if isinstance(sink, Output):  # its threads' faults become health events
                sink.bind_health(self.health)
        if clips is not None:
            clips.report = self.health
        self._heartbeat_samples = round(heartbeat_s * self.sample_rate_hz)
        self._next_heartbeat = self._heartbeat_samples
        self.scores: list[npt.NDArray[np.float32]] = []
        """Scores of every block, shape (frames, classes) each, when keep_scores is set."""

    # -- time ------------------------------------------------------------------------------
    def _sample_wall(self, sample: int) -> float:
        return self._anchor_wall - (self._samples - sample) / self.sample_rate_hz

    def _frame_start_s(self, frame: int) -> float:
        return frame * self._hop / self.sample_rate_hz

    # -- messages --------------------------------------------------------------------------
    def _emit(self, message: Alert | HealthEvent) -> None:
        for sink in self.sinks:
            try:
                sink.emit(message)
            except Exception:  # one broken sink must not silence the others or stop detection
                log.exception("sink %s failed to take a message", type(sink).__name__)

    def health(self, event: str, detail: str = "") -> HealthEvent:
        """Send a health event to every sink (also usable as a source's health callback).

        Thread-safe: outputs raise health events from their own threads.
        """
        with self._health_lock:
            self._health_seq += 1
            seq = self._health_seq
        message = HealthEvent(
            id=uuid.uuid4().hex,
            seq=seq,
            event=event,
            time=iso_time(time.time()),
            device=self.device_name,
            detail=detail,
        )
        level = logging.INFO if event in _ROUTINE_EVENTS else logging.WARNING
        log.log(level, "health: %s %s", event, detail)
        self._emit(message)
        return message

    def _alert(self, event: Event, block_end: float) -> Alert:
        start_sample = event.start_frame * self._hop
        end_sample = (event.end_frame - 1) * self._hop + self._window
        start_wall = self._sample_wall(start_sample)
        end_wall = self._sample_wall(end_sample)
        self._alert_seq += 1
        alert_id = uuid.uuid4().hex
        clip = None
        if self.clips is not None and event.kind == self.alert_on:
            clip = str(self.clips.start_clip(alert_id, event.label))
        alert = Alert(
            id=alert_id,
            seq=self._alert_seq,
            label=event.label,
            score=round(event.peak_score, 4),
            start=iso_time(start_wall),
            end=iso_time(end_wall),
            duration_s=round((end_sample - start_sample) / self.sample_rate_hz, 3),
            device=self.device_name,
            model_id=self.model.model_id,
            clip=clip,
            extra={"offset_s": round(self._frame_start_s(event.start_frame), 3)},
        )
        self._emit(alert)
        self.stats.alerts += 1
        now = time.time()
        self.stats.alert_latency_s.append(now - block_end)
        self.stats.alert_wall.append(now)
        if len(self.emitted) < self.keep_alerts:
            self.emitted.append(alert)
        log.info(
            "%s: %s score %.2f at %.2f s (%.2f s long)",
            "alert" if event.kind == self.alert_on else "event",
            event.label,
            event.peak_score,
            self._frame_start_s(event.start_frame),
            alert.duration_s,
        )
        return alert

    def _handle(self, events: Iterable[Event], block_end: float) -> list[Alert]:
        alerts = []
        for event in events:
            if event.kind == self.alert_on:
                alerts.append(self._alert(event, block_end))
            elif event.kind == "end":
                log.info(
                    "event end: %s peak %.2f, %.2f s long",
                    event.label,
                    event.peak_score,
                    event.num_frames * self._hop / self.sample_rate_hz,
                )
        return alerts

    # -- processing ------------------------------------------------------------------------
    def _maybe_resync(self) -> None:
        if not self.policy.enabled:
            return
        frame = self.detector.frame
        since = frame - self._last_resync
        quiet = self.detector.quiet_frames >= self._quiet_frames
        due = (quiet and since >= self._interval_frames) or (
            self._max_interval_frames > 0 and since >= self._max_interval_frames
        )
        if not due:
            return
        self.model.reset()
        if self._warmup:
            self.model.step(np.concatenate(self._warmup)[-self._warmup_frames :])
        self._last_resync = frame
        self.stats.resyncs += 1
        self.stats.resync_frames.append(frame)
        log.debug("recurrent state re-synchronised at frame %d (quiet=%s)", frame, quiet)

    def _keep_for_warmup(self, frames: npt.NDArray[np.float32]) -> None:
        self._warmup.append(frames)
        self._warmup_held += len(frames)
        while self._warmup_held - len(self._warmup[0]) >= self._warmup_frames:
            self._warmup_held -= len(self._warmup.popleft())

    def _checked(self, scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Scores with frames the model could not score (NaN, inf, outside [0, 1]) set to 0.

        Such a frame counts as nothing heard: it must never become an alert whose score is
        NaN. A state that went non-finite is reset, or every later frame would be lost too.
        The health event is rate-limited to one per ``INVALID_REPORT_S`` of audio.
        """
        problem = score_problem(scores)
        if problem is None:
            return scores
        valid = np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0)
        bad: npt.NDArray[np.bool_] = ~np.asarray(valid.all(axis=1), dtype=bool)  # (frames,)
        scores = np.where(bad[:, None], np.float32(0.0), np.nan_to_num(scores)).astype(np.float32)
        np.clip(scores, 0.0, 1.0, out=scores)
        self.stats.invalid_frames += int(bad.sum())
        state = self.model.get_state()
        reset = not (np.isfinite(state.h).all() and np.isfinite(state.c).all())
        if reset:
            self.model.reset()
        audio_s = self._samples / self.sample_rate_hz
        if audio_s >= self._next_invalid_report_s:
            self._next_invalid_report_s = audio_s + INVALID_REPORT_S
            self.health(
                "model_output_invalid",
                f"{problem} at {audio_s:.1f} s; counted as silence"
                + ("; recurrent state reset" if reset else "")
                + f" ({self.stats.invalid_frames} frame(s) so far)",
            )
        return scores

    def process_block(self, block: Block) -> list[Alert]:
        """Run one block through features, model and detection; emit and return its alerts."""
        started = time.perf_counter()
        if self._stream_start_wall is None:
            self._stream_start_wall = block.end_time - len(block.samples) / self.sample_rate_hz
            self.stats.stream_start_wall = self._stream_start_wall
        self._samples += len(block.samples)
        self._anchor_wall = block.end_time
        if self.clips is not None:
            self.clips.push(block.samples)  # before detection: the clip's pre-roll has this block
        frames = self.features.process(block.samples)
        alerts: list[Alert] = []
        if len(frames):
            # Step in pieces that end at resync opportunities would change nothing: the policy
            # acts between blocks, and a block is ~10 frames.
            scores = self._checked(self.model.step(frames))
            if self.keep_scores:
                self.scores.append(scores)
            self._keep_for_warmup(frames)
            alerts = self._handle(self.detector.process(scores), block.end_time)
            self._maybe_resync()
        self.stats.blocks += 1
        self.stats.frames += len(frames)
        self.stats.audio_s = self._samples / self.sample_rate_hz
        if self._heartbeat_samples and self._samples >= self._next_heartbeat:
            self._next_heartbeat += self._heartbeat_samples
            self.health(
                "heartbeat",
                f"{self.stats.audio_s:.0f} s of audio, {self.stats.alerts} alert(s), "
                f"{self.stats.resyncs} state re-sync(s)",
            )
        took = time.perf_counter() - started
        self.stats.block_seconds.append(took)
        self.stats.busy_s += took
        return alerts

    def finish(self) -> list[Alert]:
        """End the stream: close events in progress (their alerts go out if alert_on='end')."""
        return self._handle(self.detector.flush(), time.time())

    def stop(self) -> None:
        """Ask :meth:`run` to end after the block in progress (thread- and signal-safe)."""
        self._stop.set()

    def run(self, source: Source) -> RunStats:
        """Read ``source`` until it ends or :meth:`stop`; health events 'started'/'stopping'."""
        self.health("started", f"source {source.name}, model {self.model.model_id}")
        reason = "end of input"
        try:
            for block in source.blocks():
                self.process_block(block)
                lag = time.time() - block.end_time
                self.stats.max_lag_s = max(self.stats.max_lag_s, lag)
                if lag > len(block.samples) / self.sample_rate_hz:
                    self.stats.late_blocks += 1
                self.stats.max_abs_state = max(
                    self.stats.max_abs_state, self.model.state_magnitude()
                )
                if self._stop.is_set():
                    source.stop()
                    break
            if self._stop.is_set():
                reason = "stop requested"
        finally:
            self.finish()
            self.health(
                "stopping",
                f"{reason}; {self.stats.audio_s:.1f} s of audio, {self.stats.alerts} alert(s)",
            )
            if self.clips is not None:
                self.clips.close()
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:
                    log.exception("closing sink %s failed", type(sink).__name__)
        return self.stats
