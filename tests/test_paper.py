"""bench/paper.py's scoring: threshold-free metrics against scikit-learn, the mixture condition's
ratios, relative reductions when the baseline makes no error, the tables, and the whole command
on a tiny generated corpus (train, then re-score the checkpoints without training)."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from edge_detect.errors import DatasetError  # noqa: E402
from edge_detect.streams import active_span, rms_db  # noqa: E402
from train.datasets import Clip  # noqa: E402
from train.sequences import ClipAudio  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_paper", ROOT / "bench" / "paper.py")
assert _spec is not None and _spec.loader is not None
paper = importlib.util.module_from_spec(_spec)
sys.modules["bench_paper"] = paper  # dataclasses look their module up there
_spec.loader.exec_module(paper)

RATE = 16_000
LABELS = ["dog_bark", "baby_cry", "gun_shot", "background"]


# ---------------------------------------------------------------- threshold-free metrics


def _grid() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for n, levels in ((5, 0), (30, 0), (200, 0), (40, 4), (300, 10)):
        for _ in range(4):
            positive = rng.random(n) < rng.uniform(0.1, 0.6)
            positive[0], positive[-1] = True, False  # both sides present
            scores = rng.random(n) + 0.5 * positive
            if levels:  # many ties
                scores = np.round(scores * levels) / levels
            cases.append((scores, positive))
    return cases


def test_average_precision_equals_scikit_learn_on_a_grid() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    for scores, positive in _grid():
        expected = metrics.average_precision_score(positive, scores)
        assert paper.average_precision(scores, positive) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(paper.average_precision([0.1, 0.2], [False, False]))


def test_equal_error_rate_sits_where_misses_equal_false_alarms() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    for scores, positive in _grid():
        fpr, tpr, _ = metrics.roc_curve(positive, scores, drop_intermediate=False)
        fnr = 1 - tpr
        eer = paper.equal_error_rate(scores, positive)
        # the ROC point of the crossing lies between the last point with more misses and the
        # first with more false alarms
        k = int(np.flatnonzero(fnr - fpr <= 0)[0])
        assert min(fpr[k - 1], fnr[k]) - 1e-12 <= eer <= max(fpr[k], fnr[k - 1]) + 1e-12
    assert paper.equal_error_rate([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 0.0
    assert paper.equal_error_rate([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 1.0
    assert paper.equal_error_rate([0.5] * 4, [False, True, False, True]) == pytest.approx(0.5)
    # 1 of 4 negatives above every positive, 1 of 4 positives below every negative
    scores = [0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05]
    positive = [False, True, True, True, False, False, False, True, False, False]
    assert paper.equal_error_rate(scores, positive) == pytest.approx(1 / 4, abs=0.06)
    assert np.isnan(paper.equal_error_rate([0.1, 0.2], [True, True]))


# ---------------------------------------------------------------- mixtures


def _item(label: str, audio: np.ndarray, group: str, notes: str = "") -> Any:
    clip = Clip(Path(f"/x/{group}.wav"), label, label, group, extra={"notes": notes})
    active = np.ones(max(1, (len(audio) - 400) // 160 + 1), dtype=bool)
    return ClipAudio(clip, LABELS.index(label), audio.astype(np.float32), active, active * 1.0)


def _test_items() -> list[Any]:
    rng = np.random.default_rng(1)
    t = np.arange(RATE) / RATE
    burst = np.where((t > 0.3) & (t < 0.5), 0.1 * np.sin(2 * np.pi * 700 * t), 0.0)
    return [
        _item("dog_bark", burst, "d1"),
        _item(
            "gun_shot", 0.05 * rng.standard_normal(RATE // 2) * np.exp(-t[: RATE // 2] / 0.05), "g1"
        ),
        _item("background", 0.02 * rng.standard_normal(RATE // 3), "b1"),  # shorter than events
        _item("background", 0.1 * rng.standard_normal(RATE), "b2"),
        _item("background", np.zeros(RATE), "silent"),  # never a bed
    ]


def test_mixtures_hit_each_ratio_over_the_active_frames() -> None:
    items = _test_items()
    mixtures = paper.mix_events(items, 3, RATE, ratios_db=(20.0, 10.0, 0.0), seed=7)
    assert mixtures.beds == 2  # the silent recording is left out
    assert np.array_equal(mixtures.ratio_db[:6], [20, 10, 0, 20, 10, 0])
    assert np.isnan(mixtures.ratio_db[6:]).all() and len(mixtures.items) == 9
    assert mixtures.clean_index.tolist() == [-1] * 6 + [2, 3, 4]
    for mixed, ratio in zip(mixtures.items[:6], mixtures.ratio_db[:6], strict=True):
        event = items[0] if mixed.target == 0 else items[1]
        start, end, event_db = active_span(event.audio, RATE)
        bed = mixed.audio.astype(np.float64) - event.audio  # no peak scaling at these levels
        assert event_db - rms_db(bed[start:end]) == pytest.approx(ratio, abs=0.01)
        assert mixed.clip is event.clip and mixed.active is event.active
    # one bed per event: the +20 dB mixture's background is the 0 dB one, 20 dB lower
    bed20 = mixtures.items[0].audio - items[0].audio
    bed0 = mixtures.items[2].audio - items[0].audio
    assert np.allclose(bed0, bed20 * 10.0, atol=1e-5)
    # the background items stay clean, and the same seed gives the same audio
    assert all(m.audio is i.audio for m, i in zip(mixtures.items[6:], items[2:], strict=True))
    again = paper.mix_events(items, 3, RATE, ratios_db=(20.0, 10.0, 0.0), seed=7)
    assert all(
        np.array_equal(a.audio, b.audio) for a, b in zip(mixtures.items, again.items, strict=True)
    )
    other = paper.mix_events(items, 3, RATE, ratios_db=(20.0, 10.0, 0.0), seed=8)
    assert not np.array_equal(other.items[2].audio, mixtures.items[2].audio)


def test_mixture_that_would_clip_is_scaled_down_keeping_its_ratio() -> None:
    loud = _item("gun_shot", np.full(RATE // 2, 0.9), "g")
    bed = _item("background", 0.5 * np.sign(np.sin(np.arange(RATE) / 7.0)), "b")
    mixtures = paper.mix_events([loud, bed], 3, RATE, ratios_db=(0.0,), seed=0)
    mix = mixtures.items[0].audio
    assert np.abs(mix).max() == pytest.approx(paper.FULL_SCALE_PEAK, abs=1e-6)
    scale = paper.FULL_SCALE_PEAK / (0.9 + 0.9)
    assert rms_db(mix - scale * loud.audio) == pytest.approx(rms_db(scale * loud.audio), abs=0.05)


def test_mixtures_without_background_say_what_to_do() -> None:
    items = _test_items()
    with pytest.raises(DatasetError, match="louder than -60.0 dBFS.*1 background clips"):
        paper.mix_events([items[0], items[4]], 3, RATE)


# ---------------------------------------------------------------- summaries and tables


def _scored(targets: np.ndarray, preds: np.ndarray, ratio_db: np.ndarray | None = None) -> Any:
    probs = np.full((len(targets), len(LABELS)), 0.1)
    probs[np.arange(len(targets)), preds] = 0.7
    groups = np.asarray([f"{t}-{i // 2}" for i, t in enumerate(targets)])
    ratio = np.full(len(targets), np.nan) if ratio_db is None else ratio_db
    return paper.Scored(groups, targets, probs, ratio)


def test_relative_reduction_is_undefined_not_a_warning_when_the_baseline_is_perfect() -> None:
    targets = np.repeat(np.arange(4), 6)
    base = targets.copy()
    base[:3] = 3  # half the barks missed; every other class perfect
    better = targets.copy()
    better[:1] = 3  # one bark missed
    worse = targets.copy()
    worse[12:15] = 3  # three gunshots missed, barks perfect
    runs = {"weighted_ce": [_scored(targets, base)] * 2, "focal": [_scored(targets, better)] * 2}
    runs["ce"] = [_scored(targets, worse)] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = paper._condition(runs, [6, 1, 2, 16], LABELS, "weighted_ce")
    focal = summary["focal"]["relative_reduction"]
    assert focal["per_class_mean"]["dog_bark"] == pytest.approx((0.5 - 1 / 6) / 0.5)
    assert focal["per_class_mean"]["baby_cry"] is None  # baseline error 0: undefined
    assert focal["mean"] == pytest.approx((0.125 - 1 / 24) / 0.125)
    assert focal["seeds_won"] == 2
    low, high = focal["ci95"]
    assert low <= focal["mean"] <= high
    ce = summary["ce"]["relative_reduction"]
    assert ce["mean"] == pytest.approx(0.0) and ce["seeds_won"] == 0
    assert summary["focal"]["ap_mean"]["baby_cry"] == pytest.approx(1.0)
    assert summary["weighted_ce"]["eer_mean"]["dog_bark"] > 0


def test_relative_reduction_when_the_baseline_has_no_error_at_all() -> None:
    targets = np.repeat(np.arange(4), 4)
    wrong = targets.copy()
    wrong[0] = 3
    runs = {"weighted_ce": [_scored(targets, targets)], "focal": [_scored(targets, wrong)]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = paper._condition(runs, [6, 1, 2, 16], LABELS, "weighted_ce")
    rel = summary["focal"]["relative_reduction"]
    assert rel["mean"] is None and rel["ci95"] is None
    assert set(rel["per_class_mean"].values()) == {None}
    results = {"arch": "lstm", "labels": LABELS, "methods": ["weighted_ce", "focal"]}
    results |= {"baseline": "weighted_ce", "seeds": 1, "epochs": 1, "preset": "p.toml"}
    results["ratios"] = {"6:1:2:16": {"clean": summary}}
    assert "undefined (baseline error 0)" in paper.format_tables([results])


def test_bootstrap_keeps_every_class_in_every_resample() -> None:
    targets = np.asarray([0, 0, 1, 2, 3, 3, 3, 3, 3])
    groups = np.asarray(["a", "a", "b", "c", "d", "d", "e", "f", "g"])
    for idx in paper._bootstrap_samples(groups, targets, 200, 0):
        assert set(targets[idx]) == {0, 1, 2, 3}


def test_tables_show_both_conditions_and_the_shortcut_line(tmp_path: Path) -> None:
    targets = np.repeat(np.arange(4), 6)
    ratio = np.where(targets == 3, np.nan, np.tile([20.0, 10.0, 0.0], 8))
    worse = targets.copy()
    worse[[2, 8, 14]] = 3  # the 0 dB events are missed
    band = {
        "band_limited": {"clips": 5, "recall": 1.0},
        "full_band": {"clips": 2, "recall": 0.5},
    }
    run = {
        "clean": _scored(targets, targets),
        "mixtures": _scored(targets, worse, ratio),
        "band_check": band,
    }
    runs = {"weighted_ce": [run], "cluster": [run]}
    summary = paper._summarise(runs, [6, 1, 2, 16], LABELS, "weighted_ce")
    by_ratio = summary["mixtures"]["cluster"]["overall_error_by_ratio"]
    assert by_ratio == {"+20": 0.0, "+10": 0.0, "0": pytest.approx(0.375)}  # 1 of 2 per event class
    results = {"arch": "lstm", "labels": LABELS, "methods": ["weighted_ce", "cluster"]}
    results |= {"baseline": "weighted_ce", "seeds": 1, "epochs": 1, "preset": "p.toml"}
    results |= {"ratios": {"6:1:2:16": summary}, "wall_time_s": 60.0}
    path = tmp_path / "results_6-1-2-16.json"
    path.write_text(json.dumps(results), encoding="utf-8")
    text = paper.format_tables([paper._read_results(path)])
    lines = text.splitlines()
    assert lines[0] == "LSTM, 1 paired seeds, 1 epochs, preset p.toml, wall time 1.0 min"
    assert any(line.startswith("Mixtures (dog_bark 6") for line in lines)
    assert "| +20 dB | +10 dB | 0 dB | AUC | AP | EER |" in text
    assert "| 6:1:2:16 | cluster | 0.000 | 0.000 | 0.000 | 0.000 | 0.000 | 0.000 | 1.000 |" in text
    assert "+0% [+0, +0] | 0/1 |" in text
    assert "weighted_ce 1.00 / 0.50; cluster 1.00 / 0.50" in text
    assert "5 8 kHz / 2 full-band held-out cries" in text
    rows = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in rows if "Mixtures" not in line}) == 2  # two tables


def test_table_reads_an_old_clean_only_results_file(tmp_path: Path) -> None:
    entry = {
        "per_class_error_mean": dict.fromkeys(LABELS, 0.25),
        "overall_error_mean": 0.25,
        "overall_error_per_seed": [0.25],
        "skewed_error_mean": 0.3,
        "auc_mean": dict.fromkeys(LABELS, 0.9),
    }
    old = {"args": {"preset": "/x/default.toml", "baseline": "weighted_ce", "seeds": "1"}}
    clips = {"dog_bark": 4, "baby_cry": 2, "gun_shot": 1, "background": 9}
    old["ratios"] = {"2:2:1:26": {"weighted_ce": entry, "test_clips": clips, "test_groups": 3}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    text = paper.format_tables([paper._read_results(path)])
    assert "| 2:2:1:26 | weighted_ce | 0.250 | 0.250 | 0.250 | 0.250 | 0.250 | 0.300 |" in text
    assert "0.900 | n/a | n/a | baseline |" in text and "Mixtures" not in text
    assert "(dog_bark 4, baby_cry 2, gun_shot 1, background 9; 3 groups)" in text


def test_table_of_a_file_that_is_not_results_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x.json"
    path.write_text("[1, 2]", encoding="utf-8")
    assert paper.main(["--table", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not a bench/paper.py results file" in err and "Traceback" not in err


# ---------------------------------------------------------------- the command, end to end


def _tiny_clip(label: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.6 * RATE)) / RATE
    if label == "dog_bark":
        x = 0.3 * ((t % 0.3) < 0.12) * np.sin(2 * np.pi * 500 * t)
    elif label == "baby_cry":
        x = 0.3 * np.sin(2 * np.pi * (1800 + 300 * t) * t)
    elif label == "gun_shot":
        x = 0.5 * rng.standard_normal(len(t)) * np.exp(-t / 0.05)
    else:
        x = 0.05 * rng.standard_normal(len(t))
    return (x + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_preset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_paper")
    rng = np.random.default_rng(0)
    rows = ["path,label,group,license,source,notes"]
    for label, count in (("dog_bark", 8), ("baby_cry", 8), ("gun_shot", 8), ("background", 16)):
        for i in range(count):
            rel = f"audio/{label}/{label}_{i}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, _tiny_clip(label, rng), RATE, subtype="PCM_16")
            notes = (
                "phone recording: no content above 4 kHz" if label == "baby_cry" and i % 2 else ""
            )
            rows.append(f"{rel},{label},{label}-{i},CC BY 4.0,generated,{notes}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    preset = root / "tiny.toml"
    preset.write_text(
        f"""
