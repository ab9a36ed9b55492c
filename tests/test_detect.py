"""The per-class detection state machine, checked against tables of scores and expected events."""

from __future__ import annotations

import numpy as np
import pytest

from edge_detect.detect import ClassDetection, ClassDetector, Detector, Event
from edge_detect.errors import ConfigError

HOP_MS = 10.0

# No smoothing, 2-frame confirm, 3-frame refractory: settings in human units.
PLAIN = ClassDetection(
    threshold_on=0.5, threshold_off=0.3, smoothing_ms=0, confirm_ms=20, refractory_s=0.03
)


def run(settings: ClassDetection, scores: list[float]) -> list[tuple[str, int, int, float]]:
    detector = ClassDetector("dog_bark", settings, HOP_MS)
    events = [detector.update(s) for s in scores]
    events.append(detector.flush())
    return [(e.kind, e.start_frame, e.end_frame, round(e.peak_score, 6)) for e in events if e]


TABLE = [
    # (name, settings, scores, expected (kind, start, end, peak) list)
    ("silence", PLAIN, [0.0] * 10, []),
    ("one frame is not confirmed", PLAIN, [0, 0.9, 0, 0, 0], []),
    (
        "two frames confirm; hysteresis keeps it on above 0.3",
        PLAIN,
        [0, 0.6, 0.7, 0.4, 0.35, 0.2, 0],
        [("onset", 1, 3, 0.7), ("end", 1, 5, 0.7)],
    ),
    (
        "peak after onset is reported at the end",
        PLAIN,
        [0.6, 0.6, 0.95, 0.1],
        [("onset", 0, 2, 0.6), ("end", 0, 3, 0.95)],
    ),
    (
        "dip between on and off does not split the event",
        PLAIN,
        [0.9, 0.9, 0.31, 0.9, 0.1],
        [("onset", 0, 2, 0.9), ("end", 0, 4, 0.9)],
    ),
    (
        "refractory time blocks a new onset for 3 frames after the end",
        PLAIN,
        [0.9, 0.9, 0.0, 0.9, 0.9, 0.9, 0.9, 0.0],
        # ends at frame 2, blocked frames 2..4; frame 5 starts the count, 6 confirms
        [("onset", 0, 2, 0.9), ("end", 0, 2, 0.9), ("onset", 5, 7, 0.9), ("end", 5, 7, 0.9)],
    ),
    (
        "the stream ending closes the event in progress",
        PLAIN,
        [0.0, 0.8, 0.8, 0.8],
        [("onset", 1, 3, 0.8), ("end", 1, 4, 0.8)],
    ),
    (
        "a class that is not enabled never fires",
        ClassDetection(enabled=False, smoothing_ms=0),
        [1.0] * 20,
        [],
    ),
    (
        "3-frame moving average: an isolated 0.9 gives 0.3, below 0.5",
        ClassDetection(threshold_on=0.5, threshold_off=0.3, smoothing_ms=30, confirm_ms=10),
        [0, 0, 0.9, 0, 0, 0],
        [],
    ),
    (
        "3-frame moving average: a run of 0.9 crosses on its 2nd frame (mean 0.6)",
        ClassDetection(
            threshold_on=0.5, threshold_off=0.3, smoothing_ms=30, confirm_ms=10, refractory_s=0
        ),
        [0, 0, 0.9, 0.9, 0.9, 0, 0, 0],
        # smoothed: 0 0 .3 .6 .9 .6 .3 0 -> on at frame 3; off (< .3) at frame 7
        [("onset", 3, 4, 0.6), ("end", 3, 7, 0.9)],
    ),
    (
        "equal thresholds: the score must fall strictly below to end",
        ClassDetection(threshold_on=0.5, threshold_off=0.5, smoothing_ms=0, confirm_ms=10),
        [0.5, 0.5, 0.49],
        [("onset", 0, 1, 0.5), ("end", 0, 2, 0.5)],
    ),
]


