"""The published comparison (BENCHMARKS.md section 1) as a command.

For every ratio and seed one training subset is drawn (paired seeds: every method trains on the
same clips with the same weight seed), every method is trained with the same network, epochs
and preset, and the best-on-validation model is scored on the fixed, group-split test set in two
conditions:

- **clean**: the test clips as recorded;
- **mixtures**: every test event clip mixed into test-split background recordings (disjoint from
  the training backgrounds) at event-to-background ratios of +20, +10 and 0 dB, measured over
  the event's *active* frames (:func:`edge_detect.streams.active_span`); one mixture per (event
  clip, ratio), built with a fixed seed, identical for every method and seed. The background
  test clips stay in, clean, as the background class.

Per condition: per-class error e_c = 1 - recall_c, overall error = mean of e_c (class-balanced)
and the mean weighted by the training ratio ("with the training skew"); threshold-free per-class
ROC-AUC, average precision and equal error rate (one class against the rest on the clip
probabilities). The relative reduction against the baseline, (e_base - e_method) / e_base per
paired seed and averaged over seeds, gets a 95% bootstrap interval that resamples test
*recordings* (groups, stratified by the classes a group holds so every class stays present), not
clips. Also the crying shortcut check: baby_cry recall on 8 kHz phone cries vs full-band cries.

Everything is computed from the checkpoints, so ``--reuse`` re-scores finished runs without
training. Usage (the full protocol; a reduced one is --seeds 2 --epochs 8)::

    python bench/paper.py --preset train/configs/default.toml \\
        --ratios 6:1:2:16 2:2:1:26 --methods weighted_ce cluster ce logit_adjusted focal \\
        --seeds 5 --epochs 20 --out runs/paper

Prints Markdown tables on stdout; writes every run and results_<ratios>.json under --out (or the
file --results-out names). ``--arch cnn`` trains the clip-level CNN instead of the preset's network
(model.kind; or use ``--preset train/configs/cnn.toml``, the CNN's own preset, with 1.5 s crops)::

    python bench/paper.py --preset train/configs/cnn.toml --arch cnn --ratios 6:1:2:16 \\
        --seeds 3 --epochs 8 --out runs/paper_cnn

``--table FILE...`` only formats results files (e.g. both ratios) into the tables for
BENCHMARKS.md.

The equal hyper-parameter search: every method gets the same grid, one ``--out`` per grid point
(``--set optim.lr=0.001``), and ``--val-table`` shows the validation error side by side (the
test set never chooses). The comparison at the chosen settings then names each method's own
(``--set cluster:optim.lr=0.01``; methods not named keep the preset's), one ratio per call when
the choice differs by ratio; ``--reuse`` takes over runs of the same config (e.g. symlinked from
the search)::

    python bench/paper.py --ratios 2:2:1:26 --seeds 5 --epochs 10 --reuse --out runs/tuned \
        --set cluster:optim.lr=0.01 --set ce:optim.lr=0.01 --set logit_adjusted:optim.lr=0.001
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import numpy as np
import numpy.typing as npt

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from edge_detect.errors import CheckpointError, DatasetError, EdgeDetectError  # noqa: E402
from edge_detect.streams import active_span, rms_db  # noqa: E402

BOOTSTRAP = 1000
"""Bootstrap resamples of the test groups for the 95% interval."""
BOOTSTRAP_SEED = 0
MIX_RATIOS_DB = (20.0, 10.0, 0.0)
"""Event-to-background ratios of the mixture condition, in dB over the event's active frames."""
MIX_SEED = 2026
"""Seed of the mixtures (which background and where); the same for every method and seed."""
MIN_BED_DB = -60.0
"""Background recordings quieter than this (RMS, dBFS) are not used as mixture beds: setting a
ratio over near-silence would amplify their noise floor by tens of dB."""
FULL_SCALE_PEAK = 0.99
"""A mixture whose peak exceeds full scale is scaled down to this peak (the ratio is unchanged)."""
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "cluster_nosplit": ("cluster", {"split": False}),
    "cluster_linear": ("cluster", {"cluster_head": "linear"}),
}
"""Ablations of the cluster method, compared as methods of their own: one centroid per class
(the paper's split left out), and the randomly initialised linear head of the first
implementation instead of the centroid head."""
RUN_FACTS = ("val_mean_error", "best_epoch", "epochs_run", "best_embedding_epoch", "wall_time_s")
"""What the results file keeps of every run besides its scores (convergence and cost)."""
log = logging.getLogger("bench.paper")


# ---------------------------------------------------------------- metrics


