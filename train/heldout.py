"""After ``edge-detect train --data``: export the model and measure it as the device will run it.

Clip-level validation errors say how well single clips are told apart; a user wants to know how
many of their sounds raise an alert and how often the background does. So the chosen checkpoint
is exported (:func:`export.onnx_export.export_checkpoint`, parity-checked) to ``<run>/model.onnx``
and ``edge-detect eval stream`` runs it over the held-out test clips mixed into long streams of
the held-out background (``<run>/split/test.csv``, written by ``edge-detect data split``'s
:func:`train.data_cli.write_split`). Its table lands in ``<run>/heldout_stream.txt`` and its
figures in ``<run>/heldout_stream.json``.

False alarms per hour need background recordings of one's own: without held-out background clips
only the export happens, and the summary says why nothing was measured.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from train.config import TrainConfig

__all__ = ["HELDOUT_BACKGROUND_MINUTES", "export_and_measure", "stream_figures"]

log = logging.getLogger(__name__)

HELDOUT_BACKGROUND_MINUTES = 30.0
"""Length of the event-free stream for false alarms per hour (the held-out background repeats
as often as needed; the table says how many distinct minutes there were)."""


def stream_figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an ``eval stream`` JSON, per class: hits of events at each
    event-to-background ratio, false alarms per hour and the median onset-to-alert latency."""
    out: dict[str, Any] = {
        "event_free_hours": summary["event_free_hours"],
        "distinct_background_minutes": summary["background_distinct_minutes"],
    }
    classes: dict[str, Any] = {}
    for stream in summary["streams"]:
        for label, row in stream["per_class"].items():
            entry = classes.setdefault(label, {"detected": {}, "latency_s": {}})
            ratio = f"{stream['ratio_db']:+g} dB"
            entry["detected"][ratio] = f"{row['hits']}/{row['events']}"
            entry["latency_s"][ratio] = row["onset_to_alert_median_s"]
    for label, row in summary["false_alarms"].items():
        classes.setdefault(label, {})["false_alarms_per_hour"] = row["per_hour"]
    out["per_class"] = classes
    return out


def export_and_measure(config: TrainConfig, checkpoint: Path, run_dir: Path) -> dict[str, Any]:
    """Export ``checkpoint`` to ``run_dir/model.onnx`` and run ``eval stream`` on the held-out
    test clips; returns the summary entries (paths and figures, or why none were measured)."""
    from edge_detect.cli import main as cli_main
    from export.onnx_export import export_checkpoint
    from train.data_cli import write_split

    model_path, report, _ = export_checkpoint(checkpoint, run_dir / "model.onnx")
    log.info("exported %s\n%s", model_path, report.format())
    out: dict[str, Any] = {"model": str(model_path)}
    split_dir = run_dir / "split"
    counts = write_split(config, split_dir)
    test_csv = split_dir / "test.csv"
    labels = _labels_in(test_csv)
    background = config.data.background_label
    events = sorted(labels - {background})
    if not events or background not in labels:
        missing = "event" if not events else f"'{background}'"
        out["heldout_stream"] = (
            f"not measured: the held-out test part ({counts['test']} clips) has no {missing} "
            "clips; alerts and false alarms per hour need held-out recordings of both (add "
            f"recordings of the place to DIR/{background}/)"
        )
        log.warning("held-out figures %s", out["heldout_stream"])
        return out
    json_path = run_dir / "heldout_stream.json"
    argv = [
        "--quiet",
        "eval",
        "stream",
        "--model",
        str(model_path),
        "--manifest",
        str(test_csv),
        "--background-minutes",
        str(HELDOUT_BACKGROUND_MINUTES),
        "--json",
        str(json_path),
    ]
    table = io.StringIO()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # the CLI sets up logging afresh
    try:
        with contextlib.redirect_stdout(table):
            code = cli_main(argv)
    finally:
        root.handlers[:], root.level = handlers, level
    (run_dir / "heldout_stream.txt").write_text(table.getvalue(), encoding="utf-8")
    if code != 0:
        out["heldout_stream"] = f"not measured: 'edge-detect {' '.join(argv)}' exited {code}"
        return out
    log.info("held-out clips through the runtime path:\n%s", table.getvalue().rstrip())
    out["heldout_stream"] = stream_figures(json.loads(json_path.read_text(encoding="utf-8")))
    out["heldout_stream_table"] = str(run_dir / "heldout_stream.txt")
    return out


def _labels_in(manifest: Path) -> set[str]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        return {row["label"] for row in csv.DictReader(handle)}