@pytest.mark.parametrize(
    ("settings", "scores", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_state_machine_table(settings, scores, expected):
    assert run(settings, scores) == expected


def test_settings_in_human_units_become_frames_once():
    settings = ClassDetection(smoothing_ms=100, confirm_ms=50, refractory_s=1.5)
    detector = ClassDetector("x", settings, hop_ms=10.0)
    assert (detector.smoothing_frames, detector.confirm_frames, detector.refractory_frames) == (
        10,
        5,
        150,
    )
    coarse = ClassDetector("x", settings, hop_ms=20.0)
    assert (coarse.smoothing_frames, coarse.confirm_frames, coarse.refractory_frames) == (5, 2, 75)


def test_detector_runs_classes_independently_and_tracks_quiet_frames():
    settings = {
        "a": PLAIN,
        "b": PLAIN,
        "background": ClassDetection(enabled=False, smoothing_ms=0),
    }
    detector = Detector(["a", "b", "background"], settings, HOP_MS)
    scores = np.array(
        [
            [0.0, 0.0, 1.0],
            [0.9, 0.0, 1.0],
            [0.9, 0.9, 1.0],
            [0.1, 0.9, 1.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 1.0],
        ]
    )
    events = detector.process(scores[:3]) + detector.process(scores[3:])
    assert events == [
        Event("a", "onset", 1, 3, 0.9),
        Event("a", "end", 1, 3, 0.9),
        Event("b", "onset", 2, 4, 0.9),
        Event("b", "end", 2, 4, 0.9),
    ]
    # background (disabled) being at 1.0 never counts as busy; frames 4 and 5 are quiet
    assert detector.quiet_frames == 2
    assert detector.frame == 6


def test_chunking_of_scores_does_not_change_events():
    rng = np.random.default_rng(0)
    scores = np.clip(np.cumsum(rng.normal(0, 0.08, (3000, 2)), axis=0) % 1.0, 0, 1)
    settings = {
        "a": ClassDetection(smoothing_ms=50, confirm_ms=30, refractory_s=0.2),
        "b": ClassDetection(smoothing_ms=0, confirm_ms=10, refractory_s=0),
    }
    whole = Detector(["a", "b"], settings, HOP_MS).process(scores)
    assert len(whole) > 20
    chunked_detector = Detector(["a", "b"], settings, HOP_MS)
    chunked = []
    for start in range(0, len(scores), 7):
        chunked += chunked_detector.process(scores[start : start + 7])
    assert chunked == whole


def test_unknown_class_and_bad_shapes_are_refused():
    with pytest.raises(ConfigError, match="unknown class"):
        Detector(["a"], {"nope": ClassDetection()}, HOP_MS)
    with pytest.raises(ValueError, match=r"shape \(frames, 1\)"):
        Detector(["a"], {}, HOP_MS).process(np.zeros((3, 2)))


def _reference(detector: Detector, scores: np.ndarray) -> list[Event]:
    """Detector.process as it was: every frame through every class's update()."""
    events = []
    for row in scores.tolist():
        busy = False
        for one, score in zip(detector.classes, row, strict=True):
            event = one.update(score)
            if event is not None:
                events.append(event)
            busy = busy or (one.settings.enabled and one.busy)
        detector.quiet_frames = 0 if busy else detector.quiet_frames + 1
    return events


def _state(detector: Detector) -> list[tuple[object, ...]]:
    return [
        (d.frame, d.smoothed, tuple(d._ring), d._pos, d._filled, d._above, d.active, d._peak)
        for d in detector.classes
    ] + [(detector.quiet_frames,)]


@pytest.mark.parametrize("seed", range(6))
def test_quiet_blocks_in_one_go_equal_frame_by_frame(seed: int) -> None:
    """The quiet fast path (ClassDetector.skip_quiet) changes nothing: same events, same state
    after every block, on scores that are mostly quiet with events, scores just below and at
    threshold_off, NaN and negative values, in blocks of random sizes."""
    rng = np.random.default_rng(seed)
    labels = ["a", "b", "c", "background"]
    settings = {
        "a": ClassDetection(threshold_on=0.6, threshold_off=0.3, smoothing_ms=100),
        "b": ClassDetection(threshold_on=0.5, threshold_off=0.5, smoothing_ms=0, confirm_ms=0),
        "c": ClassDetection(threshold_on=0.9, threshold_off=0.0, smoothing_ms=250),
        "background": ClassDetection(enabled=False),
    }
    frames = 6000
    scores = rng.uniform(0, 0.05, size=(frames, 4))
    for _ in range(40):  # events of every class
        start, length = int(rng.integers(0, frames - 60)), int(rng.integers(1, 60))
        scores[start : start + length, rng.integers(0, 4)] = rng.uniform(0.2, 1.0)
    scores[rng.integers(0, frames, 30), 0] = 0.3  # exactly threshold_off
    scores[rng.integers(0, frames, 30), 0] = np.nextafter(0.3, 0.0)  # just below it
    scores[rng.integers(0, frames, 3), 1] = np.nan
    scores[rng.integers(0, frames, 3), 2] = -1e-6
    fast, slow = (Detector(labels, settings, HOP_MS) for _ in range(2))
    position = 0
    while position < frames:
        size = int(rng.choice([0, 1, 3, 10, 10, 10, 37]))
        block = scores[position : position + size]
        # NaN != NaN: compare the text, which spells NaN the same on both sides
        assert repr(fast.process(block)) == repr(_reference(slow, block))
        assert repr(_state(fast)) == repr(_state(slow))
        position += size
    assert repr(fast.flush()) == repr(slow.flush())
