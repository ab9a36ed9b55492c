"""bench/openworld.py: the bundled model's test part leaves out what it trained on; summaries
of a model at its own settings (no calibration record) still carry every aim."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("bench_openworld", ROOT / "bench" / "openworld.py")
assert _spec is not None and _spec.loader is not None
openworld = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(openworld)

FIELDS = ["path", "label", "group"]


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        writer.writerows(rows)
    return path


def test_without_compares_audio_files_not_the_relative_paths_written(tmp_path: Path) -> None:
    audio = tmp_path / "corpus" / "audio"
    # the same two files, named relative to two different folders
    test = _manifest(
        tmp_path / "work" / "split" / "test.csv",
        [
            ("../../corpus/audio/a.wav", "dog_bark", "g1"),
            ("../../corpus/audio/b.wav", "background", "g2"),
            ("../../corpus/audio/c.wav", "background", "g3"),
        ],
    )
    trained = _manifest(
        tmp_path / "elsewhere" / "deeper" / "still" / "train.csv",
        [("../../../corpus/audio/b.wav", "background", "g2"), ("../../../corpus/x.wav", "x", "")],
    )
    out = tmp_path / "work" / "unseen" / "test.csv"
    assert openworld._without(test, trained, out) == 1
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["path"] for row in rows] == [str(audio / "a.wav"), str(audio / "c.wav")]
    assert [row["label"] for row in rows] == ["dog_bark", "background"]


def _stream(ratio: float, miss: float) -> dict:
    cell = {"miss_rate": miss, "f1": 0.5, "onset_to_alert_median_s": 0.2, "events": 10}
    return {"ratio_db": ratio, "per_class": {"dog_bark": cell}, "overall_f1": 0.5}


def test_a_model_at_its_own_settings_is_summarised_without_a_calibration() -> None:
    test = {
        "streams": [_stream(-6.0, 0.5), _stream(0.0, 0.3), _stream(6.0, 0.2)],
        "false_alarms": {"dog_bark": {"per_hour": 0.5}},
        "false_alarms_by_source": {
            "speech": {"per_class": {"dog_bark": {"per_hour": 6.0}}},
            "music": {"per_class": {"dog_bark": {"per_hour": 0.0}}},
        },
        "event_free_hours": 1.0,
        "background_distinct_minutes": 60.0,
    }
    summary = openworld.summarise(test, None)
    row = summary["classes"]["dog_bark"]
    assert row["setting"] is None and summary["val_background_distinct_minutes"] is None
    assert row["worst_source"] == {"kind": "speech", "per_hour": 6.0}
    assert row["aims"] == {
        "false_alarms": True,
        "miss_+6": True,
        "miss_0": True,
        "f1_+6": False,
        "sources": False,
        "latency": True,
    }
    assert "| speech (6.0) |" in openworld.format_table([{**summary, "name": "x"}])
