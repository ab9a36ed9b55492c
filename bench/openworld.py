"""The open-world evaluation of a trained checkpoint (BENCHMARKS.md section 2), as one command.

What a user lives with is a detector on an endless stream of sounds it mostly never heard. For
one checkpoint this runs, with the project's own commands (so every figure is reproducible from
them):

1. ``edge-detect export``: the checkpoint as the streaming ONNX model;
2. ``edge-detect data split``: the checkpoint's own train/val/test manifests;
3. ``edge-detect calibrate`` on the *validation* part: per-class settings for
   ``--target-fa-per-hour`` on every distinct validation background clip once;
4. ``edge-detect eval stream`` on the *test* part (never used to choose anything): events at
   ``--snr-db`` ratios, false alarms per hour on every distinct test background clip once, per
   kind of sound too, the miss-vs-false-alarm curves;

and prints the figures against the aims of BENCHMARKS.md section 2 (per class: at most 1 false
alarm per hour, at most 25% of events not detected at +6 dB and 40% at 0 dB, event F1 >= 0.7 at
+6 dB, no kind of sound above 5 false alarms per hour; onset-to-alert median <= 300 ms for
dog_bark and gun_shot, <= 1 s for baby_cry). ``--table FILE...`` prints earlier results side by
side (the "what helped" table); ``--second-stage`` prints what a second-stage verifier could
make of each first stage (:func:`second_stage_bound`).

Usage::

    python bench/openworld.py runs/e2_openworld/checkpoint.pt --name e2_openworld \\
        --json bench/results/openworld_e2_openworld.json
    # a finished model at its own settings, on the test clips it never trained on:
    python bench/openworld.py --shipped edge_detect/assets/default_model.onnx --name bundled_v01 \\
        --split-config train/configs/experiments/e2c_tempered.toml \\
        --trained-on train/configs/default.toml --json bench/results/openworld_bundled_v01.json

Writes the model files, the split and the raw JSON of both commands under ``--work``
(``runs/openworld/<name>``); the summary JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
BACKGROUND = "background"
AIM_FALSE_ALARMS_PER_HOUR = 1.0
AIM_MISS_RATE = {"+6": 0.25, "0": 0.40}
AIM_F1_PLUS_6 = 0.7
AIM_SOURCE_FALSE_ALARMS_PER_HOUR = 5.0
AIM_LATENCY_S = {"dog_bark": 0.3, "gun_shot": 0.3, "baby_cry": 1.0}
"""BENCHMARKS.md section 2's aims now (and section 3's onset-to-alert latency)."""
VERIFIER_KEEPS_EVENTS = 0.97
VERIFIER_DROPS_FALSE_ALARMS = 0.95
"""What commercial second stages report (issue 13: Alexa Guard, Sensory SoundID): of the first
stage's alerts they keep 97% of the events and drop 95% of the false alarms."""


def _run(args: list[str]) -> None:
    """One project command; its output goes to this process's stderr, a failure stops here."""
    print("$ " + " ".join(args), file=sys.stderr, flush=True)
    result = subprocess.run(args, cwd=CHECKOUT, stdout=sys.stderr, stderr=sys.stderr)
    if result.returncode != 0:
        raise SystemExit(f"command failed ({result.returncode}): {' '.join(args)}")


def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """Export, split, calibrate on validation, evaluate on test; the summary."""
    work = args.work / args.name
    work.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "edge_detect"]
    model, calibrated = work / "model.onnx", work / "model_calibrated.onnx"
    started = time.monotonic()
    if not model.is_file() or args.redo:
        _run([*exe, "export", str(args.checkpoint), "-o", str(model), "--name", args.name])
    split = work / "split"
    if not (split / "test.csv").is_file() or args.redo:
        _run([*exe, "data", "split", "--config", str(args.checkpoint), "--out", str(split)])
    calibration = work / "calibration.json"
    _run(
        [
            *exe, "calibrate", "--model", str(model), "--manifest", str(split / "val.csv"),
            "--target-fa-per-hour", str(args.target_fa_per_hour), "--snr-db", "-6", "0", "6",
            "--seed", "0", "--out", str(calibrated), "--force", "--json", str(calibration),
        ]
    )  # fmt: skip
    test = _test_stream(calibrated, split / "test.csv", work)
    summary = summarise(test, json.loads(calibration.read_text()))
    summary.update(
        name=args.name,
        checkpoint=_relative(args.checkpoint),
        target_fa_per_hour=args.target_fa_per_hour,
        wall_time_s=round(time.monotonic() - started, 1),
        files=_relative(work),
    )
    return summary


