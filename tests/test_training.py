"""Training on a tiny generated dataset: config presets, streaming sequences, checkpoints, resume.

The dataset is real audio written to WAV files (tones, clicks and noise) and read through the
same manifest, cache and trainer path as the corpus; each run takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from edge_detect.cli import main  # noqa: E402
from edge_detect.errors import CheckpointError, ConfigError  # noqa: E402
from train.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from train.config import CHECKOUT, TrainConfig, load_config  # noqa: E402
from train.sequences import IGNORE, ClipAudio, SequenceBuilder, frame_activity  # noqa: E402
from train.trainer import train  # noqa: E402

RATE = 16_000
LABELS = ["dog_bark", "baby_cry", "gun_shot", "background"]
CLIPS_PER_CLASS = 6


def _clip(label: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.6 * RATE)) / RATE
    if label == "dog_bark":  # two 500 Hz barks
        env = ((t % 0.3) < 0.12).astype(float)
        x = 0.5 * env * np.sin(2 * np.pi * 500 * t)
    elif label == "baby_cry":  # a 2 kHz wail
        x = 0.4 * np.sin(2 * np.pi * (1800 + 300 * t) * t)
    elif label == "gun_shot":  # a decaying broadband burst
        x = 0.8 * rng.standard_normal(len(t)) * np.exp(-t / 0.05)
    else:  # quiet noise
        x = 0.01 * rng.standard_normal(len(t))
    return (x + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_corpus")
    rng = np.random.default_rng(0)
    rows = ["path,label,group,license,source,notes"]
    for label in LABELS:
        for i in range(CLIPS_PER_CLASS):
            rel = f"audio/{label}/{label}_{i}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, _clip(label, rng), RATE, subtype="PCM_16")
            rows.append(f"{rel},{label},{label}-{i},CC BY 4.0,generated,")
    # a clip whose license is not stated: must be left out
    sf.write(root / "audio/unlicensed.wav", _clip("dog_bark", rng), RATE)
    rows.append("audio/unlicensed.wav,dog_bark,x-0,NONE STATED,elsewhere,")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "manifest.csv"


def _tiny_config(manifest: Path, tmp: Path, **optim: Any) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "data": {
                "manifests": [str(manifest)],
                "val_fraction": 0.25,
                "test_fraction": 0.2,
                "cache_dir": str(tmp / "cache"),
            },
            "features": {"fmax_hz": 4000.0},
            "model": {"hidden_size": 16, "embedding_dim": 8},
            "augment": {"event_max_s": 0.5, "context_min_s": 0.2, "context_max_s": 0.4},
            "optim": {
                "epochs": 2,
                "batch_size": 8,
                "embed_epochs": 1,
                "out_dir": str(tmp / "run"),
                "plot_every": 1,
                **optim,
            },
        }
    )


def test_tiny_dataset_trains_and_the_checkpoint_carries_everything(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    config = _tiny_config(tiny_manifest, tmp_path, epochs=4, lr=1e-2)
    result = train(config, progress=False)
    data = load_checkpoint(result.checkpoint)
    model, features = model_from_checkpoint(data)
    assert data["labels"] == LABELS
    assert features.fmax_hz == 4000.0
    assert data["train_config"]["optim"]["epochs"] == 4
    assert data["model_config"]["hidden_size"] == 16
    assert data["detection"]["background"]["enabled"] is False
    assert all(data["detection"][label]["enabled"] for label in LABELS[:3])
    assert data["data"]["licenses"] == ["CC BY 4.0"]  # the unlicensed clip was left out
    assert data["data"]["excluded_clips"] == 1
    assert sum(data["data"]["clip_counts"]["train"].values()) > 0
    assert "per_class_error" in data["metrics"]["val"]["clip"]
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    losses = [epoch["train_loss"] for epoch in metrics["history"]]
    assert len(losses) == 4 and losses[-1] < losses[0]
    for name in ("loss_curves.png", "confusion_val.png", "embedding_epoch001.png"):
        assert (result.run_dir / name).stat().st_size > 1000
    # the rebuilt model runs on a stream frame by frame with carried state
    x = torch.randn(1, 20, 64)
    whole, _, _ = model(x)
    h = c = None
    steps = []
    for t in range(20):
        out, h, c = model(x[:, t : t + 1], h, c)
        steps.append(out)
    assert torch.allclose(torch.cat(steps, dim=1), whole, atol=1e-5)


def test_resume_gives_the_weights_of_an_uninterrupted_run(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    straight = train(_tiny_config(tiny_manifest, tmp_path / "a", method="cluster"), progress=False)
    config_b = _tiny_config(tiny_manifest, tmp_path / "b", method="cluster")
    # interrupt after epoch 1 by a time limit of zero, then resume to the end
    train(config_b, progress=False, time_limit_s=0.0)
    state = load_checkpoint(tmp_path / "b" / "run" / "checkpoint_last.pt")
    assert state["resume"]["epoch"] == 1
    resumed = train(config_b, progress=False, resume=True)
    a = load_checkpoint(straight.run_dir / "checkpoint_last.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoint_last.pt")
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    assert torch.equal(a["resume"]["cluster_loss"]["sums"], b["resume"]["cluster_loss"]["sums"])


def test_resume_with_another_config_is_refused(tiny_manifest: Path, tmp_path: Path) -> None:
    train(_tiny_config(tiny_manifest, tmp_path, epochs=1), progress=False)
    changed = _tiny_config(tiny_manifest, tmp_path, epochs=2, lr=0.5)
    with pytest.raises(CheckpointError, match=r"optim\.lr"):
        train(changed, progress=False, resume=True)


def test_sequences_mark_active_event_frames_and_background_around(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    config = _tiny_config(tiny_manifest, tmp_path)
    feat = config.features
    rate = feat.sample_rate_hz
    event = np.zeros(int(0.5 * rate), dtype=np.float32)
    event[int(0.2 * rate) : int(0.3 * rate)] = 0.5  # loud in the middle, silent around
    quiet = (0.001 * np.random.default_rng(0).standard_normal(rate)).astype(np.float32)
    items = [
        ClipAudio(None, 2, event, *frame_activity(event, feat, 30.0)),  # type: ignore[arg-type]
        ClipAudio(None, 3, quiet, *frame_activity(quiet, feat, 30.0)),  # type: ignore[arg-type]
    ]
    builder = SequenceBuilder(config, items, items[1:], background_index=3)
    features, targets = builder.build(0, np.random.default_rng(1), augment=False)
    assert features.shape == (len(targets), feat.n_mels)
    assert targets[0] == 3 and targets[-1] == 3  # background before and after
    event_frames = np.flatnonzero(targets == 2)
    assert 8 <= len(event_frames) <= 12  # 100 ms of loud signal = 10 frames (+- the window)
    assert np.all(np.diff(event_frames) == 1)  # one run, no holes
    assert (targets == IGNORE).sum() > 0  # the silent parts of the event clip are not scored
    _, bg_targets = builder.build(1, np.random.default_rng(1), augment=False)
    assert set(bg_targets.tolist()) == {3}


def test_unknown_key_and_wrong_type_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nepochz = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['epochz'\] in \[optim\]"):
        load_config(bad)
    bad.write_text('[optim]\nepochs = "three"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'optim.epochs' must be a int, got 'three'"):
        load_config(bad)
    bad.write_text("[optimiser]\nepochs = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optimiser'\]"):
        load_config(bad)
    bad.write_text('[optim]\nmethod = "magic"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="optim.method must be one of"):
        load_config(bad)


def test_committed_presets_load() -> None:
    for preset in sorted((CHECKOUT / "train" / "configs").glob("*.toml")):
        config = load_config(preset)
        assert config.model.num_classes == len(config.data.labels)
    default = load_config(CHECKOUT / "train" / "configs" / "default.toml")
    assert default.features.fmax_hz == 4000.0
    assert default.data.exclude_licenses == ["NONE STATED"]


def test_cli_refuses_a_bad_config_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nlayers = 3\n", encoding="utf-8")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['layers'] in [model]" in err and "Traceback" not in err


def _write_toml(path: Path, config: TrainConfig) -> None:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    lines = []
    for section, table in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {value(v)}" for key, v in table.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.slow
def test_two_process_torchrun_keeps_centroids_and_weights_identical(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    config = _tiny_config(tiny_manifest, tmp_path, method="cluster", epochs=3, refresh_epochs=10)
    preset = tmp_path / "tiny.toml"
    _write_toml(preset, config)
    assert load_config(preset) == config
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "train",
            "train",
            "--config",
            str(preset),
            "--no-progress",
        ],
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(tmp_path / "run" / f"rank{r}_final.pt") for r in (0, 1)]
    for key, value in ranks[0]["model_state"].items():
        assert torch.equal(value, ranks[1]["model_state"][key]), key
    for key in ("sums", "counts"):
        assert torch.equal(ranks[0]["cluster_loss"][key], ranks[1]["cluster_loss"][key])
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_ratio_subset_is_exact_and_refuses_what_the_split_cannot_give() -> None:
    from edge_detect.errors import DatasetError
    from train.datasets import Clip
    from train.splits import ratio_subset as _ratio_subset

    clips = [
        Clip(Path(f"{label}{i}.wav"), label, label, f"g{label}{i}")
        for label, n in (("a", 13), ("b", 5), ("c", 40))
        for i in range(n)
    ]
    subset = _ratio_subset(clips, ["a", "b", "c"], [2, 1, 6], seed=3)
    counts = {label: sum(c.label == label for c in subset) for label in "abc"}
    assert counts == {"a": 10, "b": 5, "c": 30}  # unit 5: b and a limit it
    assert _ratio_subset(clips, ["a", "b", "c"], [2, 1, 6], seed=3) == subset  # seeded
    with pytest.raises(DatasetError, match="cannot give the ratio"):
        _ratio_subset(clips, ["a", "b", "c"], [1, 6, 1], seed=0)


def test_cli_trains_from_a_preset_and_prints_a_summary(
    tiny_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = tmp_path / "tiny.toml"
    _write_toml(preset, _tiny_config(tiny_manifest, tmp_path, epochs=1))
    out = tmp_path / "cli_run"
    assert main(["train", "--config", str(preset), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["checkpoint"] == str(out / "checkpoint.pt")
    assert set(summary["val_per_class_error"]) == set(LABELS)
    assert load_checkpoint(out / "checkpoint.pt")["train_config"]["optim"]["epochs"] == 1


def _tiny_cnn_config(manifest: Path, tmp: Path, **optim: Any) -> TrainConfig:
    config = _tiny_config(manifest, tmp, **optim).to_dict()
    config["model"]["kind"] = "cnn"
    return TrainConfig.from_dict(config)


@pytest.mark.parametrize("method", ["weighted_ce", "cluster"])
def test_cnn_trains_clip_level_through_the_same_loop(
    tiny_manifest: Path, tmp_path: Path, method: str
) -> None:
    config = _tiny_cnn_config(tiny_manifest, tmp_path, method=method, epochs=12, lr=1e-2)
    result = train(config, progress=False)
    data = load_checkpoint(result.checkpoint)
    assert data["model_config"]["kind"] == "cnn"
    assert "detection" not in data  # no frame scores, so no streaming thresholds
    model, _ = model_from_checkpoint(data)
    logits = model(torch.randn(2, 50, 64))
    assert logits.shape == (2, len(LABELS))  # one score vector per clip
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["model"] == "cnn" and metrics["method"] == method
    assert "stream" not in metrics["val"]
    assert set(metrics["test"]["clip"]["per_class_error"]) == set(LABELS)
    assert len(result.test_clips) == sum(metrics["test"]["clip"]["support"])
    history = metrics["history"]
    assert len(history) == 12 and all("val_frame_error" not in h for h in history)
    losses = [h["train_loss"] for h in history]
    assert np.isfinite(losses).all()
    if method == "cluster":
        assert "val_nearest_centroid_error" in history[0]
    else:  # a handful of crops per epoch: the loss falls slowly, but it falls
        assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1
    assert metrics["val"]["clip"]["mean_error"] < 0.75  # better than chance on val
    for name in ("loss_curves.png", "confusion_val.png", "embedding_epoch001.png"):
        assert (result.run_dir / name).stat().st_size > 1000


def test_cnn_resume_gives_the_weights_of_an_uninterrupted_run(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    straight = train(
        _tiny_cnn_config(tiny_manifest, tmp_path / "a", method="cluster"), progress=False
    )
    config_b = _tiny_cnn_config(tiny_manifest, tmp_path / "b", method="cluster")
    train(config_b, progress=False, time_limit_s=0.0)
    state = load_checkpoint(tmp_path / "b" / "run" / "checkpoint_last.pt")
    assert state["resume"]["epoch"] == 1 and state["model_config"]["kind"] == "cnn"
    resumed = train(config_b, progress=False, resume=True)
    a = load_checkpoint(straight.run_dir / "checkpoint_last.pt")
    b = load_checkpoint(resumed.run_dir / "checkpoint_last.pt")
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    assert torch.equal(a["resume"]["cluster_loss"]["sums"], b["resume"]["cluster_loss"]["sums"])


def test_cnn_crops_have_a_fixed_length_and_the_clip_label(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    config = _tiny_cnn_config(tiny_manifest, tmp_path)  # event_max_s = 0.5 s: 48 frames
    feat = config.features
    noise = np.random.default_rng(2).standard_normal(int(0.2 * feat.sample_rate_hz))
    short = (0.3 * noise).astype(np.float32)
    long = (0.1 * np.random.default_rng(0).standard_normal(feat.sample_rate_hz)).astype(np.float32)
    items = [
        ClipAudio(None, 1, short, *frame_activity(short, feat, 30.0)),  # type: ignore[arg-type]
        ClipAudio(None, 3, long, *frame_activity(long, feat, 30.0)),  # type: ignore[arg-type]
    ]
    builder = SequenceBuilder(config, items, items[1:], background_index=3)
    rng = np.random.default_rng(1)
    for index, label in ((0, 1), (1, 3)):
        for augment in (True, False):
            features, target = builder.crop(index, rng, augment=augment)
            assert features.shape == (builder.crop_frames(), feat.n_mels)
            assert target == label
    assert builder.crop_frames() == feat.num_frames(int(0.5 * feat.sample_rate_hz))
    # the short clip fills its 0.2 s; the rest is silence (the log floor)
    features, _ = builder.crop(0, rng, augment=False)
    assert features[:15].mean(1).min() > features[-5:].mean(1).max() + 10.0


@pytest.fixture(scope="module")
def skewed_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four times as much background as each event class: background gets several clusters."""
    root = tmp_path_factory.mktemp("skewed_corpus")
    rng = np.random.default_rng(1)
    rows = ["path,label,group,license,source,notes"]
    for label in LABELS:
        for i in range(CLIPS_PER_CLASS * (4 if label == "background" else 1)):
            rel = f"audio/{label}/{label}_{i}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, _clip(label, rng), RATE, subtype="PCM_16")
            rows.append(f"{rel},{label},{label}-{i},CC BY 4.0,generated,")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "manifest.csv"


