"""Event-based metrics against sed_eval (the trusted reference) on a grid of random inputs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from edge_detect.evaluation import Event, EventBasedMetrics

LABELS = ("dog_bark", "baby_cry", "gun_shot")


def _random_events(rng: np.random.Generator, n: int, span_s: float) -> list[Event]:
    events = []
    for _ in range(n):
        onset = float(np.round(rng.uniform(0, span_s), 2))
        events.append(Event(str(rng.choice(LABELS)), onset, onset + float(rng.uniform(0.2, 3))))
    return sorted(events, key=lambda e: e.onset_s)


def _jitter(rng: np.random.Generator, events: list[Event]) -> list[Event]:
    """Estimates near the references: shifted onsets, some relabelled, some dropped, extras."""
    out = []
    for e in events:
        if rng.random() < 0.2:
            continue
        label = str(rng.choice(LABELS)) if rng.random() < 0.2 else e.label
        onset = max(0.0, e.onset_s + float(np.round(rng.normal(0, 0.4), 2)))
        out.append(Event(label, onset, onset + 1.0))
    return sorted(out + _random_events(rng, int(rng.integers(0, 4)), 60.0), key=lambda e: e.onset_s)


def test_hand_made_case() -> None:
    ref = [Event("dog_bark", 1.0, 2.0), Event("gun_shot", 5.0, 5.5), Event("baby_cry", 9.0, 12)]
    est = [
        Event("dog_bark", 1.4, 2.0),  # hit (0.4 s late)
        Event("dog_bark", 5.1, 5.3),  # wrong label at the gunshot's onset: a substitution
        Event("baby_cry", 9.7, 10.0),  # 0.7 s late: outside the collar
        Event("gun_shot", 20.0, 20.1),  # insertion
    ]
    m = EventBasedMetrics(LABELS, t_collar_s=0.5)
    m.evaluate(ref, est)
    assert (m.overall.tp, m.overall.subs, m.overall.fn, m.overall.fp) == (1, 1, 1, 2)
    assert m.overall.error_rate == pytest.approx(4 / 3)
    assert m.class_wise["dog_bark"].f1 == pytest.approx(2 / 3)
    assert m.class_wise["gun_shot"].recall == 0.0


def test_matching_is_one_to_one_and_maximal() -> None:
    # Two estimates could both pair with the first reference; a greedy choice would leave the
    # second reference unmatched, the maximum matching pairs both.
    ref = [Event("dog_bark", 1.0, 2.0), Event("dog_bark", 1.6, 2.0)]
    est = [Event("dog_bark", 1.3, 2.0), Event("dog_bark", 0.9, 1.0)]
    m = EventBasedMetrics(LABELS)
    m.evaluate(ref, est)
    assert m.overall.tp == 2


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="not in"):
        EventBasedMetrics(LABELS).evaluate([Event("cat", 0, 1)], [])


@pytest.mark.parametrize("collar", [0.25, 0.5, 1.0])
def test_equals_sed_eval_on_random_grid(collar: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sed_eval = pytest.importorskip("sed_eval", reason="sed_eval (dev extra) not installed")
    rng = np.random.default_rng(int(collar * 100))
    ours = EventBasedMetrics(LABELS, t_collar_s=collar)
    theirs = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=list(LABELS), t_collar=collar, evaluate_onset=True, evaluate_offset=False
    )
    for stream in range(40):
        ref = _random_events(rng, int(rng.integers(0, 12)), 60.0)
        est = _jitter(rng, ref)
        ours.evaluate(ref, est)

        def as_list(events: list[Event], stream: int = stream) -> list[dict]:
            return [
                {
                    "file": f"s{stream}",
                    "event_label": e.label,
                    "onset": e.onset_s,
                    "offset": e.offset_s,
                }
                for e in events
            ]

        theirs.evaluate(as_list(ref), as_list(est))
    expected = theirs.results()
    _close(ours.overall.f1, expected["overall"]["f_measure"]["f_measure"])
    _close(ours.overall.error_rate, expected["overall"]["error_rate"]["error_rate"])
    _close(
        ours.overall.subs / ours.overall.n_ref,
        expected["overall"]["error_rate"]["substitution_rate"],
    )
    for label in LABELS:
        got, want = ours.class_wise[label], expected["class_wise"][label]
        _close(got.f1, want["f_measure"]["f_measure"])
        _close(got.recall, want["f_measure"]["recall"])
        _close(got.error_rate, want["error_rate"]["error_rate"])


def _close(a: float, b: float) -> None:
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)