def _test_stream(model: Path, manifest: Path, work: Path) -> dict[str, Any]:
    """``edge-detect eval stream`` of ``model`` on ``manifest`` (JSON and plot under ``work``)."""
    test = work / "test_stream.json"
    _run(
        [
            sys.executable, "-m", "edge_detect", "eval", "stream", "--model", str(model),
            "--manifest", str(manifest), "--snr-db", "-6", "0", "6", "--seed", "0",
            "--json", str(test), "--plot", str(work / "test_stream.png"),
        ]
    )  # fmt: skip
    return json.loads(test.read_text())


def evaluate_shipped(args: argparse.Namespace) -> dict[str, Any]:
    """A finished ONNX model at its own settings on ``--split-config``'s test part, less every
    clip the model trained on (``--trained-on``'s train part): the bundled model's figures."""
    work = args.work / args.name
    work.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "edge_detect"]
    started = time.monotonic()
    split, own = work / "split", work / "trained_on"
    _run([*exe, "data", "split", "--config", str(args.split_config), "--out", str(split)])
    _run([*exe, "data", "split", "--config", str(args.trained_on), "--out", str(own)])
    unseen = work / "unseen"
    left_out = _without(split / "test.csv", own / "train.csv", unseen / "test.csv")
    print(f"test: {left_out} clip(s) the model trained on left out", file=sys.stderr)
    summary = summarise(_test_stream(args.shipped, unseen / "test.csv", work), None)
    summary.update(
        name=args.name,
        model=_relative(args.shipped),
        split_config=_relative(args.split_config),
        trained_on=_relative(args.trained_on),
        test_clips_left_out=left_out,
        wall_time_s=round(time.monotonic() - started, 1),
        files=_relative(work),
    )
    return summary


def _without(manifest: Path, trained: Path, out: Path) -> int:
    """Write ``manifest`` less the rows whose audio file ``trained`` lists; how many left out.

    Paths in a manifest are relative to its folder, so rows are compared by resolved path and
    ``out`` is written with absolute paths.
    """

    def rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return list(reader.fieldnames or []), list(reader)

    def resolved(path: Path, row: dict[str, str]) -> str:
        return str((path.parent / row["path"]).resolve())

    seen = {resolved(trained, row) for row in rows(trained)[1]}
    fields, test_rows = rows(manifest)
    keep = [
        {**row, "path": resolved(manifest, row)}
        for row in test_rows
        if resolved(manifest, row) not in seen
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)
    return len(test_rows) - len(keep)


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(CHECKOUT))
    except ValueError:
        return str(path)


def summarise(test: dict[str, Any], calibration: dict[str, Any] | None) -> dict[str, Any]:
    """Per class: the test figures the aims name, and whether each aim holds.

    ``calibration`` is None for a model evaluated at the settings it ships with.
    """
    by_ratio = {str(float(s["ratio_db"])): s for s in test["streams"]}
    classes: dict[str, Any] = {}
    for label, fa in test["false_alarms"].items():
        calibrated = (calibration or {}).get("classes", {}).get(label, {})
        row: dict[str, Any] = {
            "false_alarms_per_hour": fa["per_hour"],
            "setting": calibrated.get("setting"),
            "val_false_alarms_per_hour": calibrated.get("val_false_alarms_per_hour"),
        }
        for ratio, stream in by_ratio.items():
            cell = stream["per_class"][label]
            key = f"{float(ratio):+g}".replace("+0", "0")
            row[f"miss_rate_{key}"] = cell["miss_rate"]
            row[f"f1_{key}"] = cell["f1"]
            row[f"latency_s_{key}"] = cell["onset_to_alert_median_s"]
            row["events"] = cell["events"]
        worst = max(
            (
                (src["per_class"][label]["per_hour"] or 0.0, name)
                for name, src in test["false_alarms_by_source"].items()
            ),
            default=(0.0, "-"),
        )
        row["worst_source"] = {"kind": worst[1], "per_hour": worst[0]}
        row["aims"] = _aims(label, row)
        curve = test.get("curves", {}).get(label)
        row["second_stage"] = second_stage_bound(curve["points"]) if curve else None
        classes[label] = row
    return {
        "event_free_hours": test["event_free_hours"],
        "background_distinct_minutes": test["background_distinct_minutes"],
        "val_background_distinct_minutes": (calibration or {}).get("background_distinct_minutes"),
        "classes": classes,
        "false_alarms_by_source": test["false_alarms_by_source"],
        "overall_f1": {str(s["ratio_db"]): s["overall_f1"] for s in test["streams"]},
    }


