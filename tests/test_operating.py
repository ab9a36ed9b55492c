"""``edge_detect.operating`` as a trainer calls it: numpy score arrays, a ClassDetection and the
hop; no model, no runtime config."""

from __future__ import annotations

import numpy as np
import pytest

from edge_detect.detect import ClassDetection
from edge_detect.errors import ConfigError
from edge_detect.operating import lowest_threshold, replay_events

HOP_MS = 10.0
SETTING = ClassDetection(threshold_on=0.5, threshold_off=0.3, smoothing_ms=100, confirm_ms=50)
BURST = np.full(30, 0.9, dtype=np.float32)  # 0.3 s of a confident score


def test_replay_gives_onset_and_alert_times_in_seconds() -> None:
    scores = np.concatenate([np.zeros(100, np.float32), BURST, np.zeros(200, np.float32)])
    # the 100 ms moving average reaches 0.5 after 6 of the 10 frames; 5 frames confirm it
    assert replay_events(scores, "dog_bark", SETTING, HOP_MS) == [(1.05, 1.1)]
    assert replay_events(np.zeros(500, np.float32), "dog_bark", SETTING, HOP_MS) == []


def test_separate_recordings_are_replayed_from_a_fresh_state() -> None:
    # two recordings that each start confident: two false alarms; glued together, one event
    apart = lowest_threshold(
        [BURST, BURST], "x", SETTING, HOP_MS, free_hours=1.0, target_per_hour=1.0
    )
    glued = lowest_threshold(
        np.concatenate([BURST, BURST]), "x", SETTING, HOP_MS, free_hours=1.0, target_per_hour=1.0
    )
    assert apart > 0.9  # only a threshold above the bursts keeps to 1 per hour
    assert glued == 1 / 1024  # one event per hour is allowed: the lowest step
    assert len(replay_events(BURST, "x", SETTING, HOP_MS)) == 1


def test_threshold_search_needs_event_free_audio() -> None:
    with pytest.raises(ConfigError, match="free_hours must be > 0"):
        lowest_threshold(BURST, "x", SETTING, HOP_MS, free_hours=0.0, target_per_hour=1.0)