[data]
manifests = ["{root / "manifest.csv"}"]
val_fraction = 0.25
test_fraction = 0.3
cache_dir = "{root / "cache"}"
[features]
fmax_hz = 4000.0
[model]
hidden_size = 8
embedding_dim = 8
[augment]
event_max_s = 0.5
context_min_s = 0.2
context_max_s = 0.4
[optim]
batch_size = 8
lr = 0.01
""",
        encoding="utf-8",
    )
    return preset


def test_the_comparison_trains_then_rescores_its_checkpoints_without_training(
    tiny_preset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "paper"
    common = ["--preset", str(tiny_preset), "--ratios", "1:1:1:2", "--seeds", "1"]
    common += ["--epochs", "1", "--out", str(out), "--methods", "weighted_ce", "ce"]
    assert paper.main(common) == 0
    first = capsys.readouterr().out
    results = json.loads((out / "results_1-1-1-2.json").read_text(encoding="utf-8"))
    # where the figures come from: the command as run, paths relative to the checkout
    assert results["provenance"]["command"].startswith("python bench/paper.py --preset")
    assert str(ROOT) not in json.dumps(results)
    summary = results["ratios"]["1:1:1:2"]
    assert set(summary) == {"clean", "mixtures", "band_check", "runs"}
    # what each run cost and where it converged, beside its scores
    (run,) = summary["runs"]["ce"]
    assert run["epochs_run"] == 1 and run["best_epoch"] == 1 and run["wall_time_s"] > 0
    mixed, clean = summary["mixtures"], summary["clean"]
    # every test event three times (one per ratio), the backgrounds once, clean
    for label in LABELS[:3]:
        assert mixed["test_items"][label] == 3 * clean["test_items"][label] > 0
    assert mixed["test_items"]["background"] == clean["test_items"]["background"]
    for method in ("weighted_ce", "ce"):  # the clean backgrounds' scores were taken over
        bg = [s[method]["per_class_error_mean"]["background"] for s in (mixed, clean)]
        assert bg[0] == bg[1]
    assert set(mixed["ce"]["overall_error_by_ratio"]) == {"+20", "+10", "0"}
    for entry in (clean["ce"], mixed["ce"]):
        for key in ("auc_mean", "ap_mean", "eer_mean"):
            assert all(0.0 <= v <= 1.0 for v in entry[key].values()), (key, entry[key])
        assert "relative_reduction" in entry
    band = summary["band_check"]["ce"]
    assert band["band_limited"]["clips"] + band["full_band"]["clips"] >= 2
    checkpoint = out / "1-1-1-2" / "ce" / "seed0" / "checkpoint.pt"
    trained_at = checkpoint.stat().st_mtime_ns

    # re-scoring: nothing trains, nothing under --out changes, the same numbers come out
    again = tmp_path / "again.json"
    assert paper.main([*common, "--reuse", "--score-only", "--results-out", str(again)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == first.splitlines()[1:]
    assert checkpoint.stat().st_mtime_ns == trained_at
    rescored = json.loads(again.read_text(encoding="utf-8"))
    assert rescored["ratios"] == results["ratios"]

    # a run that does not exist is an error under --score-only, not a training
    missing = [*common[:-2], "weighted_ce", "focal", "--reuse", "--score-only"]
    assert paper.main([*missing, "--results-out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "--score-only: no finished run" in err and "focal" in err and "Traceback" not in err
    assert not (out / "1-1-1-2" / "focal").exists()

    # the table mode prints what the run printed (but for the wall time)
    assert paper.main(["--table", str(out / "results_1-1-1-2.json")]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == first.splitlines()[1:]


def test_kept_scores_stand_in_for_checkpoints_a_new_machine_does_not_have(
    tiny_preset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, kept = tmp_path / "runs", tmp_path / "kept"
    common = ["--preset", str(tiny_preset), "--ratios", "1:1:1:2", "--seeds", "1"]
    common += ["--epochs", "2", "--methods", "weighted_ce", "cluster", "--embed-epochs", "1"]
    common += ["--scores", str(kept)]
    first_out = tmp_path / "first.json"
    assert paper.main([*common, "--out", str(out), "--results-out", str(first_out)]) == 0
    capsys.readouterr()
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*.npz")) == [
        "1-1-1-2/cluster/seed0.npz",
        "1-1-1-2/weighted_ce/seed0.npz",
    ]
    # another machine: no run folders, only the records; nothing trains, the figures are equal
    elsewhere = tmp_path / "elsewhere"
    again = tmp_path / "again.json"
    args = [
        *common,
        "--out",
        str(elsewhere),
        "--reuse",
        "--score-only",
        "--results-out",
        str(again),
    ]
    assert paper.main(args) == 0
    assert not elsewhere.exists()
    first = json.loads(first_out.read_text(encoding="utf-8"))
    assert json.loads(again.read_text(encoding="utf-8"))["ratios"] == first["ratios"]
    # a record of another config is not taken for this one
    other = [*args[:-2], "--results-out", str(tmp_path / "x.json"), "--set", "optim.lr=0.002"]
    assert paper.main(other) == 2
    assert "--score-only: no finished run" in capsys.readouterr().err


def test_a_malformed_ratio_is_refused_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as stop:
        paper.main(["--ratios", "6:1:two:16", "--out", "/nonexistent"])
    assert stop.value.code == 2
    assert "expected positive whole numbers like 6:1:2:16, got '6:1:two:16'" in (
        capsys.readouterr().err
    )


def test_set_overrides_a_preset_key_for_every_method(tiny_preset: Path, tmp_path: Path) -> None:
    # the equal hyper-parameter search: one --set, its own --out, every method trained with it
    out = tmp_path / "search"
    args = ["--preset", str(tiny_preset), "--ratios", "1:1:1:2", "--seeds", "1", "--epochs", "1"]
    args += ["--methods", "weighted_ce", "ce", "--set", "optim.lr=0.002", "--out", str(out)]
    assert paper.main(args) == 0
    for method in ("weighted_ce", "ce"):
        saved = torch.load(out / "1-1-1-2" / method / "seed0" / "checkpoint.pt", weights_only=False)
        assert saved["train_config"]["optim"]["lr"] == 0.002


def test_set_for_one_method_leaves_the_others_at_the_preset(
    tiny_preset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # each method at the setting the search chose for it; the baseline keeps the preset's lr
    out = tmp_path / "chosen"
    args = ["--preset", str(tiny_preset), "--ratios", "1:1:1:2", "--seeds", "1", "--epochs", "1"]
    args += ["--methods", "weighted_ce", "ce", "--set", "ce:optim.lr=0.002", "--out", str(out)]
    assert paper.main(args) == 0
    lrs = {}
    for method in ("weighted_ce", "ce"):
        path = out / "1-1-1-2" / method / "seed0" / "checkpoint.pt"
        lrs[method] = torch.load(path, weights_only=False)["train_config"]["optim"]["lr"]
    assert lrs == {"weighted_ce": 0.01, "ce": 0.002}
    results = json.loads((out / "results_1-1-1-2.json").read_text(encoding="utf-8"))
    assert results["settings"] == {"weighted_ce": {}, "ce": {"optim.lr": 0.002}}
    assert "Overrides at 1:1:1:2 (methods not named: the preset's): ce optim.lr=0.002" in (
        capsys.readouterr().out
    )


def test_set_for_a_method_not_compared_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        paper.main(["--methods", "weighted_ce", "ce", "--set", "clustr:optim.lr=0.01"])
    assert stop.value.code == 2
    assert "'clustr' is not one of --methods (weighted_ce, ce)" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["optim.lr", "lr=0.1", "optim.lr=fast", ":optim.lr=0.1"])
def test_set_refuses_what_is_not_section_key_toml_value(text: str) -> None:
    with pytest.raises(SystemExit):
        paper.main(["--set", text, "--table", "unused.json"])


def _val_run(out: Path, method: str, seed: int, error: float) -> None:
    path = out / "6-1-2-16" / method / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"val": {"clip": {"mean_error": error}}}), encoding="utf-8")


def test_val_table_compares_search_folders_on_their_common_seeds(tmp_path: Path) -> None:
    full, search = tmp_path / "full", tmp_path / "search"
    for seed, error in enumerate([0.30, 0.10, 0.10]):  # seed 0 is the full run's worst
        _val_run(full, "cluster", seed, error)
    _val_run(search, "cluster", 0, 0.20)
    _val_run(full, "ce", 0, 0.5)
    table = paper.format_val_table([search, full])
    rows = {line.split(" | ")[1]: line for line in table.splitlines()[2:]}
    # seed 0 only: the search (0.200) beats the full run's seed 0 (0.300), not its mean (0.167)
    assert rows["cluster"] == "| 6:1:2:16 | cluster | seed0 | **0.200** | 0.300 |"
    assert rows["ce"] == "| 6:1:2:16 | ce | seed0 | - | **0.500** |"
    with pytest.raises(DatasetError, match="no finished runs"):
        paper.format_val_table([tmp_path / "empty"])