def _aims(label: str, row: dict[str, Any]) -> dict[str, bool]:
    def at_most(value: Any, limit: float) -> bool:
        return value is not None and value <= limit

    latency = row.get("latency_s_+6")
    return {
        "false_alarms": at_most(row["false_alarms_per_hour"], AIM_FALSE_ALARMS_PER_HOUR),
        "miss_+6": at_most(row.get("miss_rate_+6"), AIM_MISS_RATE["+6"]),
        "miss_0": at_most(row.get("miss_rate_0"), AIM_MISS_RATE["0"]),
        "f1_+6": row.get("f1_+6") is not None and row["f1_+6"] >= AIM_F1_PLUS_6,
        "sources": row["worst_source"]["per_hour"] <= AIM_SOURCE_FALSE_ALARMS_PER_HOUR,
        "latency": at_most(latency, AIM_LATENCY_S.get(label, 1.0)),
    }


def _lowest_candidates(points: list[dict[str, Any]], keeps: float) -> dict[str, Any] | None:
    """The curve point with the fewest alerts per hour whose misses, once a second stage keeps
    ``keeps`` of the events found, still meet the miss aims; None when no point does."""
    best: dict[str, Any] | None = None
    streams = {"+6": "6.0", "0": "0.0"}  # aim key -> the curve's stream key
    for point in points:
        found = {key: point["miss_rate"].get(stream) for key, stream in streams.items()}
        if any(rate is None for rate in found.values()):
            continue  # no events at that ratio: the point says nothing
        miss = {key: 1.0 - (1.0 - rate) * keeps for key, rate in found.items()}
        if any(rate > AIM_MISS_RATE[key] for key, rate in miss.items()):
            continue
        if best is None or point["false_alarms_per_hour"] < best["candidates_per_hour"]:
            best = {
                "threshold_on": point["threshold_on"],
                "candidates_per_hour": point["false_alarms_per_hour"],
                "miss_rate_+6": round(miss["+6"], 4),
                "miss_rate_0": round(miss["0"], 4),
            }
    return best


def second_stage_bound(points: list[dict[str, Any]]) -> dict[str, Any]:
    """What a second-stage verifier could make of a first stage, from its operating curve.

    A verifier only ever drops alerts, so the first stage must already find the events: its
    threshold can be no higher than where the curve still meets the miss aims (+6 and 0 dB).
    ``perfect``: a verifier that keeps every event; the false alarms per hour there are the
    candidates it must thin to :data:`AIM_FALSE_ALARMS_PER_HOUR`, ``must_drop`` the share of
    them. ``commercial``: a verifier at the rate commercial ones report
    (:data:`VERIFIER_KEEPS_EVENTS`, :data:`VERIFIER_DROPS_FALSE_ALARMS`), the false alarms per
    hour and misses it would leave. Either is None when no threshold meets the miss aims.
    """
    perfect = _lowest_candidates(points, 1.0)
    if perfect is not None:
        candidates = perfect["candidates_per_hour"]
        perfect["must_drop"] = (
            round(max(0.0, 1.0 - AIM_FALSE_ALARMS_PER_HOUR / candidates), 4) if candidates else 0.0
        )
    commercial = _lowest_candidates(points, VERIFIER_KEEPS_EVENTS)
    if commercial is not None:
        left = commercial["candidates_per_hour"] * (1.0 - VERIFIER_DROPS_FALSE_ALARMS)
        commercial["false_alarms_per_hour"] = round(left, 3)
    return {"perfect": perfect, "commercial": commercial}