def _errors(targets: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class error 1 - recall, shape (C,); NaN for a class absent from the sample."""
    support = np.bincount(targets, minlength=num_classes).astype(float)
    correct = np.bincount(targets[preds == targets], minlength=num_classes)
    out = np.full(num_classes, np.nan)
    present = support > 0
    out[present] = 1.0 - correct[present] / support[present]
    return out


def average_precision(scores: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """Average precision of ``scores`` (N,) for the boolean ``positive`` (N,): the sum over
    distinct thresholds of (recall step) x precision, as scikit-learn defines it (no
    interpolation). NaN without positives."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos = int(pos.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(pos)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0, tp]) / n_pos
    return float(np.sum(recall_step * precision))


def equal_error_rate(scores: npt.ArrayLike, positive: npt.ArrayLike) -> float:
    """The rate where false positives (among negatives) equal misses (among positives), on the
    ROC curve through every distinct threshold, linearly interpolated between its points.
    NaN when one side is empty."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.r_[0, np.cumsum(pos)[last]]
    fp = np.r_[0, np.cumsum(~pos)[last]]
    fpr, fnr = fp / n_neg, 1.0 - tp / n_pos  # fpr rises from 0, fnr falls to 0
    gap = fnr - fpr  # from 1 down to -1, never increasing
    k = int(np.flatnonzero(gap <= 0)[0])
    if gap[k] == 0 or k == 0:
        return float(fpr[k])
    t = gap[k - 1] / (gap[k - 1] - gap[k])  # where the straight segment crosses gap = 0
    return float(fpr[k - 1] + t * (fpr[k] - fpr[k - 1]))


def _threshold_free(
    targets: np.ndarray, probs: np.ndarray, num_classes: int
) -> dict[str, np.ndarray]:
    """Per-class ROC-AUC, average precision and equal error rate, one class against the rest."""
    from train.evaluate import auc as _auc  # the trainer's rank AUC (ties averaged)

    out = {"auc": np.full(num_classes, np.nan), "ap": np.full(num_classes, np.nan)}
    out["eer"] = np.full(num_classes, np.nan)
    for c in range(num_classes):
        positive = targets == c
        out["auc"][c] = _auc(probs[:, c], positive)
        out["ap"][c] = average_precision(probs[:, c], positive)
        out["eer"][c] = equal_error_rate(probs[:, c], positive)
    return out


def _relative(base: np.ndarray, method: np.ndarray) -> float | None:
    """Mean over paired seeds of (e_base - e_method) / e_base, over the seeds where e_base > 0.

    None when the baseline made no error in any seed: a reduction of zero errors is undefined
    (not 0, not infinite), and saying so beats averaging an empty slice.
    """
    defined = base > 0
    if not defined.any():
        return None
    return float(np.mean((base[defined] - method[defined]) / base[defined]))


# ---------------------------------------------------------------- mixtures


@dataclass
class Mixtures:
    """The mixture condition's test items: mixed events, then the clean background clips."""

    items: list[Any]
    """ClipAudio items (the trainer's), events mixed, backgrounds clean."""
    ratio_db: np.ndarray
    """(N,) the event-to-background ratio of each item in dB; NaN for a clean background."""
    names: list[str]
    """The test clips they were built from, to check that every run sees the same test split."""
    beds: int
    """Background recordings used as beds."""
    clean_index: np.ndarray
    """(N,) for each item the index of the test clip it *is* (a clean background), -1 for a
    mixture: the clean clips' scores are taken over instead of computed twice."""


def mix_events(
    test_items: Sequence[Any],
    background_index: int,
    sample_rate_hz: int,
    *,
    ratios_db: Sequence[float] = MIX_RATIOS_DB,
    seed: int = MIX_SEED,
) -> Mixtures:
    """Every test event clip mixed into test-split background at each of ``ratios_db``.

    Each event gets one bed (test background recordings in a seeded order, joined when one is
    shorter than the event), the same at every ratio, so ratios differ only in level. The bed is
    scaled so that the event's RMS over its active frames exceeds the bed's RMS over the same
    samples by the ratio; the event keeps its own level (and its active frames, over which the
    clip score is averaged, as for the clean clip). A mixture that would clip is scaled down.
    """
    from train.sequences import ClipAudio

    names = [str(item.clip.path) for item in test_items]
    beds = [
        item.audio
        for item in test_items
        if item.target == background_index and rms_db(item.audio) >= MIN_BED_DB
    ]
    events = [item for item in test_items if item.target != background_index]
    if not beds:
        raise DatasetError(
            f"the mixture condition needs test background recordings louder than {MIN_BED_DB} "
            f"dBFS; the test split has {len(test_items) - len(events)} background clips and "
            "none is. Raise data.test_fraction or check the manifest's background clips"
        )
    mixed: list[Any] = []
    ratio_of: list[float] = []
    for i, event in enumerate(events):
        rng = np.random.default_rng([seed, i])
        audio = event.audio.astype(np.float64)
        parts, filled = [], 0
        for k in rng.permutation(len(beds)):
            offset = int(rng.integers(0, max(1, len(beds[k]) - (len(audio) - filled))))
            parts.append(beds[k][offset:])
            filled += len(beds[k]) - offset
            if filled >= len(audio):
                break
        bed = np.concatenate(parts)[: len(audio)].astype(np.float64)
        bed = np.pad(bed, (0, len(audio) - len(bed)))  # all beds together shorter: silence
        start, end, event_db = active_span(event.audio, sample_rate_hz)
        bed_db = rms_db(bed[start:end])
        for ratio in ratios_db:
            mix = audio + bed * 10 ** ((event_db - ratio - bed_db) / 20)
            peak = float(np.abs(mix).max())
            if peak > 1.0:
                mix *= FULL_SCALE_PEAK / peak
            mixed.append(
                ClipAudio(
                    event.clip,
                    event.target,
                    mix.astype(np.float32),
                    event.active,
                    event.frame_power,
                )
            )
            ratio_of.append(float(ratio))
    backgrounds = [i for i, item in enumerate(test_items) if item.target == background_index]
    return Mixtures(
        mixed + [test_items[i] for i in backgrounds],
        np.asarray(ratio_of + [np.nan] * len(backgrounds)),
        names,
        len(beds),
        np.asarray([-1] * len(mixed) + backgrounds),
    )


# ---------------------------------------------------------------- scoring a run


@dataclass
class Scored:
    """One run's clip probabilities on a test condition (items in a fixed order)."""

    groups: np.ndarray  # (N,) source recording of each item
    targets: np.ndarray  # (N,) int
    probs: np.ndarray  # (N, C)
    ratio_db: np.ndarray  # (N,) NaN for clean items


def _score_items(model: Any, items: Sequence[Any], config: Any, ratio_db: Any) -> Scored:
    from train.evaluate import clip_scores

    probs, _, targets = clip_scores(model, items, config)
    return Scored(np.asarray([i.clip.group for i in items]), targets, probs, np.asarray(ratio_db))


class _Runner:
    """Trains or reuses each run, and scores its checkpoint in both test conditions."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._data_key: str | None = None
        self._data: Any = None
        self.mixtures: Mixtures | None = None

    def dataset(self, config: Any) -> Any:
        """The loaded dataset of ``config`` (methods of one seed share it; one kept at a time)."""
        from train.splits import load_dataset

        whole = config.to_dict()
        key = json.dumps([whole["data"], whole["features"]], sort_keys=True)
        if key != self._data_key:
            self._data, self._data_key = None, None  # free the previous one first
            self._data, self._data_key = load_dataset(config), key
            test = self._data.parts["test"]
            names = [str(item.clip.path) for item in test]
            if self.mixtures is None:
                self.mixtures = mix_events(
                    test, self._data.background_index, config.features.sample_rate_hz
                )
                log.info(
                    "mixtures: %d event mixtures at %s dB on %d test background recordings",
                    int((self.mixtures.clean_index < 0).sum()),
                    ", ".join(map(_db, MIX_RATIOS_DB)),
                    self.mixtures.beds,
                )
            elif names != self.mixtures.names:
                raise DatasetError(
                    "the test split changed between runs of one comparison; every run must use "
                    "the same data.split_seed, val_fraction and test_fraction"
                )
        return self._data

    def run(self, preset: Path, ratio: list[int], method: str, seed: int) -> dict[str, Any]:
        from train.checkpoint import load_checkpoint, model_from_checkpoint
        from train.config import TrainConfig, load_config
        from train.evaluate import band_check as _band_check
        from train.trainer import train

        args = self.args
        base_method, variant = VARIANTS.get(method, (method, {}))
        overrides: dict[str, Any] = {
            "data": {"train_ratio": ratio, "subset_seed": seed},
            "optim": {
                "method": base_method,
                "seed": seed,
                "epochs": args.epochs,
                "embed_epochs": args.embed_epochs or max(1, args.epochs // 3),
                "patience": args.patience,
                "background_per_epoch": 0,
                "plot_every": args.epochs,
                **variant,
            },
        }
        if args.arch:
            overrides["model"] = {"kind": args.arch}
        for section, key, value in _sets_for(args, method):
            overrides.setdefault(section, {})[key] = value
        config = load_config(preset, overrides)
        where = Path("-".join(map(str, ratio))) / method / f"seed{seed}"
        path = args.out / where / "checkpoint.pt"
        record = args.scores / f"{where}.npz" if args.scores else None
        saved = load_checkpoint(path) if args.reuse and path.is_file() else None
        # Through from_dict so that keys added since (with their defaults) do not count as changes.
        if saved is not None and (
            TrainConfig.from_dict(saved["train_config"]).to_dict() != config.to_dict()
        ):
            log.info("%s was trained with another config", path)
            saved = None
        if saved is None and args.reuse and record is not None and record.is_file():
            kept = load_scores(record, config.to_dict())
            if kept is not None:
                log.info("reusing the scores kept in %s", record)
                return kept
            log.info("%s holds the scores of another config", record)
        if saved is None:
            if args.score_only:
                raise CheckpointError(
                    f"--score-only: no finished run of this config at {path}; let the "
                    "comparison finish, or drop --score-only to train it"
                )
            train(config, progress=False, out_dir=path.parent)
            saved = load_checkpoint(path)
        else:
            log.info("reusing %s", path)
        model, _ = model_from_checkpoint(saved)
        data = self.dataset(config)
        assert self.mixtures is not None
        test, mixtures = data.parts["test"], self.mixtures
        clean = _score_items(model, test, config, np.full(len(test), np.nan))
        is_mixed = mixtures.clean_index < 0
        mixed = _score_items(
            model, [m for m, new in zip(mixtures.items, is_mixed, strict=True) if new], config, []
        )
        probs = np.empty((len(mixtures.items), clean.probs.shape[1]), dtype=clean.probs.dtype)
        probs[is_mixed] = mixed.probs
        probs[~is_mixed] = clean.probs[mixtures.clean_index[~is_mixed]]
        groups = np.asarray([item.clip.group for item in mixtures.items])
        targets = np.asarray([item.target for item in mixtures.items], dtype=np.int64)
        run = {
            "clean": clean,
            "mixtures": Scored(groups, targets, probs, mixtures.ratio_db),
            "band_check": _band_check(model, data, config),
            "val_mean_error": saved["metrics"]["val"]["clip"]["mean_error"],
            "best_epoch": saved["metrics"]["best_epoch"],
            "epochs_run": saved["metrics"].get("epochs_run"),
            "best_embedding_epoch": saved["metrics"].get("best_embedding_epoch"),
            "wall_time_s": saved["metrics"].get("wall_time_s"),
        }
        if record is not None:
            save_scores(record, run, config.to_dict())
        return run


# ---------------------------------------------------------------- kept scores

_CONDITIONS = ("clean", "mixtures")


def save_scores(path: Path, run: dict[str, Any], config: dict[str, Any]) -> None:
    """Keep what the summaries need of one scored run (its test probabilities per condition, the
    band check and :data:`RUN_FACTS`) with its config, in a small ``.npz``.

    Checkpoints live in run folders that a new machine does not have (and training is not
    bit-reproducible across machines), so these records are how seeds of one comparison add up
    over several sessions: ``--reuse`` takes a run from its record when its checkpoint is gone.
    """
    arrays: dict[str, Any] = {
        "config": np.asarray(json.dumps(config, sort_keys=True)),
        "facts": np.asarray(
            json.dumps({k: run.get(k) for k in (*RUN_FACTS, "band_check")}, sort_keys=True)
        ),
    }
    for condition in _CONDITIONS:
        scored: Scored = run[condition]
        arrays |= {
            f"{condition}_groups": scored.groups.astype(str),
            f"{condition}_targets": scored.targets.astype(np.int64),
            f"{condition}_probs": scored.probs.astype(np.float32),
            f"{condition}_ratio_db": scored.ratio_db.astype(np.float64),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    pending = path.with_name(path.name + ".pending.npz")
    np.savez_compressed(pending, **arrays)
    pending.replace(path)


def load_scores(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run kept by :func:`save_scores` at ``path``, or None when it was of another config."""
    from train.config import TrainConfig

    try:
        with np.load(path, allow_pickle=False) as kept:
            arrays = {name: kept[name] for name in kept.files}
        # through from_dict, so that keys added since (with their defaults) are no change
        stored = TrainConfig.from_dict(json.loads(str(arrays["config"]))).to_dict()
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(
            f"{path} is not a scores record of bench/paper.py ({exc}); delete it to train the "
            "run again"
        ) from None
    if stored != config:
        return None
    run: dict[str, Any] = json.loads(str(arrays["facts"]))
    for condition in _CONDITIONS:
        run[condition] = Scored(
            *(arrays[f"{condition}_{part}"] for part in ("groups", "targets", "probs", "ratio_db"))
        )
    return run


# ---------------------------------------------------------------- summaries


def _db(ratio_db: float) -> str:
    """A ratio as the tables name it: "+20", "+10", "0", "-5"."""
    return "0" if ratio_db == 0 else f"{ratio_db:+.0f}"


def _bootstrap_samples(groups: np.ndarray, targets: np.ndarray, count: int, seed: int) -> list:
    """Item indices of ``count`` resamples of the groups, stratified by the set of classes a
    group holds, so that every class is present in every resample."""
    strata: dict[tuple[int, ...], list[np.ndarray]] = defaultdict(list)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        strata[tuple(np.unique(targets[members]))].append(members)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        chosen = [
            stratum[j]
            for stratum in strata.values()
            for j in rng.integers(0, len(stratum), len(stratum))
        ]
        samples.append(np.concatenate(chosen))
    return samples


def _condition(
    scored: dict[str, list[Scored]], ratio: list[int], labels: list[str], baseline: str
) -> dict[str, Any]:
    """Errors, threshold-free metrics and relative reductions of every method on one condition."""
    num_classes = len(labels)
    first = scored[baseline][0]
    for runs in scored.values():
        for run in runs:
            if not (
                np.array_equal(run.targets, first.targets)
                and np.array_equal(run.groups, first.groups)
            ):
                raise DatasetError("runs of one comparison were scored on different test items")
    targets, groups = first.targets, first.groups
    skew = np.asarray(ratio, dtype=float) / sum(ratio)
    samples = _bootstrap_samples(groups, targets, BOOTSTRAP, BOOTSTRAP_SEED)
    preds = {m: [run.probs.argmax(1) for run in runs] for m, runs in scored.items()}

    def seed_errors(method: str, idx: np.ndarray | None = None) -> np.ndarray:  # (S, C)
        sel = slice(None) if idx is None else idx
        return np.stack([_errors(targets[sel], p[sel], num_classes) for p in preds[method]])

    base = seed_errors(baseline)
    base_boot = [seed_errors(baseline, idx).mean(1) for idx in samples]
    ratios = sorted({float(r) for r in first.ratio_db if not np.isnan(r)}, reverse=True)
    summary: dict[str, Any] = {}
    for method, runs in scored.items():
        per_seed = seed_errors(method)
        free = [_threshold_free(targets, run.probs, num_classes) for run in runs]
        entry: dict[str, Any] = {
            "per_class_error_mean": dict(
                zip(labels, per_seed.mean(0).round(4).tolist(), strict=True)
            ),
            "overall_error_mean": float(per_seed.mean(1).mean()),
            "overall_error_per_seed": per_seed.mean(1).round(4).tolist(),
            "skewed_error_mean": float((per_seed * skew).sum(1).mean()),
        }
        for name in ("auc", "ap", "eer"):
            values = np.stack([f[name] for f in free]).mean(0)
            entry[f"{name}_mean"] = dict(zip(labels, values.round(4).tolist(), strict=True))
        if ratios:  # events at one ratio, with the clean backgrounds
            entry["overall_error_by_ratio"] = {}
            for r in ratios:
                idx = np.flatnonzero((first.ratio_db == r) | np.isnan(first.ratio_db))
                entry["overall_error_by_ratio"][_db(r)] = float(
                    seed_errors(method, idx).mean(1).mean()
                )
        if method != baseline:
            boot = [
                _relative(eb, seed_errors(method, idx).mean(1))
                for eb, idx in zip(base_boot, samples, strict=True)
            ]
            defined = [b for b in boot if b is not None]
            rel = _relative(base.mean(1), per_seed.mean(1))
            entry["relative_reduction"] = {
                "mean": rel,
                "ci95": (
                    [float(np.percentile(defined, 2.5)), float(np.percentile(defined, 97.5))]
                    if defined
                    else None
                ),
                "seeds_won": int((per_seed.mean(1) < base.mean(1)).sum()),
                "per_class_mean": {
                    label: _relative(base[:, c], per_seed[:, c]) for c, label in enumerate(labels)
                },
            }
        summary[method] = entry
    summary["test_items"] = {label: int((targets == i).sum()) for i, label in enumerate(labels)}
    summary["test_groups"] = len(np.unique(groups))
    return summary


def _band_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean baby_cry recall over seeds, 8 kHz (band-limited) vs full-band held-out cries."""
    out: dict[str, Any] = {}
    for kind in ("band_limited", "full_band"):
        checks = [r["band_check"][kind] for r in runs if kind in r["band_check"]]
        if checks:
            recalls = [c["recall"] for c in checks]
            out[kind] = {
                "clips": checks[0]["clips"],
                "recall_mean": float(np.mean(recalls)),
                "recall_per_seed": [round(r, 4) for r in recalls],
            }
    return out


def _summarise(
    runs: dict[str, list[dict[str, Any]]], ratio: list[int], labels: list[str], baseline: str
) -> dict[str, Any]:
    return {
        condition: _condition(
            {m: [r[condition] for r in method_runs] for m, method_runs in runs.items()},
            ratio,
            labels,
            baseline,
        )
        for condition in ("clean", "mixtures")
    } | {
        "band_check": {m: _band_summary(method_runs) for m, method_runs in runs.items()},
        "runs": {
            m: [{key: r.get(key) for key in RUN_FACTS} for r in method_runs]
            for m, method_runs in runs.items()
        },
    }


# ---------------------------------------------------------------- tables


def _num(value: Any, spec: str = ".3f") -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and np.isnan(value))
        else (format(value, spec))
    )


def _rel_text(rel: dict[str, Any] | None) -> str:
    if not rel:
        return "baseline"
    if rel["mean"] is None:
        return "undefined (baseline error 0)"
    ci = rel.get("ci95")
    interval = f" [{100 * ci[0]:+.0f}, {100 * ci[1]:+.0f}]" if ci else " [n/a]"
    return f"{100 * rel['mean']:+.0f}%{interval}"


def _mean_over_classes(entry: dict[str, Any], key: str) -> float | None:
    values = [v for v in (entry.get(key) or {}).values() if v is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def format_tables(results_list: Sequence[dict[str, Any]]) -> str:
    """Markdown for BENCHMARKS.md from one or more results files of one comparison (e.g. one
    per ratio): the clean table, the mixture table and the crying shortcut lines.

    Files written before the mixture condition existed give the clean table only (no AP/EER).
    """
    first = results_list[0]
    meta = _meta(first)
    labels, methods, baseline = meta["labels"], meta["methods"], meta["baseline"]
    ratios: dict[str, dict[str, Any]] = {}
    wall = 0.0
    for results in results_list:
        if _meta(results)["labels"] != labels:
            raise DatasetError("results files of different label sets cannot share one table")
        wall += results.get("wall_time_s", 0.0)
        for ratio, summary in results["ratios"].items():
            ratios[ratio] = summary if "clean" in summary else {"clean": summary}
    lines = [
        f"{meta['arch'].upper()}, {meta['seeds']} paired seeds, {meta['epochs']} epochs, "
        f"preset {meta['preset']}, wall time {wall / 60:.1f} min"
    ]
    for results in results_list:
        changed = {m: v for m, v in results.get("settings", {}).items() if v}
        if changed:
            where = ", ".join(results["ratios"])
            lines.append(
                f"Overrides at {where} (methods not named: the preset's): "
                + "; ".join(
                    f"{method} " + ", ".join(f"{key}={value}" for key, value in sets.items())
                    for method, sets in changed.items()
                )
            )
    errs_head = " | ".join(f"e({label})" for label in labels)
    for condition, title in (("clean", "Clean test clips"), ("mixtures", "Mixtures")):
        present = {r: s[condition] for r, s in ratios.items() if condition in s}
        if not present:
            continue
        any_summary = next(iter(present.values()))
        base_entry = any_summary[baseline]
        by_ratio = list(base_entry.get("overall_error_by_ratio", {}))
        items = any_summary.get("test_items") or any_summary.get("test_clips", {})  # older files
        counts = ", ".join(f"{k} {v}" for k, v in items.items())
        lines += ["", f"{title} ({counts}; {any_summary.get('test_groups')} groups)"]
        if condition == "mixtures":
            lines[-1] = lines[-1][:-1] + (
                f"; events at {', '.join(by_ratio)} dB over their active frames, backgrounds clean)"
            )
        ratio_head = "".join(f" {r} dB |" for r in by_ratio)
        lines.append(
            f"| ratio | method | {errs_head} | overall | skewed |{ratio_head} AUC | AP | EER | "
            f"vs {baseline} [95% CI] | seeds won |"
        )
        lines.append("|---|---|" + "---:|" * (len(labels) + 7 + len(by_ratio)))
        for ratio, summary in present.items():
            for method in (m for m in methods if m in summary):
                entry = summary[method]
                errs = " | ".join(_num(entry["per_class_error_mean"][lab]) for lab in labels)
                by = "".join(f" {_num(entry['overall_error_by_ratio'][r])} |" for r in by_ratio)
                free = " | ".join(
                    _num(_mean_over_classes(entry, f"{name}_mean")) for name in ("auc", "ap", "eer")
                )
                rel = entry.get("relative_reduction")
                won = f"{rel['seeds_won']}/{len(entry['overall_error_per_seed'])}" if rel else ""
                lines.append(
                    f"| {ratio} | {method} | {errs} | {_num(entry['overall_error_mean'])} | "
                    f"{_num(entry['skewed_error_mean'])} |{by} {free} | {_rel_text(rel)} | {won} |"
                )
    for ratio, summary in ratios.items():
        band = summary.get("band_check")
        if not band:
            continue
        parts = []
        counts = ""
        for method in methods:
            check = band.get(method, {})
            limited, full = check.get("band_limited"), check.get("full_band")
            if limited and full:
                counts = f"{limited['clips']} 8 kHz / {full['clips']} full-band held-out cries"
            parts.append(
                f"{method} {_num(limited and limited['recall_mean'], '.2f')} / "
                f"{_num(full and full['recall_mean'], '.2f')}"
            )
        lines += [
            "",
            f"Crying shortcut at {ratio} (baby_cry recall, 8 kHz / full-band, mean over seeds; "
            f"{counts}): " + "; ".join(parts),
        ]
    return "\n".join(lines)


def _meta(results: dict[str, Any]) -> dict[str, Any]:
    """Labels, methods and settings of a results file (older files: from their args)."""
    args = results.get("args", {})
    first = next(iter(results["ratios"].values()))
    clean = first.get("clean", first)
    methods = results.get("methods") or [
        m for m in clean if isinstance(clean[m], dict) and ("per_class_error_mean" in clean[m])
    ]
    baseline = results.get("baseline") or args.get("baseline", methods[0])
    return {
        "labels": results.get("labels") or list(clean[baseline]["per_class_error_mean"]),
        "methods": methods,
        "baseline": baseline,
        "arch": results.get("arch", "lstm"),
        "seeds": results.get("seeds", args.get("seeds", "?")),
        "epochs": results.get("epochs", args.get("epochs", "?")),
        "preset": results.get("preset", Path(args.get("preset", "?")).name),
    }


# ---------------------------------------------------------------- command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--preset",
        type=Path,
        default=CHECKOUT / "train/configs/paper.toml",
        help="training preset (TOML) every run starts from",
    )
    parser.add_argument(
        "--ratios",
        nargs="+",
        default=["6:1:2:16", "2:2:1:26"],
        help="training class ratios, dog:baby:gunshot:background",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["weighted_ce", "cluster", "ce", "logit_adjusted", "focal"],
        help="training methods (optim.method) to compare, or the cluster method's ablations "
        f"{sorted(VARIANTS)}",
    )
    parser.add_argument(
        "--baseline", default="weighted_ce", help="the method relative reductions refer to"
    )
    parser.add_argument(
        "--arch",
        choices=["lstm", "cnn"],
        default=None,
        help="network (model.kind); None: the preset's",
    )
    parser.add_argument("--seeds", type=int, default=5, help="paired seeds (training subsets)")
    parser.add_argument(
        "--epochs", type=int, default=40, help="training epochs per run at most (the budget)"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=8,
        help="early stopping: epochs without a better validation score before a stage ends "
        "(0 = the whole budget)",
    )
    parser.add_argument(
        "--embed-epochs",
        type=int,
        default=0,
        help="'cluster': epochs of the embedding stage at most (0 = a third of --epochs)",
    )
    parser.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="[METHOD:]SECTION.KEY=VALUE",
        help="override one preset key for every method (a TOML value, e.g. optim.lr=0.001), "
        "or for one method only (cluster:optim.lr=0.01: each method at the setting the search "
        "chose for it); repeatable; for the hyper-parameter search, with its own --out",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=CHECKOUT / "runs" / "paper",
        help="folder of the runs (<ratio>/<method>/seed<N>/) and the results file",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score finished runs of the same config in --out instead of training them again "
        "(to add seeds, methods or metrics to an earlier comparison)",
    )
    parser.add_argument(
        "--scores",
        type=Path,
        default=None,
        help="keep every scored run's test probabilities here (<ratio>/<method>/seed<N>.npz, "
        "small enough for git); with --reuse a run whose checkpoint is gone is taken from its "
        "record, so seeds add up across machines and sessions",
    )
    parser.add_argument(
        "--score-only",
        action="store_true",
        help="with --reuse: never train; stop with an error when a run is missing (with "
        "--results-out, nothing is written under --out)",
    )
    parser.add_argument(
        "--results-out",
        type=Path,
        default=None,
        help="where to write the results JSON; None: --out/results_<ratios>.json",
    )
    parser.add_argument(
        "--table",
        nargs="+",
        type=Path,
        metavar="RESULTS_JSON",
        help="only print the Markdown tables of these results files (e.g. one per ratio)",
    )
    parser.add_argument(
        "--val-table",
        nargs="+",
        type=Path,
        metavar="OUT_DIR",
        help="only print the validation mean per-class error of every ratio and method in these "
        "--out folders side by side (the hyper-parameter search's choice; never the test set)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    # force: a handler left by an earlier call (in the same process, e.g. under pytest) may hold
    # a stream that is closed by now; progress goes to the current stderr
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    logging.getLogger("train.trainer").setLevel(logging.WARNING)
    try:
        if args.table:
            print(format_tables([_read_results(p) for p in args.table]))
            return 0
        if args.val_table:
            print(format_val_table(args.val_table))
            return 0
        if args.baseline not in args.methods:
            parser.error(f"--baseline {args.baseline} must be one of --methods")
        if args.score_only and not args.reuse:
            parser.error("--score-only scores finished runs: add --reuse")
        for scope, section, key, _ in args.set:
            bases = {VARIANTS[m][0] for m in args.methods if m in VARIANTS}
            if scope is not None and scope not in {*args.methods, *bases}:
                parser.error(
                    f"--set {scope}:{section}.{key}: {scope!r} is not one of --methods "
                    f"({', '.join(args.methods)})"
                )
        for text in args.ratios:
            parts = text.split(":")
            if not all(p.isdigit() and int(p) > 0 for p in parts):
                parser.error(
                    f"--ratios: expected positive whole numbers like 6:1:2:16, got {text!r}"
                )
        results = _compare(args, argv)
    except EdgeDetectError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_tables([results]))
    return 0


def _read_results(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read results file {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path} is not JSON ({exc}); pass a results_<ratio>.json") from None
    if not isinstance(results, dict) or not isinstance(results.get("ratios"), dict):
        raise DatasetError(
            f"{path} is not a bench/paper.py results file (no 'ratios' object); "
            "pass a results_<ratio>.json written by this script"
        )
    return results


def format_val_table(out_dirs: Sequence[Path]) -> str:
    """Markdown: per ratio and method, the validation mean per-class error (best epoch) in each
    ``--out`` folder, one column per folder, averaged over the seeds that every folder holding
    that ratio and method has run (a search on seed 0 compares with seed 0 of the full run); the
    lowest per row in bold. What a hyper-parameter search chooses by: the test set never enters."""
    found: dict[tuple[str, str], dict[int, dict[str, float]]] = defaultdict(dict)
    for column, out in enumerate(out_dirs):
        for metrics in sorted(Path(out).glob("*/*/seed*/metrics.json")):
            seed_dir = metrics.parent
            method_dir = seed_dir.parent
            data = json.loads(metrics.read_text(encoding="utf-8"))
            runs = found[(method_dir.parent.name, method_dir.name)].setdefault(column, {})
            runs[seed_dir.name] = float(data["val"]["clip"]["mean_error"])
    if not found:
        raise DatasetError(
            f"no finished runs (*/METHOD/seedN/metrics.json) under {[str(d) for d in out_dirs]}"
        )
    lines = [
        "| ratio | method | seeds | " + " | ".join(str(d) for d in out_dirs) + " |",
        "|---|---|---|" + "---:|" * len(out_dirs),
    ]
    for (ratio, method), columns in sorted(found.items()):
        seeds = sorted(set.intersection(*(set(runs) for runs in columns.values())))
        means = {c: float(np.mean([runs[s] for s in seeds])) for c, runs in columns.items()}
        best = min(means.values()) if seeds else None
        cells = []
        for c in range(len(out_dirs)):
            if c not in means or not seeds:
                cells.append("-")
            else:
                cells.append(f"**{means[c]:.3f}**" if means[c] == best else f"{means[c]:.3f}")
        lines.append(
            f"| {ratio.replace('-', ':')} | {method} | {', '.join(seeds) or 'none in common'} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _setting(text: str) -> tuple[str | None, str, str, Any]:
    """``[method:]section.key=value`` (value in TOML syntax) -> (method or None, section, key,
    value); with a method, the override applies to that method's runs only."""
    name, sep, raw = text.partition("=")
    scope, colon, name = name.strip().rpartition(":")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key or (colon and not scope.strip()):
        raise argparse.ArgumentTypeError(f"expected [METHOD:]SECTION.KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the value must be TOML (a number, true/false, or a quoted string)"
        ) from None
    return scope.strip() or None, section, key, value


def _sets_for(args: argparse.Namespace, method: str) -> list[tuple[str, str, Any]]:
    """The ``--set`` overrides that apply to ``method``: (section, key, value). A variant
    (:data:`VARIANTS`) takes its base method's too, so an ablation differs in one thing only."""
    base = VARIANTS.get(method, (method, {}))[0]
    return [(s, k, v) for scope, s, k, v in args.set if scope in (None, method, base)]


def settings_by_method(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per method, the ``--set`` overrides its runs were trained with (``section.key``: value)."""
    return {
        method: {f"{s}.{k}": v for s, k, v in _sets_for(args, method)} for method in args.methods
    }


def _host() -> dict[str, Any]:
    """Where the comparison ran (its wall times mean nothing without it)."""
    import os
    import platform

    import torch

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": 1,
        "device": "cpu",
    }


def _compare(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    import torch

    from train.config import load_config

    torch.set_num_threads(1)  # scoring; training sets optim.num_threads itself
    started = time.monotonic()
    preset_config = load_config(args.preset)
    runner = _Runner(args)
    results: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "arch": args.arch or preset_config.model.kind,
        "labels": list(preset_config.data.labels),
        "methods": list(args.methods),
        "baseline": args.baseline,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "patience": args.patience,
        "preset": args.preset.name,
        "host": _host(),
        "settings": settings_by_method(args),
        "mix_ratios_db": list(MIX_RATIOS_DB),
        "mix_seed": MIX_SEED,
        "ratios": {},
    }
    for ratio_text in args.ratios:
        ratio = [int(x) for x in ratio_text.split(":")]
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
        for seed in range(args.seeds):
            for method in args.methods:
                t0 = time.monotonic()
                run = runner.run(args.preset, ratio, method, seed)
                runs[method].append(run)
                clean, mixed = run["clean"], run["mixtures"]
                log.info(
                    "ratio %s seed %d %s: error clean %.3f, mixtures %.3f (%.0f s)",
                    ratio_text,
                    seed,
                    method,
                    np.nanmean(
                        _errors(clean.targets, clean.probs.argmax(1), len(results["labels"]))
                    ),
                    np.nanmean(
                        _errors(mixed.targets, mixed.probs.argmax(1), len(results["labels"]))
                    ),
                    time.monotonic() - t0,
                )
        results["ratios"][ratio_text] = _summarise(runs, ratio, results["labels"], args.baseline)
    results["wall_time_s"] = round(time.monotonic() - started, 1)
    name = "results_" + "_".join(r.replace(":", "-") for r in args.ratios) + ".json"
    out = args.results_out or args.out / name
    out.parent.mkdir(parents=True, exist_ok=True)
    from edge_detect.provenance import provenance, relative_paths

    results["provenance"] = provenance([__file__, *(sys.argv[1:] if argv is None else argv)])
    out.write_text(json.dumps(relative_paths(results), indent=2) + "\n", encoding="utf-8")
    log.info("results written to %s", out)
    return results


if __name__ == "__main__":
    raise SystemExit(main())
