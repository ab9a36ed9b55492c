"""The published comparison (BENCHMARKS.md section 1) as a command.

For every ratio and seed one training subset is drawn (paired seeds: every method trains on the
same clips with the same weight seed), every method is trained with the same network, epochs
and preset, and the best-on-validation model is scored on the fixed, group-split test set:
per-class error e_c = 1 - recall_c, overall error = mean of e_c (class-balanced) and the mean
weighted by the training ratio ("with the training skew"), per-class ROC-AUC. The relative
reduction against the baseline, (e_base - e_method) / e_base averaged over seeds, gets a 95%
bootstrap interval that resamples test *recordings* (groups), not clips.

Usage (the full protocol; a reduced one is --seeds 2 --epochs 8)::

    python bench/paper.py --preset train/configs/default.toml \\
        --ratios 6:1:2:16 2:2:1:26 --methods weighted_ce cluster ce logit_adjusted focal \\
        --seeds 5 --epochs 20 --out runs/paper

Prints a Markdown table on stdout; writes every run and results_<ratios>.json under --out.
``--arch cnn`` trains the clip-level CNN instead of the preset's network (model.kind; or use
``--preset train/configs/cnn.toml``, the CNN's own preset, with 1.5 s crops)::

    python bench/paper.py --preset train/configs/cnn.toml --arch cnn --ratios 6:1:2:16 \
        --seeds 3 --epochs 8 --out runs/paper_cnn
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

CHECKOUT = Path(__file__).resolve().parent.parent
BOOTSTRAP = 1000
log = logging.getLogger("bench.paper")


def _errors(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class error 1 - recall, shape (C,); NaN for a class absent from the sample."""
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        sel = targets == c
        if sel.any():
            out[c] = 1.0 - float((preds[sel] == c).mean())
    return out