def format_second_stage(summaries: list[dict[str, Any]]) -> str:
    """Markdown: per result and class, what a second stage could make of the first stage."""
    lines = [
        "| run | class | events +6 dB | first stage: fewest alerts per hour that meet the miss "
        "aims, at threshold | share a verifier must drop for 1 FA/h | at the commercial rate: "
        "FA/h, miss +6 / 0 dB |",
        "|---|---|---:|---|---:|---|",
    ]
    for summary in summaries:
        for label, row in summary["classes"].items():
            bound = row.get("second_stage")
            if bound is None:
                raise SystemExit(
                    f"{summary['name']}: no operating curves in this summary (written before "
                    "--second-stage existed); run the evaluation again to add them"
                )
            perfect, commercial = bound["perfect"], bound["commercial"]
            start = (
                "never (no threshold finds enough)"
                if perfect is None
                else f"{perfect['candidates_per_hour']:.0f} at {perfect['threshold_on']:g}"
            )
            drop = "-" if perfect is None else f"{100 * perfect['must_drop']:.1f}%"
            left = (
                "-"
                if commercial is None
                else f"{commercial['false_alarms_per_hour']:.1f}, "
                f"{commercial['miss_rate_+6']:.2f} / {commercial['miss_rate_0']:.2f}"
            )
            events = row.get("events", "-")
            lines.append(f"| {summary['name']} | {label} | {events} | {start} | {drop} | {left} |")
    return "\n".join(lines)


def format_table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: one row per result and class (the "what helped" table)."""

    def show(value: Any, spec: str = ".2f") -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "| run | class | FA/h | worst kind (FA/h) | miss +6 / 0 / -6 dB | F1 +6 dB | "
        "latency +6 dB s | aims met |",
        "|---|---|---:|---|---|---:|---:|---|",
    ]
    for summary in summaries:
        for label, row in summary["classes"].items():
            met = [name for name, ok in row["aims"].items() if ok]
            worst = row["worst_source"]
            lines.append(
                f"| {summary['name']} | {label} | {show(row['false_alarms_per_hour'])} | "
                f"{worst['kind']} ({show(worst['per_hour'], '.1f')}) | "
                f"{show(row.get('miss_rate_+6'))} / {show(row.get('miss_rate_0'))} / "
                f"{show(row.get('miss_rate_-6'))} | {show(row.get('f1_+6'))} | "
                f"{show(row.get('latency_s_+6'))} | {len(met)}/{len(row['aims'])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, nargs="?", help="trained checkpoint (.pt)")
    parser.add_argument("--name", help="name of the result (default: the run folder's name)")
    parser.add_argument(
        "--target-fa-per-hour",
        type=float,
        default=1.0,
        help="false alarms per hour per class that calibration allows on validation",
    )
    parser.add_argument(
        "--work", type=Path, default=CHECKOUT / "runs" / "openworld", help="where files go"
    )
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--redo", action="store_true", help="export and split again")
    parser.add_argument("--table", nargs="+", type=Path, help="only print these summaries")
    parser.add_argument(
        "--second-stage",
        action="store_true",
        help="with --table: what a second-stage verifier could make of each first stage",
    )
    parser.add_argument(
        "--shipped",
        type=Path,
        help="instead of a checkpoint: an ONNX model at its own settings (no calibration)",
    )
    parser.add_argument(
        "--split-config", type=Path, help="with --shipped: the config whose split gives the test"
    )
    parser.add_argument(
        "--trained-on",
        type=Path,
        help="with --shipped: the config (or checkpoint) the model trained on; its training "
        "clips are left out of the test",
    )
    args = parser.parse_args(argv)
    if args.table:
        summaries = [json.loads(p.read_text()) for p in args.table]
        print(format_second_stage(summaries) if args.second_stage else format_table(summaries))
        return 0
    if args.shipped is not None:
        if args.split_config is None or args.trained_on is None:
            parser.error("--shipped needs --split-config and --trained-on")
        args.name = args.name or args.shipped.stem
        summary = evaluate_shipped(args)
    elif args.checkpoint is None:
        parser.error("give a checkpoint, --shipped MODEL, or --table with summary files")
    else:
        args.name = args.name or args.checkpoint.resolve().parent.name
        summary = evaluate_checkpoint(args)
    print(format_table([summary]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
