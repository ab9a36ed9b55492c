"""Detection post-processing: per-class settings (stored in the model's metadata) and the
per-class state machine that turns frame scores into events."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.errors import ConfigError
from edge_detect.strict import check_fields, setting, strict_from_dict

__all__ = ["ClassDetection", "ClassDetector", "Detector", "Event"]


MAX_WINDOW_MS = 60_000.0
"""Longest smoothing or confirmation window, in ms (a minute: longer is a typo)."""
MAX_REFRACTORY_S = 86_400.0
"""Longest refractory time, in s (a day)."""


@dataclass(frozen=True)
class ClassDetection:
    """How one class's frame scores become events. Defaults come from the model metadata and
    can be overridden by the user's config."""

    threshold_on: float = setting(0.5, low=0.0, high=1.0)
    """Smoothed score at or above which an event may start, in [0, 1]."""
    threshold_off: float = setting(0.3, low=0.0, high=1.0)
    """Smoothed score below which a running event ends (hysteresis), <= threshold_on."""
    smoothing_ms: float = setting(100.0, low=0.0, high=MAX_WINDOW_MS)
    """Length of the moving average applied to frame scores, in ms (0 = none)."""
    confirm_ms: float = setting(50.0, low=0.0, high=MAX_WINDOW_MS)
    """How long the score must stay >= threshold_on before the event is confirmed, in ms."""
    refractory_s: float = setting(1.0, low=0.0, high=MAX_REFRACTORY_S)
    """After an event ends, no new event of this class starts for this long, in s."""
    enabled: bool = setting(True, kind=bool)
    """False: never alert for this class (e.g. 'background')."""

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.threshold_off <= self.threshold_on:
            raise ConfigError(
                "need 0 <= threshold_off <= threshold_on <= 1, got "
                f"threshold_on={self.threshold_on}, threshold_off={self.threshold_off}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/TOML-ready), the form stored in model metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "detection settings") -> ClassDetection:
        """Build from a table: unknown keys, wrong types and non-finite numbers are refused."""
        return strict_from_dict(cls, data, where=where)


@dataclass(frozen=True)
class Event:
    """One detected event of one class, in frames of the feature stream.

    ``kind`` is ``'onset'`` when the event is confirmed (it is still going on; ``end_frame`` is
    the confirming frame + 1) and ``'end'`` when its score fell below ``threshold_off`` or the
    stream ended (``end_frame`` exclusive).
    """

    label: str
    kind: str
    start_frame: int
    """First frame whose smoothed score reached ``threshold_on``."""
    end_frame: int
    """One past the last frame of the event (so far, for an onset)."""
    peak_score: float
    """Highest smoothed score from ``start_frame`` to ``end_frame``."""

    @property
    def num_frames(self) -> int:
        """Length in frames (so far, for an onset)."""
        return self.end_frame - self.start_frame


_QUIET_MARGIN = 1.0 - 1e-9
"""Scores below threshold_off * this are quiet for :meth:`ClassDetector.skip_quiet`: far more
than the rounding of a sum of up to :data:`_QUIET_MAX_FRAMES` terms (about 1e-11 relative)."""
_QUIET_MAX_FRAMES = 100_000
"""Smoothing windows longer than this (1000 s at 10 ms) always take the exact per-frame path."""


def _ms_to_frames(ms: float, hop_ms: float) -> int:
    return int(round(ms / hop_ms))


class ClassDetector:
    """The state machine of one class: smoothing, hysteresis, confirmation, refractory time.

    States: *idle* (score below ``threshold_on``, or in the refractory time), *pending* (score at
    or above ``threshold_on`` for fewer than the confirm frames), *active* (confirmed; ends on the
    first frame whose smoothed score is below ``threshold_off``). Settings in ms/s are turned into
    frames once, here.

    Parameters
    ----------
    label : str
    settings : ClassDetection
    hop_ms : float
        Distance between feature frames, in ms (``FeatureConfig.hop_ms``).
    """

    def __init__(self, label: str, settings: ClassDetection, hop_ms: float) -> None:
        if not hop_ms > 0:
            raise ConfigError(f"hop_ms must be > 0, got {hop_ms}")
        self.label = label
        self.settings = settings
        self.smoothing_frames = max(1, _ms_to_frames(settings.smoothing_ms, hop_ms))
        self.confirm_frames = max(1, _ms_to_frames(settings.confirm_ms, hop_ms))
        self.refractory_frames = _ms_to_frames(settings.refractory_s * 1000.0, hop_ms)
        self.reset()

    def reset(self) -> None:
        """Forget the score history and any event in progress (start of a new stream)."""
        self._ring = [0.0] * self.smoothing_frames
        self._filled = 0
        self._pos = 0
        self.frame = 0
        """Index of the next frame to be processed."""
        self.smoothed = 0.0
        """Smoothed score of the last processed frame."""
        self._above = 0  # consecutive frames at or above threshold_on (idle/pending)
        self._active = False
        self._start = 0
        self._peak = 0.0
        self._blocked_until = 0  # first frame after the refractory time

    @property
    def active(self) -> bool:
        """True while a confirmed event is going on."""
        return self._active

    @property
    def busy(self) -> bool:
        """True while an event is going on or pending, or the score is not below threshold_off."""
        return self._active or self._above > 0 or self.smoothed >= self.settings.threshold_off

    def update(self, score: float) -> Event | None:
        """Process the score of one frame; return the event it starts or ends, if any."""
        # Trailing moving average; the sum is recomputed, not accumulated, so float error cannot
        # drift over a stream of days.
        self._ring[self._pos] = float(score)
        self._pos = (self._pos + 1) % self.smoothing_frames
        self._filled = min(self._filled + 1, self.smoothing_frames)
        smoothed = sum(self._ring) / self._filled
        self.smoothed = smoothed
        frame = self.frame
        self.frame += 1
        s = self.settings
        if self._active:
            if smoothed < s.threshold_off:
                return self._finish(frame)
            self._peak = max(self._peak, smoothed)
            return None
        if not s.enabled or frame < self._blocked_until or smoothed < s.threshold_on:
            self._above = 0
            return None
        if self._above == 0:
            self._start = frame
            self._peak = smoothed
        else:
            self._peak = max(self._peak, smoothed)
        self._above += 1
        if self._above < self.confirm_frames:
            return None
        self._active = True
        self._above = 0
        return Event(self.label, "onset", self._start, frame + 1, self._peak)

    def skip_quiet(self, scores: list[float]) -> bool:
        """Process frames in one go if none of them can change the state; else do nothing.

        Exactly what :meth:`update` would do for each score, when the class is idle (no event
        going on or pending) and every score and every score in the smoothing window is in
        ``[0, threshold_off)`` with a margin: then every smoothed score stays below
        ``threshold_off`` (an average cannot exceed its largest term by more than rounding), so
        no frame starts anything or counts as busy. Quiet audio takes this path for every class,
        and a 100 ms block costs a few list operations instead of one :meth:`update` per frame
        and class. A disabled class is always quiet.

        Returns
        -------
        bool
            True when the frames were processed; False (nothing changed) when they must go
            through :meth:`update` one by one.
        """
        size = self.smoothing_frames
        if size > _QUIET_MAX_FRAMES:
            return False
        if self.settings.enabled:
            if self._active or self._above:
                return False
            bound = self.settings.threshold_off * _QUIET_MARGIN
            # NaN and negative scores fail these comparisons: they take the exact path
            if not all(0.0 <= v < bound for v in scores):
                return False
            if not all(0.0 <= v < bound for v in self._ring):
                return False
        if not scores:
            return True
        ring, pos = self._ring, self._pos
        for score in scores:
            ring[pos] = score
            pos = (pos + 1) % size
        self._pos = pos
        self._filled = min(self._filled + len(scores), size)
        self.smoothed = sum(ring) / self._filled
        self.frame += len(scores)
        return True

    def _finish(self, end_frame: int) -> Event:
        self._active = False
        self._blocked_until = end_frame + self.refractory_frames
        return Event(self.label, "end", self._start, end_frame, self._peak)

    def flush(self) -> Event | None:
        """End the event in progress, if any, at the current frame (end of stream)."""
        if self._active:
            return self._finish(self.frame)
        self._above = 0
        return None


class Detector:
    """Per-class state machines for all classes of a model.

    Parameters
    ----------
    labels : sequence of str
        Class names, in the order of the model's score columns.
    settings : mapping label -> ClassDetection
        Settings per class; a label absent from it gets ``ClassDetection()`` defaults. A
        ``background`` class is normally present with ``enabled=False``.
    hop_ms : float
        Distance between feature frames, in ms.
    """

    def __init__(
        self, labels: Sequence[str], settings: Mapping[str, ClassDetection], hop_ms: float
    ) -> None:
        unknown = sorted(set(settings) - set(labels))
        if unknown:
            raise ConfigError(
                f"detection settings for unknown class(es) {unknown}; the model's classes are "
                f"{list(labels)}"
            )
        self.labels = list(labels)
        self.hop_ms = hop_ms
        self.classes = [
            ClassDetector(label, settings.get(label, ClassDetection()), hop_ms) for label in labels
        ]
        self.quiet_frames = 0
        """Consecutive frames (up to now) in which no class was busy (see ClassDetector.busy)."""

    @property
    def frame(self) -> int:
        """Index of the next frame to be processed."""
        return self.classes[0].frame if self.classes else 0

    def reset(self) -> None:
        """Reset every class's state machine and the quiet count (start of a new stream)."""
        for detector in self.classes:
            detector.reset()
        self.quiet_frames = 0

    def process(self, scores: npt.ArrayLike) -> list[Event]:
        """Feed the scores of consecutive frames.

        Parameters
        ----------
        scores : array, shape (frames, classes)
            Probabilities in [0, 1], columns in the order of ``labels``.

        Returns
        -------
        list of Event
            Onsets and ends, in frame order (by class within a frame).
        """
        array = np.asarray(scores, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != len(self.classes):
            raise ValueError(
                f"expected scores of shape (frames, {len(self.classes)}), got {array.shape}"
            )
        columns = array.T.tolist()
        # classes whose frames are all quiet are done here (most of the time, all of them);
        # the others go frame by frame, which keeps events in frame order
        exact = [
            (detector, column)
            for detector, column in zip(self.classes, columns, strict=True)
            if not detector.skip_quiet(column)
        ]
        if not exact:
            self.quiet_frames += len(array)
            return []
        events: list[Event] = []
        for frame in range(len(array)):
            busy = False
            for detector, column in exact:
                event = detector.update(column[frame])
                if event is not None:
                    events.append(event)
                busy = busy or (detector.settings.enabled and detector.busy)
            self.quiet_frames = 0 if busy else self.quiet_frames + 1
        return events

    def flush(self) -> list[Event]:
        """End every event in progress (end of stream, shutdown)."""
        events = [e for e in (d.flush() for d in self.classes) if e is not None]
        return events