def _run(preset: Path, ratio: list[int], method: str, seed: int, args: argparse.Namespace) -> Any:
    sys.path.insert(0, str(CHECKOUT))
    from train.config import load_config
    from train.trainer import train

    name = "-".join(map(str, ratio))
    overrides: dict[str, Any] = {
        "data": {"train_ratio": ratio, "subset_seed": seed},
        "optim": {
            "method": method,
            "seed": seed,
            "epochs": args.epochs,
            "embed_epochs": max(1, args.epochs // 3),
            "background_per_epoch": 0,
            "plot_every": args.epochs,
        },
    }
    if args.arch:
        overrides["model"] = {"kind": args.arch}
    config = load_config(preset, overrides)
    out = args.out / name / method / f"seed{seed}"
    if args.reuse and (out / "checkpoint.pt").is_file():
        reused = _reuse(out / "checkpoint.pt", config)
        if reused is not None:
            return reused
    return train(config, progress=False, out_dir=out)


def _reuse(path: Path, config: Any) -> Any:
    """The finished run at ``path`` scored again on the test set, if it used this config."""
    from train.checkpoint import load_checkpoint, model_from_checkpoint
    from train.config import TrainConfig
    from train.trainer import RunResult, clip_scores, evaluate_clips, load_dataset

    saved = load_checkpoint(path)
    # Through from_dict so that keys added since (with their defaults) do not count as changes.
    if TrainConfig.from_dict(saved["train_config"]).to_dict() != config.to_dict():
        log.info("%s was trained with another config: training again", path)
        return None
    model, _ = model_from_checkpoint(saved)
    data = load_dataset(config)
    test = data.parts["test"]
    metrics = dict(saved["metrics"])
    metrics["test"] = {"clip": evaluate_clips(model, test, config, data.labels)[0]}
    probs, _, _ = clip_scores(model, test, config)
    clips = [
        {
            "group": item.clip.group,
            "source": item.clip.source,
            "target": item.target,
            "pred": int(p.argmax()),
            "probs": [round(float(v), 5) for v in p],
        }
        for item, p in zip(test, probs, strict=True)
    ]
    log.info("reusing %s", path)
    return RunResult(path.parent, path, metrics, clips)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", type=Path, default=CHECKOUT / "train/configs/default.toml")
    parser.add_argument("--ratios", nargs="+", default=["6:1:2:16", "2:2:1:26"])
    parser.add_argument(
        "--methods", nargs="+", default=["weighted_ce", "cluster", "ce", "logit_adjusted", "focal"]
    )
    parser.add_argument("--baseline", default="weighted_ce")
    parser.add_argument(
        "--arch",
        choices=["lstm", "cnn"],
        default=None,
        help="network (model.kind); default: the preset's",
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=CHECKOUT / "runs" / "paper")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score finished runs of the same config in --out instead of training them again "
        "(to add seeds or methods to an earlier comparison)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("train.trainer").setLevel(logging.WARNING)
    if args.baseline not in args.methods:
        parser.error(f"--baseline {args.baseline} must be one of --methods")
    started = time.monotonic()
    sys.path.insert(0, str(CHECKOUT))
    from train.config import load_config

    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "arch": args.arch or load_config(args.preset).model.kind,
        "ratios": {},
    }
    labels: list[str] = []
    for ratio_text in args.ratios:
        ratio = [int(x) for x in ratio_text.split(":")]
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
        for seed in range(args.seeds):
            for method in args.methods:
                t0 = time.monotonic()
                result = _run(args.preset, ratio, method, seed, args)
                labels = list(result.metrics["val"]["clip"]["per_class_error"])
                test = result.metrics["test"]["clip"]
                runs[method].append(
                    {
                        "seed": seed,
                        "test_per_class_error": test["per_class_error"],
                        "test_auc": test["auc"],
                        "val_mean_error": result.metrics["val"]["clip"]["mean_error"],
                        "best_epoch": result.metrics["best_epoch"],
                        "clips": result.test_clips,
                        "train_s": round(time.monotonic() - t0, 1),
                    }
                )
                log.info(
                    "ratio %s seed %d %s: test mean error %.3f (%.0f s)",
                    ratio_text,
                    seed,
                    method,
                    test["mean_error"],
                    time.monotonic() - t0,
                )
        results["ratios"][ratio_text] = _summarise(runs, ratio, labels, args.baseline)
    results["wall_time_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "results_" + "_".join(r.replace(":", "-") for r in args.ratios) + ".json"
    (args.out / name).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    _print_table(results, labels, args)
    return 0


def _summarise(
    runs: dict[str, list[dict[str, Any]]], ratio: list[int], labels: list[str], baseline: str
) -> dict[str, Any]:
    num_classes = len(labels)
    skew = np.asarray(ratio, dtype=float) / sum(ratio)
    first = runs[baseline][0]["clips"]
    groups = np.asarray([c["group"] for c in first])
    targets = np.asarray([c["target"] for c in first])
    unique_groups = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in unique_groups}
    preds = {
        m: [np.asarray([c["pred"] for c in run["clips"]]) for run in method_runs]
        for m, method_runs in runs.items()
    }
    rng = np.random.default_rng(0)
    samples = [
        np.concatenate([members[g] for g in rng.choice(unique_groups, len(unique_groups))])
        for _ in range(BOOTSTRAP)
    ]
    summary: dict[str, Any] = {}
    for method, method_preds in preds.items():
        per_seed = np.stack([_errors(targets, p, num_classes) for p in method_preds])  # (S, C)
        entry: dict[str, Any] = {
            "per_class_error_mean": dict(
                zip(labels, per_seed.mean(0).round(4).tolist(), strict=True)
            ),
            "overall_error_mean": float(per_seed.mean(1).mean()),
            "overall_error_per_seed": per_seed.mean(1).round(4).tolist(),
            "skewed_error_mean": float((per_seed * skew).sum(1).mean()),
            "auc_mean": {
                label: float(np.mean([r["test_auc"][label] for r in runs[method]]))
                for label in labels
            },
        }
        if method != baseline:
            base = np.stack([_errors(targets, p, num_classes) for p in preds[baseline]])
            rel = (base.mean(1) - per_seed.mean(1)) / base.mean(1)
            rel_class = (base - per_seed) / np.where(base > 0, base, np.nan)
            boot = []
            for idx in samples:
                eb = np.nanmean(
                    np.stack([_errors(targets[idx], p[idx], num_classes) for p in preds[baseline]]),
                    axis=1,
                )
                em = np.nanmean(
                    np.stack([_errors(targets[idx], p[idx], num_classes) for p in method_preds]),
                    axis=1,
                )
                boot.append(float(np.mean((eb - em) / np.maximum(eb, 1e-12))))
            entry["relative_reduction"] = {
                "mean": float(rel.mean()),
                "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
                "seeds_won": int((rel > 0).sum()),
                "per_class_mean": dict(
                    zip(labels, np.nanmean(rel_class, axis=0).round(3).tolist(), strict=True)
                ),
            }
        summary[method] = entry
    summary["test_clips"] = {label: int((targets == i).sum()) for i, label in enumerate(labels)}
    summary["test_groups"] = len(unique_groups)
    return summary


def _print_table(results: dict[str, Any], labels: list[str], args: argparse.Namespace) -> None:
    print(
        f"{results['arch'].upper()}, {args.seeds} paired seeds, {args.epochs} epochs, "
        f"preset {args.preset.name}, "
        f"wall time {results['wall_time_s'] / 60:.1f} min"
    )
    head = " | ".join(f"e({label})" for label in labels)
    print(
        f"| ratio | method | {head} | overall | skewed | mean AUC | vs {args.baseline} "
        "[95% CI] | seeds won |"
    )
    print("|---|---|" + "---:|" * (len(labels) + 5))
    for ratio, summary in results["ratios"].items():
        for method in args.methods:
            entry = summary[method]
            errs = " | ".join(f"{entry['per_class_error_mean'][label]:.3f}" for label in labels)
            auc = np.mean(list(entry["auc_mean"].values()))
            rel = entry.get("relative_reduction")
            rel_text = (
                f"{100 * rel['mean']:+.0f}% [{100 * rel['ci95'][0]:+.0f}, "
                f"{100 * rel['ci95'][1]:+.0f}]"
                if rel
                else "baseline"
            )
            won = f"{rel['seeds_won']}/{args.seeds}" if rel else ""
            print(
                f"| {ratio} | {method} | {errs} | {entry['overall_error_mean']:.3f} | "
                f"{entry['skewed_error_mean']:.3f} | {auc:.3f} | {rel_text} | {won} |"
            )


if __name__ == "__main__":
    raise SystemExit(main())
