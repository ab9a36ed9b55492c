"""Teaching it a new sound from a folder: the class folder, the small-split warnings, the shipped
background features, and the README's "Teach it a new sound" section run end to end.

The end-to-end test runs the README's commands as written (only the time limit is shorter) on
real, licence-clean recordings committed in ``tests/fixtures/teach`` (ESC-10 baby cries, CC BY
3.0; built by ``tests/fixtures/make_teach_fixture.py``) with no background folder, so the shipped
background features serve, and expects an alert on a cry from a recording it never heard.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

from edge_detect.errors import DatasetError  # noqa: E402
from edge_detect.features import FeatureConfig, log_mel  # noqa: E402
from train.background_bank import (  # noqa: E402
    IGNORE,
    BankSequenceBuilder,
    dequantise,
    load_bank,
    quantise,
    validation_negatives,
)
from train.config import CHECKOUT, TrainConfig, load_config  # noqa: E402
from train.folder import folder_config, read_folder, split_warnings, zero_error_bound  # noqa: E402
from train.sequences import IGNORE as TRAINER_IGNORE  # noqa: E402
from train.sequences import ClipAudio, SequenceBuilder, frame_activity  # noqa: E402
from train.splits import split_clips  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
RATE = 16_000
PRESET = CHECKOUT / "train" / "configs" / "default.toml"


def _tone(seconds: float, hz: float, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            sf.write(root / label / f"{label}_{i}.wav", _tone(0.5, 300 + 50 * i), RATE)
    return root


def test_a_class_folder_becomes_labels_with_background_last(tmp_path: Path) -> None:
    data, clips = read_folder(_folder(tmp_path / "d", {"zz_chime": 3, "background": 4, "knock": 5}))
    assert data.labels == ["knock", "zz_chime", "background"]
    assert data.events == ["knock", "zz_chime"]
    assert data.counts == {"knock": 5, "zz_chime": 3, "background": 4}
    assert len(clips) == 12


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"background": 5}, r"holds only background/; expected at least one more sub-folder"),
        ({"knock": 2, "background": 5}, r"class\(es\) \{'knock': 2\} have fewer than 3 clips"),
    ],
)
def test_a_folder_that_cannot_train_says_what_is_missing(
    tmp_path: Path, counts: dict[str, int], message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        read_folder(_folder(tmp_path / "d", counts))


def test_six_validation_clips_warn_instead_of_a_silent_zero_error(tmp_path: Path) -> None:
    """The issue's case: 40 clips of a sound and 80 of background give 6 and 12 validation clips,
    and a validation error of 0.0 on them means little."""
    folder = _folder(tmp_path / "d", {"glass": 40, "background": 80})
    config, _ = folder_config(folder, tmp_path / "run", PRESET)
    parts, _ = split_clips(config)
    warnings = split_warnings(parts, config.data.labels, config.data.val_fraction)
    assert len(warnings) == 2
    assert warnings[0].startswith("class 'glass' has only 6 validation clip(s)")
    assert "true error of up to 39% (95% bound)" in warnings[0]
    assert "about 133 per class" in warnings[0]
    big = _folder(tmp_path / "big", {"glass": 140, "background": 140})
    config, _ = folder_config(big, tmp_path / "run2", PRESET)
    parts, _ = split_clips(config)
    assert split_warnings(parts, config.data.labels, config.data.val_fraction) == []


def test_zero_error_bound_is_the_exact_clopper_pearson_bound() -> None:
    # 0 errors in n trials: P(0 errors | p) = (1 - p) ** n = 0.05 at the bound
    for n in (1, 6, 20, 100):
        assert (1 - zero_error_bound(n)) ** n == pytest.approx(0.05)
    assert zero_error_bound(0) == 1.0


def test_folder_config_keeps_the_preset_and_sets_the_folder_data(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "d", {"knock": 4})
    config, data = folder_config(folder, tmp_path / "run", PRESET)
    preset = load_config(PRESET)
    assert not data.has_background
    assert config.data.labels == ["knock", "background"]
    assert config.data.exclude_licenses == []
    assert config.optim.out_dir == str((tmp_path / "run").resolve())
    assert config.features == preset.features and config.model.hidden_size == 64
    rows = (tmp_path / "run" / "folder_manifest.csv").read_text().splitlines()
    assert rows[0] == "path,label,group,source" and len(rows) == 5


def test_quantised_features_are_within_half_a_step() -> None:
    rng = np.random.default_rng(0)
    features = log_mel(0.1 * rng.standard_normal(RATE).astype(np.float32), FeatureConfig())
    error = np.abs(dequantise(quantise(features)) - features)
    assert error.max() <= (9.5 + 18.5) / 255 / 2 + 1e-6


def test_shipped_background_parts_are_distinct_recordings_of_a_few_minutes() -> None:
    features = load_config(PRESET).features
    train_part, val_part = load_bank(features, "train"), load_bank(features, "val")
    assert not set(train_part.sources) & set(val_part.sources)
    assert train_part.minutes > 5 and val_part.minutes > 0.3
    assert (
        FIXTURES.parent.parent / "train" / "assets" / "background_bank.npz"
    ).stat().st_size < 3e6
    with pytest.raises(DatasetError, match="holds features for"):
        load_bank(FeatureConfig(n_mels=40), "train")


def _bank_builder(config: TrainConfig, event: np.ndarray, **augment: Any) -> BankSequenceBuilder:
    table = config.to_dict()
    table["augment"].update(augment)
    config = TrainConfig.from_dict(table)
    active, power = frame_activity(event, config.features, config.augment.active_db)
    clip = ClipAudio(clip=None, target=0, audio=event, active=active, frame_power=power)  # type: ignore[arg-type]
    return BankSequenceBuilder(config, [clip], load_bank(config.features, "train"), 1)


def test_bank_sequences_hold_the_event_exactly_where_it_is_not_mixed() -> None:
    config = load_config(PRESET)
    event = np.concatenate([_tone(1.0, 440), np.zeros(RATE // 2, np.float32)])
    builder = _bank_builder(config, event, mix_prob=0.0, lowpass_prob=0.0, gain_db=0.0)
    features, targets = builder.build(0, np.random.default_rng(1))
    span = np.flatnonzero(targets != 1)
    first, n = span[0], 150  # the event's 1.5 s: 150 frames of 10 ms
    assert span[-1] - first < n and targets[first] == 0
    assert (targets[first + 110 : first + n] == IGNORE).all()  # the silent half second
    assert (targets[:first] == 1).all() and (targets[first + n :] == 1).all()
    alone = log_mel(np.pad(event, (0, 240)), config.features)[:n]
    np.testing.assert_allclose(features[first : first + n], alone, atol=1e-4)
    assert IGNORE == TRAINER_IGNORE


def test_bank_mixing_adds_background_power_under_the_event() -> None:
    config = load_config(PRESET)
    event = _tone(1.0, 440)
    builder = _bank_builder(config, event, mix_prob=1.0, lowpass_prob=0.0, gain_db=0.0)
    features, targets = builder.build(0, np.random.default_rng(2))
    first = int(np.flatnonzero(targets == 0)[0])
    alone = log_mel(np.pad(event, (0, 240)), config.features)[:100]
    mixed = features[first : first + 100]
    assert (mixed >= alone - 1e-4).all()  # power only adds
    assert (mixed > alone + 0.1).mean() > 0.2  # and the bed is heard in the quiet bands


def test_a_folder_without_background_validates_thresholds_on_shipped_background() -> None:
    """Without negatives every threshold looks free of false alarms and the lowest one wins."""
    config = load_config(PRESET)
    builder = _bank_builder(config, _tone(1.0, 440))
    negatives = validation_negatives(builder, np.random.default_rng(0))
    assert len(negatives) >= 10  # minutes of it, in 5 s pieces
    for features, targets in negatives:
        assert features.shape == (500, config.features.n_mels) and (targets == 1).all()
    active, power = frame_activity(_tone(1.0, 440), config.features, 30.0)
    clip = ClipAudio(clip=None, target=1, audio=_tone(1.0, 440), active=active, frame_power=power)  # type: ignore[arg-type]
    with_clips = SequenceBuilder(config, [clip], [clip], 1)
    assert validation_negatives(with_clips, np.random.default_rng(0)) == []


def test_bank_low_pass_quietens_the_bands_above_the_cut_off_only() -> None:
    config = load_config(PRESET)
    event = _tone(1.0, 440)
    plain = _bank_builder(config, event, mix_prob=0.0, lowpass_prob=0.0, gain_db=0.0)
    low = _bank_builder(
        config,
        event,
        mix_prob=0.0,
        lowpass_prob=1.0,
        gain_db=0.0,
        lowpass_min_hz=2500.0,
        lowpass_max_hz=2500.0,
    )
    a, _ = plain.build(0, np.random.default_rng(3))
    b, _ = low.build(0, np.random.default_rng(3))
    centres = low.centres_hz
    assert np.allclose(a[:, centres < 2400], b[:, centres < 2400], atol=1e-4)
    high = centres > 3000
    assert (b[:, high] <= a[:, high] + 1e-4).all()
    assert (a[:, high] - b[:, high]).mean() > 5  # cut by more than 5 nepers (43 dB) on average


def _readme_teach_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Teach it a new sound", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's 'Teach it a new sound' section has no sh block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


@pytest.mark.slow
def test_readme_teach_section_end_to_end_alerts_on_an_unseen_cry(tmp_path: Path) -> None:
    """Run the README's commands as written in a folder holding ``my_sounds/`` (cries only, no
    background/): train, export, run on a cry it never heard mixed into street noise."""
    shutil.copytree(FIXTURES / "teach", tmp_path / "my_sounds")
    bed, rate = sf.read(FIXTURES / "background_street.wav", dtype="float32")
    cry, _ = sf.read(FIXTURES / "teach_unseen_cry.flac", dtype="float32")
    # 8 s of street music heard through a window (-20 dB: -40 dBFS), the cry (-17 dBFS) at 2 s.
    # At full level (-20 dBFS) this music raises a false alarm of its own with a model taught
    # from 11 cries (BENCHMARKS.md, "Teach it a new sound").
    street = 0.1 * np.concatenate([bed, bed])
    mix = street.copy()
    mix[2 * rate : 2 * rate + len(cry)] += cry
    sf.write(tmp_path / "recording.wav", mix, rate, subtype="PCM_16")
    sf.write(tmp_path / "street.wav", street, rate, subtype="PCM_16")
    commands = _readme_teach_commands()
    assert [c.split()[:2] for c in commands] == [
        ["edge-detect", "train"],
        ["edge-detect", "export"],
        ["edge-detect", "run"],
    ]
    outputs = []
    bin_dir = Path(sys.executable).parent
    for command in commands:
        # the README's time limit, shortened for the test suite
        argv = shlex.split(re.sub(r"--time-limit-s \d+", "--time-limit-s 150", command))
        argv[0] = str(bin_dir / argv[0])
        result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
        outputs.append(result)
    summary = json.loads(outputs[0].stdout.strip().splitlines()[-1])
    assert summary["checkpoint"].endswith("checkpoint.pt")
    assert "warnings" in summary  # 12 clips cannot give a trustworthy validation set
    assert summary["background"].startswith("the shipped background features")
    alerts = [json.loads(line) for line in outputs[2].stdout.splitlines()]
    assert [a["class"] for a in alerts] == ["baby_cry"], outputs[2].stderr[-2000:]
    assert 1.5 <= alerts[0]["offset_s"] <= 4.5
    negative = subprocess.run(
        [*argv[:-1], "street.wav"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert negative.returncode == 0 and negative.stdout == "", negative.stdout


@pytest.mark.slow
def test_train_data_reports_held_out_alerts_through_the_runtime_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With background recordings in the folder, the summary carries what eval stream measured
    on the held-out clips: detections per ratio, latency and false alarms per hour."""
    from edge_detect.cli import main

    rng = np.random.default_rng(0)
    folder = tmp_path / "my_sounds"
    for i in range(12):
        (folder / "beep").mkdir(parents=True, exist_ok=True)
        (folder / "background").mkdir(parents=True, exist_ok=True)
        beep = np.concatenate([_tone(0.4, 900 + 40 * i, 0.4), np.zeros(RATE // 5, np.float32)])
        sf.write(folder / "beep" / f"{i}.wav", beep, RATE)
        noise = (0.02 * rng.standard_normal(2 * RATE)).astype(np.float32)
        sf.write(folder / "background" / f"{i}.wav", noise, RATE)
    run = tmp_path / "run"
    argv = ["train", "--data", str(folder), "--out", str(run), "--epochs", "2", "--no-progress"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["model"] == str(run / "model.onnx") and (run / "model.onnx").is_file()
    assert summary["background"] == f"{folder}/background (12 clips)"
    held = summary["heldout_stream"]
    assert isinstance(held, dict), held
    beep = held["per_class"]["beep"]
    assert set(beep["detected"]) == {"-6 dB", "+0 dB", "+6 dB"}
    assert all(re.fullmatch(r"\d+/\d+", v) for v in beep["detected"].values())
    assert isinstance(beep["false_alarms_per_hour"], float)
    assert held["event_free_hours"] == 0.5
    table = (run / "heldout_stream.txt").read_text()
    assert "FA/h" in table and "beep" in table
    assert summary["heldout_stream_table"] == str(run / "heldout_stream.txt")
