"""Does the novelty output reject sounds the model was never taught? (issue 14, BENCHMARKS.md 2)

A model trained with the cluster-centroid method exports, beside its class probabilities, the
distance of each frame's embedding to the nearest event-class centroid (``novelty``, see
:data:`edge_detect.model.NOVELTY_OUTPUT`). This measures whether that distance separates the
events a class's threshold lets through from the background clips it also lets through (the
false alarms), beyond what the class score itself already says.

Each clip of a manifest is run through the runtime (:class:`edge_detect.model.StreamingModel`,
from a fresh state); for each event class its peak score and the novelty at that frame are kept.
At the model's own ``threshold_on`` per class, two gates are set on the **validation** manifest,
each keeping ``--keep`` (95%) of the validation events that pass the threshold:

- the novelty gate: reject a passing clip whose novelty is above the validation events' 95th
  percentile;
- the score gate (what any model can do): reject a passing clip whose score is below the
  validation events' 5th percentile (a higher threshold).

On the **test** manifest (nothing chosen there) the table shows, per class, the passing events
and background clips, and the share of each that every gate keeps, with the ROC AUC of novelty
(passing background vs passing events; 0.5 = no information). A gate helps when it drops more
background than the score gate at the same kept share of events.

Usage::

    python bench/novelty.py --model runs/cluster_default/model.onnx \\
        --val runs/openworld/cluster_default/trained_on/val.csv \\
        --test runs/openworld/cluster_default/unseen/test.csv \\
        --json bench/results/novelty_cluster_default.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from edge_detect.errors import EdgeDetectError  # noqa: E402
from edge_detect.features import log_mel  # noqa: E402
from edge_detect.model import StreamingModel, load_model  # noqa: E402
from edge_detect.streams import BACKGROUND, load_clip, read_manifests  # noqa: E402
from train.evaluate import auc  # noqa: E402

KEEP = 0.95
"""Share of the validation events passing the threshold that each gate keeps."""


def clip_peaks(model: StreamingModel, manifest: Path) -> dict[str, Any]:
    """Per clip of ``manifest``: its label and kind, and per event class the peak score and the
    novelty at that frame (``scores``/``novelty`` arrays of shape (clips, classes))."""
    if not model.has_novelty:
        raise EdgeDetectError(
            f"model {model.path} has no novelty output; export a checkpoint trained with "
            "optim.method = 'cluster' (a centroid head)"
        )
    rows = read_manifests([manifest])
    rate = model.feature_config.sample_rate_hz
    scores = np.zeros((len(rows), model.num_classes), dtype=np.float32)
    novelty = np.zeros_like(scores)
    for i, row in enumerate(rows):
        clip = load_clip(row.path, row.label, rate, row.source)
        model.reset()
        frame_scores = model.step(log_mel(clip.samples, model.feature_config))
        assert model.last_novelty is not None
        if len(frame_scores) == 0:  # shorter than one window: never alerts
            novelty[i] = np.nan
            continue
        peak = frame_scores.argmax(0)  # (classes,)
        scores[i] = frame_scores[peak, np.arange(model.num_classes)]
        novelty[i] = model.last_novelty[peak]
    return {
        "labels": [row.label for row in rows],
        "kinds": [row.source for row in rows],
        "scores": scores,
        "novelty": novelty,
    }


def _auc(high: npt.ArrayLike, low: npt.ArrayLike) -> float | None:
    """P(a value of ``high`` > a value of ``low``), ties half (ROC AUC); None if one is empty."""
    a, b = np.asarray(high, dtype=float), np.asarray(low, dtype=float)
    value = auc(np.concatenate([a, b]), np.arange(a.size + b.size) < a.size)
    return None if np.isnan(value) else value


def gate_report(
    threshold: float,
    val_events: tuple[npt.ArrayLike, npt.ArrayLike],
    test_events: tuple[npt.ArrayLike, npt.ArrayLike],
    test_background: tuple[npt.ArrayLike, npt.ArrayLike],
    keep: float = KEEP,
) -> dict[str, Any]:
    """One class: gates set on the validation events, applied to test events and background.

    Each pair is (peak scores, novelty at the peak) of some clips. Only clips whose score
    reaches ``threshold`` (the model's alert threshold) count: the others never alert.
    """

    def passing(pair: tuple[npt.ArrayLike, npt.ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
        score, nov = (np.asarray(x, dtype=float) for x in pair)
        chosen = score >= threshold
        return score[chosen], nov[chosen]

    val_score, val_nov = passing(val_events)
    ev_score, ev_nov = passing(test_events)
    bg_score, bg_nov = passing(test_background)
    out: dict[str, Any] = {
        "threshold": float(threshold),
        "val_events_passing": int(val_score.size),
        "test_events_passing": int(ev_score.size),
        "test_background_passing": int(bg_score.size),
        "novelty_auc": _auc(bg_nov, ev_nov),
        "keep": keep,
    }
    if val_score.size == 0:
        out.update(novelty_gate=None, score_gate=None)
        return out
    gates = {
        "novelty_gate": (float(np.quantile(val_nov, keep)), ev_nov, bg_nov, np.less_equal),
        "score_gate": (
            float(np.quantile(val_score, 1 - keep)),
            ev_score,
            bg_score,
            np.greater_equal,
        ),
    }
    for name, (limit, events, background, kept) in gates.items():
        out[name] = {
            "limit": round(limit, 4),
            "events_kept": float(kept(events, limit).mean()) if events.size else None,
            "background_kept": float(kept(background, limit).mean()) if background.size else None,
        }
    return out


def evaluate(model_path: Path, val: Path, test: Path, keep: float = KEEP) -> dict[str, Any]:
    """The whole comparison for one model: per event class, :func:`gate_report`."""
    started = time.monotonic()
    model = load_model(model_path)
    peaks = {"val": clip_peaks(model, val), "test": clip_peaks(model, test)}
    classes: dict[str, Any] = {}

    def pair(part: str, of: str, c: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = np.asarray(peaks[part]["labels"]) == of
        return peaks[part]["scores"][chosen, c], peaks[part]["novelty"][chosen, c]

    for c, label in enumerate(model.labels):
        if label == BACKGROUND:
            continue
        classes[label] = gate_report(
            model.detection[label].threshold_on,
            pair("val", label, c),
            pair("test", label, c),
            pair("test", BACKGROUND, c),
            keep,
        )
    test_labels = peaks["test"]["labels"]
    return {
        "model": model.model_id,
        "val_manifest": str(val),
        "test_manifest": str(test),
        "test_clips": {label: test_labels.count(label) for label in sorted(set(test_labels))},
        "classes": classes,
        "wall_time_s": round(time.monotonic() - started, 1),
    }


def format_table(result: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.0f}%"

    lines = [
        f"{result['model']}: test clips {result['test_clips']}",
        "",
        "| class | threshold | passing: events / background | novelty AUC | novelty gate: "
        "events / background kept | score gate: events / background kept |",
        "|---|---:|---|---:|---|---|",
    ]
    for label, row in result["classes"].items():
        gates = []
        for name in ("novelty_gate", "score_gate"):
            gate = row[name]
            gates.append(
                "-"
                if gate is None
                else f"{pct(gate['events_kept'])} / {pct(gate['background_kept'])}"
                f" (limit {gate['limit']:.3f})"
            )
        auc = "-" if row["novelty_auc"] is None else f"{row['novelty_auc']:.2f}"
        lines.append(
            f"| {label} | {row['threshold']:.2f} | {row['test_events_passing']} / "
            f"{row['test_background_passing']} | {auc} | {gates[0]} | {gates[1]} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", type=Path, required=True, help="ONNX model with novelty")
    parser.add_argument("--val", type=Path, required=True, help="validation manifest (gates)")
    parser.add_argument("--test", type=Path, required=True, help="test manifest (figures)")
    parser.add_argument("--keep", type=float, default=KEEP, help="validation events kept")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if not 0 < args.keep <= 1:
        parser.error(f"--keep must be in (0, 1], got {args.keep}")
    try:
        result = evaluate(args.model, args.val, args.test, args.keep)
    except EdgeDetectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
