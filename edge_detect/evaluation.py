"""Event-based sound event detection metrics (onset collar), as sed_eval computes them.

An estimated event is a hit of a reference event when both have the same label and their onsets
differ by at most ``t_collar_s`` (offsets are not evaluated: an alert's end is not what a user
waits for). Hits are paired one to one by a maximum bipartite matching, per stream.

Per class: ``precision = TP / Nsys``, ``recall = TP / Nref``, ``F1 = 2 TP / (Nref + Nsys)``,
``error rate = (FN + FP) / Nref``. Overall, a leftover reference and a leftover estimate whose
onsets agree but whose labels differ count as one substitution (greedily, as sed_eval does):
``ER = (S + D + I) / Nref`` with ``D = Nref - TP - S`` and ``I = Nsys - TP - S``.

The results equal ``sed_eval.sound_event.EventBasedMetrics(t_collar=..., evaluate_onset=True,
evaluate_offset=False)``; ``tests/test_evaluation.py`` checks that on a grid of random inputs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["ClassCounts", "Event", "EventBasedMetrics"]

DEFAULT_COLLAR_S = 0.5


@dataclass(frozen=True)
class Event:
    """One event of one class on a stream's time axis (seconds from the stream's start)."""

    label: str
    onset_s: float
    offset_s: float


@dataclass
class ClassCounts:
    """Counts of one class (or overall) accumulated over streams."""

    n_ref: int = 0
    n_sys: int = 0
    tp: int = 0
    subs: int = 0

    @property
    def fn(self) -> int:
        """Reference events not found (misses), substitutions excluded."""
        return self.n_ref - self.tp - self.subs

    @property
    def fp(self) -> int:
        """Estimated events that match no reference (false alarms), substitutions excluded."""
        return self.n_sys - self.tp - self.subs

    @property
    def precision(self) -> float:
        """TP / Nsys (NaN without estimates)."""
        return self.tp / self.n_sys if self.n_sys else math.nan

    @property
    def recall(self) -> float:
        """TP / Nref (NaN without references)."""
        return self.tp / self.n_ref if self.n_ref else math.nan

    @property
    def f1(self) -> float:
        """2 TP / (Nref + Nsys) (NaN when both are 0)."""
        total = self.n_ref + self.n_sys
        return 2 * self.tp / total if total else math.nan

    @property
    def error_rate(self) -> float:
        """(S + FN + FP) / Nref (NaN without references)."""
        return (self.subs + self.fn + self.fp) / self.n_ref if self.n_ref else math.nan

    def as_dict(self) -> dict[str, float]:
        """Counts and rates by name (sed_eval's keys)."""
        return {
            "n_ref": self.n_ref,
            "n_sys": self.n_sys,
            "tp": self.tp,
            "fn": self.fn,
            "fp": self.fp,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "error_rate": self.error_rate,
        }


def _max_matching(edges: dict[int, list[int]]) -> dict[int, int]:
    """Maximum bipartite matching (augmenting paths); ``edges[est] = [ref, ...]``.

    Returns {ref: est}.
    """
    ref_to_est: dict[int, int] = {}

    def augment(est: int, seen: set[int]) -> bool:
        for ref in edges[est]:
            if ref in seen:
                continue
            seen.add(ref)
            if ref not in ref_to_est or augment(ref_to_est[ref], seen):
                ref_to_est[ref] = est
                return True
        return False

    for est in sorted(edges):
        augment(est, set())
    return ref_to_est


@dataclass
class EventBasedMetrics:
    """Accumulates event-based counts over streams; call :meth:`evaluate` once per stream."""

    labels: Sequence[str]
    t_collar_s: float = DEFAULT_COLLAR_S
    overall: ClassCounts = field(default_factory=ClassCounts)
    class_wise: dict[str, ClassCounts] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label in self.labels:
            self.class_wise.setdefault(label, ClassCounts())

    def _onset_ok(self, ref: Event, est: Event) -> bool:
        return abs(ref.onset_s - est.onset_s) <= self.t_collar_s

    def evaluate(self, reference: Iterable[Event], estimated: Iterable[Event]) -> None:
        """Add one stream's reference and estimated events."""
        refs = list(reference)
        ests = list(estimated)
        unknown = {e.label for e in refs + ests} - set(self.labels)
        if unknown:
            raise ValueError(f"events with labels {sorted(unknown)} not in {list(self.labels)}")
        edges: dict[int, list[int]] = {}
        for i, est in enumerate(ests):
            hits = [
                j
                for j, ref in enumerate(refs)
                if ref.label == est.label and self._onset_ok(ref, est)
            ]
            if hits:
                edges[i] = hits
        matching = _max_matching(edges)
        ref_hit = set(matching)
        est_hit = set(matching.values())
        subs = 0
        est_counted: set[int] = set()
        est_left = [i for i in range(len(ests)) if i not in est_hit]
        for j in (j for j in range(len(refs)) if j not in ref_hit):
            for i in est_left:
                if i not in est_counted and self._onset_ok(refs[j], ests[i]):
                    est_counted.add(i)
                    subs += 1
                    break
        self.overall.n_ref += len(refs)
        self.overall.n_sys += len(ests)
        self.overall.tp += len(matching)
        self.overall.subs += subs
        for label in self.labels:
            counts = self.class_wise[label]
            counts.n_ref += sum(ref.label == label for ref in refs)
            counts.n_sys += sum(est.label == label for est in ests)
            counts.tp += sum(refs[j].label == label for j in matching)