def test_cluster_run_splits_on_the_warmed_encoder_and_classifies_from_the_centroids(
    skewed_manifest: Path, tmp_path: Path
) -> None:
    config = _tiny_config(
        skewed_manifest, tmp_path, method="cluster", epochs=5, embed_epochs=3, split_epochs=2
    )
    result = train(config, progress=False)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    history = metrics["history"]
    # one centroid per class for two epochs, then the split; only split epochs compete
    assert [h.get("split", False) for h in history] == [False, True, False, False, False]
    assert metrics["best_embedding_epoch"] in (2, 3)
    assert [h["stage"] for h in history] == [1, 1, 1, 2, 2]
    assert all("val_nearest_mean_error" in h for h in history)
    data = load_checkpoint(result.checkpoint)
    assert data["model_config"]["head"] == "centroid"
    assert data["model_config"]["head_clusters"][LABELS.index("background")] > 1
    assert (
        sum(data["model_config"]["head_clusters"])
        == data["model_state"]["classifier.weight"].shape[0]
    )


def test_classifier_stage_starts_from_the_best_embedding_epoch(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    import math

    import torch.nn.functional as F

    from train.splits import load_dataset
    from train.trainer import _setup, _start_classifier_stage

    config = _tiny_config(tiny_manifest, tmp_path, method="cluster", epochs=4, embed_epochs=2)
    loop = _setup(config, load_dataset(config), 0, 1, tmp_path)
    assert loop.cluster_loss is not None
    # the best embedding epoch: other weights than the current ones, and split centroids
    best_model = {
        k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in loop.model.state_dict().items()
    }
    points = F.normalize(torch.randn(200, 8), dim=1)
    targets = torch.arange(200) % 4
    loop.cluster_loss.split(points, targets)
    best_clusters = {k: v.clone() for k, v in loop.cluster_loss.state_dict().items()}
    loop.cluster_loss.sums.mul_(-1.0)  # what the last epoch left: not the best
    loop.best_embedding = {
        "score": 0.1,
        "epoch": 1,
        "model_state": best_model,
        "cluster_state": best_clusters,
    }
    _start_classifier_stage(loop, 2)
    assert loop.stage == 2 and loop.stage_start == 2
    state = loop.model.state_dict()
    for key, value in best_model.items():
        if not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    expected = F.normalize(best_clusters["sums"][best_clusters["active"]], dim=1)
    assert torch.allclose(F.normalize(loop.model.classifier.weight.detach(), dim=1), expected)
    assert math.isclose(
        float(loop.model.classifier.log_scale.detach().exp()), 2 / 0.1, rel_tol=1e-6
    )


class _LoudnessDetector(torch.nn.Module):
    """A streaming 'model' whose dog_bark score follows the frame's loudness: barks fire it,
    quiet noise does not (a stand-in for a trained model that fires on what it should not)."""

    def __init__(self) -> None:
        super().__init__()
        from train.models import ModelConfig

        self.config = ModelConfig(output="sigmoid")

    def forward(self, x, h=None, c=None):  # (B, T, F) -> (B, T, 4)
        loud = x.max(-1, keepdim=True).values  # loudest band: about -6 in quiet noise, 4 in a bark
        never = torch.full_like(loud, -10.0)  # baby_cry and gun_shot stay silent
        logits = torch.cat([4.0 * loud, never, never, -4.0 * loud], dim=-1)
        return logits, h, c


def test_mining_finds_and_weights_up_the_planted_false_alarms(tiny_manifest: Path) -> None:
    from train.mining import background_peaks, mining_weights

    config = _tiny_config(tiny_manifest, Path("unused"))
    rng = np.random.default_rng(5)
    # a stream of quiet background, two clips of which are barks labelled background
    clips = []
    for i in range(8):
        audio = _clip("dog_bark" if i in (2, 5) else "background", rng)
        active, power = frame_activity(audio, config.features, 30.0)
        clip = _Clip(f"bg{i}.wav", "background", "background", f"g{i}")
        clips.append(ClipAudio(clip, 3, audio, active, power))
    peaks = background_peaks(_LoudnessDetector(), clips, config, seed=0, stream_s=2.0)
    assert peaks.shape == (8, 4)
    assert set(np.flatnonzero(peaks[:, 0] >= 0.5)) == {2, 5}, peaks[:, 0]
    weights, fired = mining_weights(peaks, [0, 1, 2], threshold=0.5, boost=4.0)
    assert fired.tolist() == [i in (2, 5) for i in range(8)]
    assert weights.tolist() == [5.0 if i in (2, 5) else 1.0 for i in range(8)]
    # the builder then draws the planted clips about five times as often
    builder = SequenceBuilder(config, clips, clips, 3)
    builder.set_background_weights(weights)
    draws = [builder._pick_background(rng).clip.group for _ in range(3000)]
    planted = sum(g in ("g2", "g5") for g in draws) / len(draws)
    assert planted == pytest.approx(10 / 16, abs=0.04)


def _Clip(name: str, label: str, orig: str, group: str):  # noqa: N802 - a constructor
    from train.datasets import Clip

    return Clip(Path(name), label, orig, group)


def test_a_run_with_mining_and_long_background_records_the_rounds(
    tiny_manifest: Path, tmp_path: Path
) -> None:
    config = _tiny_config(
        tiny_manifest, tmp_path, epochs=3, lr=1e-2, mining_every=1, mining_threshold=0.0,
        hard_negative_weight=1.0, hard_negative_from_epoch=1, class_weight_power=0.5,
    )  # fmt: skip
    whole = config.to_dict()
    whole["augment"].update(
        background_seq_per_epoch=4, background_seq_s=2.0, reverb_prob=0.5, eq_prob=0.5,
        freq_masks=1, time_masks=1,
    )  # fmt: skip
    whole["model"]["output"] = "sigmoid"
    whole["optim"]["event_top_frames"] = 5  # the pooled-event loss
    result = train(TrainConfig.from_dict(whole), progress=False)
    history = json.loads((result.run_dir / "metrics.json").read_text())["history"]
    assert "mining" not in history[0]  # the first round comes after an epoch of training
    # threshold 0: every background clip fires, so all are drawn alike again
    assert [h["mining"]["epoch"] for h in history[1:]] == [1, 2]
    assert all(h["mining"]["fired"] > 0 for h in history[1:])
    state = load_checkpoint(result.run_dir / "checkpoint_last.pt")
    weights = state["resume"]["background_weights"]
    assert weights is not None and set(np.unique(weights)) <= {1.0, 5.0}


def test_long_background_sequence_and_room_and_microphone() -> None:
    from train.sequences import room_impulse

    rng = np.random.default_rng(0)
    config = TrainConfig.from_dict(
        {"augment": {"reverb_prob": 1.0, "eq_prob": 1.0, "lowpass_prob": 0.0}}
    )
    ir = room_impulse(0.5, RATE, rng, direct_db=6.0)
    assert float(np.sum(ir**2)) == pytest.approx(1.0, rel=1e-5)
    tail = ir[1:] ** 2
    early, late = tail[: RATE // 20].mean(), tail[RATE // 2 - RATE // 20 : RATE // 2].mean()
    assert 10 * np.log10(early / late) == pytest.approx(54.0, abs=6.0)  # ~60 dB over RT60
    noise = 0.1 * rng.standard_normal(RATE * 2).astype(np.float32)
    activity = frame_activity(noise, config.features, 30.0)
    backgrounds = [ClipAudio(_Clip("n.wav", "background", "bg", "g"), 3, noise, *activity)]
    builder = SequenceBuilder(config, backgrounds, backgrounds, 3)
    coloured = builder.room_and_microphone(noise.copy(), rng)
    level = 10 * np.log10(np.mean(coloured**2) / np.mean(noise**2))
    assert abs(level) < 6.0  # a room and a microphone colour the sound, they do not mute it
    features, targets = builder.build_background(rng, 3.0)
    assert len(features) == config.features.num_frames(3 * RATE)
    assert (targets == 3).all()


def test_hard_negatives_add_the_hardest_background_frames() -> None:
    from train.losses import classification_loss

    logits = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([3] * 30 + [0] * 10)
    plain = classification_loss("weighted_ce", [10, 10, 10, 30], output="sigmoid")
    hard = classification_loss(
        "weighted_ce", [10, 10, 10, 30], output="sigmoid", hard_negatives=(3, 0.1, 2.0)
    )
    per_frame = plain.per_frame(logits[:30], targets[:30])
    expected = plain(logits, targets) + 2.0 * per_frame.topk(3).values.mean()
    assert float(hard(logits, targets)) == pytest.approx(float(expected), rel=1e-6)


def test_detection_defaults_come_from_the_runtime_state_machine() -> None:
    from edge_detect.detect import ClassDetection, ClassDetector
    from train.evaluate import causal_mean, detection_defaults

    rng = np.random.default_rng(3)
    scores = []
    for owner in (0, 0, 0, 3, 3, 3, 3, 3):
        p = np.full((300, 4), 0.05, dtype=np.float32)
        p[:, 3] = 0.9
        if owner == 0:
            p[100:140, 0] = 0.8  # the event
        p[rng.integers(300), 0] = 0.6  # one stray frame: smoothing keeps it below 0.5
        scores.append(p)
    settings = detection_defaults(scores, [0, 0, 0, 3, 3, 3, 3, 3], LABELS, 3, 10.0)
    dog = ClassDetection.from_dict(settings["dog_bark"])
    assert 0.2 < dog.threshold_on <= 0.8  # finds every bark, fires on no background
    assert settings["background"]["enabled"] is False
    default = ClassDetection()
    assert (dog.smoothing_ms, dog.confirm_ms) == (default.smoothing_ms, default.confirm_ms)
    assert dog.threshold_off / dog.threshold_on == pytest.approx(
        default.threshold_off / default.threshold_on
    )
    # the trainer's smoothing is the runtime's
    detector = ClassDetector("dog_bark", default, 10.0)
    runtime = []
    for value in scores[0][:, 0]:
        detector.update(float(value))
        runtime.append(detector.smoothed)
    assert causal_mean(scores[0], 10)[:, 0] == pytest.approx(runtime, abs=1e-6)


def test_one_vs_rest_scores_predict_background_unless_an_event_reaches_one_half() -> None:
    from train.evaluate import predict

    probs = np.array(
        [
            [0.2, 0.1, 0.1, 0.9],  # nothing reaches 0.5: background
            [0.7, 0.1, 0.6, 0.9],  # two events do: the higher one, whatever background says
            [0.1, 0.55, 0.1, 0.1],
        ]
    )
    assert predict(probs, "sigmoid", 3).tolist() == [3, 0, 1]
    assert predict(probs, "softmax", 3).tolist() == [3, 3, 1]


def test_mining_top_share_ignores_how_high_the_scores_are() -> None:
    from train.mining import mining_weights

    # a model whose event scores are high everywhere: the threshold alone would mine everything
    peaks = np.zeros((20, 4), dtype=np.float32)
    peaks[:, 0] = np.linspace(0.6, 0.99, 20)
    _, fired = mining_weights(peaks, [0, 1, 2], threshold=0.5, boost=4.0)
    assert fired.all()
    weights, fired = mining_weights(peaks, [0, 1, 2], threshold=0.5, boost=4.0, top=0.1)
    assert np.flatnonzero(fired).tolist() == [18, 19]  # the worst tenth
    assert weights[fired].tolist() == [5.0, 5.0]
