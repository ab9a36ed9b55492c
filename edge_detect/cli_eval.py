"""``edge-detect eval clips``: how a model does on labeled clips, through the runtime's own path.

Each clip of a manifest (CSV with columns ``path,label``; paths relative to the manifest's
folder) is run through exactly what ``edge-detect run`` runs (:func:`build_pipeline` over a file
source, as fast as possible). The clip's predicted class is the class of its highest-scoring
alert, or ``background`` when nothing alerted. Labels the model does not know count as
``background`` and the report says which were mapped so.

Per class: clips, errors (clips of the class predicted as something else: a missed or confused
event; for ``background``, a false alert) and false alerts (clips of other classes predicted as
this class).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_detect.audio import Audio, read_wav
from edge_detect.cli_run import add_model_argument, build_pipeline
from edge_detect.config import RuntimeConfig, load_config
from edge_detect.errors import AudioError, DatasetError, MissingExtraError
from edge_detect.model import StreamingModel, load_model
from edge_detect.sources import WavFileSource

__all__ = ["ClipResult", "evaluate_clips", "read_manifest", "register"]

log = logging.getLogger(__name__)

BACKGROUND = "background"


@dataclass(frozen=True)
class ClipResult:
    path: str
    label: str
    """The manifest's label."""
    truth: str
    """The label as the model's classes see it (unknown labels -> background)."""
    predicted: str
    score: float
    """Peak score of the winning alert (0 when nothing alerted)."""
    alerts: int


def read_manifest(path: str | Path) -> list[tuple[Path, str]]:
    """(audio path, label) rows of a ``path,label`` CSV; paths relative to its folder."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            if "path" not in fields or "label" not in fields:
                raise DatasetError(
                    f"manifest {path} needs columns 'path' and 'label'; its header is {fields}"
                )
            rows = [(path.parent / row["path"], row["label"].strip()) for row in reader]
    except OSError as exc:
        raise DatasetError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    if not rows:
        raise DatasetError(f"manifest {path} lists no clips")
    empty = [str(p) for p, label in rows if not label]
    if empty:
        raise DatasetError(f"manifest {path}: clip(s) without a label: {empty[:3]}")
    return rows


def read_audio(path: Path) -> Audio:
    """A WAV with the runtime's reader; other formats (FLAC, OGG) through soundfile."""
    if path.suffix.lower() == ".wav":
        return read_wav(path)
    try:
        import soundfile
    except (ImportError, OSError):
        raise MissingExtraError("soundfile", "train", f"reading {path.suffix} audio") from None
    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=False)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise AudioError(f"cannot read audio file {path}: {exc}") from None
    if len(samples) == 0:
        raise AudioError(f"{path}: holds no audio (0 samples)")
    return Audio(samples, int(rate))


def _evaluate_clip(
    model: StreamingModel, path: Path, label: str, known: set[str], config: RuntimeConfig
) -> ClipResult:
    source = WavFileSource(
        path,
        model.feature_config.sample_rate_hz,
        block_ms=config.block_ms,
        realtime=False,
        audio=read_audio(path),
    )
    pipeline = build_pipeline(config, model, [])
    pipeline.run(source)
    best = max(pipeline.emitted, key=lambda a: a.score, default=None)
    return ClipResult(
        path=str(path),
        label=label,
        truth=label if label in known else BACKGROUND,
        predicted=best.label if best else BACKGROUND,
        score=best.score if best else 0.0,
        alerts=len(pipeline.emitted),
    )


def evaluate_clips(
    model: StreamingModel, rows: list[tuple[Path, str]], config: RuntimeConfig
) -> tuple[list[ClipResult], dict[str, Any]]:
    """Run every clip through the runtime path; returns per-clip results and a summary."""
    known = set(model.labels)
    mapped = sorted({label for _, label in rows if label not in known})
    results = []
    # one 'started'/'stopping' per clip would drown the log; alerts stay visible with --debug
    pipeline_log = logging.getLogger("edge_detect.pipeline")
    previous_level = pipeline_log.level
    if pipeline_log.getEffectiveLevel() > logging.DEBUG:
        pipeline_log.setLevel(logging.WARNING)
    try:
        for path, label in rows:
            results.append(_evaluate_clip(model, path, label, known, config))
    finally:
        pipeline_log.setLevel(previous_level)
    classes = list(model.labels) if BACKGROUND in known else [*model.labels, BACKGROUND]
    per_class = {}
    for name in classes:
        own = [r for r in results if r.truth == name]
        errors = sum(r.predicted != name for r in own)
        false_alerts = sum(r.predicted == name and r.truth != name for r in results)
        per_class[name] = {
            "clips": len(own),
            "errors": errors,
            "error_rate": round(errors / len(own), 4) if own else None,
            "false_alerts": false_alerts,
        }
    correct = sum(r.predicted == r.truth for r in results)
    summary = {
        "model_id": model.model_id,
        "clips": len(results),
        "accuracy": round(correct / len(results), 4),
        "per_class": per_class,
        "mapped_to_background": mapped,
        "confusion": {
            truth: dict(Counter(r.predicted for r in results if r.truth == truth))
            for truth in classes
        },
    }
    return results, summary


def format_table(summary: dict[str, Any]) -> str:
    lines = [
        f"model {summary['model_id']}: {summary['clips']} clips, "
        f"accuracy {summary['accuracy']:.3f}",
        f"{'class':12} {'clips':>6} {'errors':>7} {'error':>7} {'false alerts':>13}",
    ]
    for name, row in summary["per_class"].items():
        rate = "-" if row["error_rate"] is None else f"{row['error_rate']:.3f}"
        lines.append(
            f"{name:12} {row['clips']:>6} {row['errors']:>7} {rate:>7} {row['false_alerts']:>13}"
        )
    if summary["mapped_to_background"]:
        lines.append(
            "labels the model does not know, counted as background: "
            + ", ".join(summary["mapped_to_background"])
        )
    return "\n".join(lines)


def eval_clips_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if getattr(args, "model", None):
        config = config.replace(model=args.model)
    model = load_model(config.model, threads=config.threads)
    rows = read_manifest(args.manifest)
    log.info("evaluating %s on %d clips", model.model_id, len(rows))
    results, summary = evaluate_clips(model, rows, config)
    print(format_table(summary))
    if args.json:
        payload = {**summary, "results": [asdict(r) for r in results]}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log.info("wrote %s", args.json)
    return 0


def register(subparsers: argparse._SubParsersAction, formatter: Any) -> None:
    evaluate = subparsers.add_parser(
        "eval", help="evaluate a model with the runtime's own code path", formatter_class=formatter
    )
    kinds = evaluate.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    clips = kinds.add_parser(
        "clips",
        help="per-clip top class and per-class error on a labeled manifest",
        description=__doc__,
        formatter_class=formatter,
    )
    add_model_argument(clips)
    clips.add_argument(
        "--manifest", required=True, help="CSV with columns path,label (paths relative to it)"
    )
    clips.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    clips.add_argument("--config", metavar="TOML", help="runtime config (detection overrides)")
    clips.set_defaults(func=eval_clips_command)
