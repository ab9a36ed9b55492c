"""train.cache: features and waveforms computed once, keyed by audio content and FeatureConfig."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

import train.cache  # noqa: E402
from edge_detect.errors import AudioError  # noqa: E402
from edge_detect.features import FeatureConfig, log_mel  # noqa: E402
from train.audio_io import read_audio  # noqa: E402
from train.cache import CACHE_ENV, FeatureCache, default_cache_root  # noqa: E402
from train.datasets import Clip  # noqa: E402

RATE_HZ = 16_000


def _write(path: Path, seconds: float = 0.5, rate_hz: int = RATE_HZ, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sf.write(path, (0.1 * rng.standard_normal(int(rate_hz * seconds))).astype(np.float32), rate_hz)
    return path


def _clip(path: Path, label: str = "x") -> Clip:
    return Clip(path=path, label=label, orig_label=label, group=path.stem)


def _no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache decoded audio although the entry was cached")

    monkeypatch.setattr(train.cache, "read_audio", refuse)


def test_features_match_the_front_end_and_hit_without_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = _write(tmp_path / "a.flac", rate_hz=44_100)
    cache = FeatureCache(tmp_path / "cache")
    first = cache.features(audio)
    expected = log_mel(read_audio(audio), FeatureConfig())
    assert first.dtype == np.float32 and first.shape == (48, 64)
    np.testing.assert_array_equal(first, expected)
    assert cache.decode_count == 1
    np.testing.assert_array_equal(cache.features(audio), first)
    assert cache.decode_count == 1
    del cache  # end of the first run: the index is saved when the object goes away
    # a new object (a new run) reads the cache and never calls the decoder
    _no_decoding(monkeypatch)
    again = FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(again.features(audio), first)
    np.testing.assert_array_equal(again.features(audio, mmap=True), first)
    assert again.decode_count == 0
    assert again.num_samples(audio) == RATE_HZ // 2  # 0.5 s
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_second_run_does_not_rehash_unchanged_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = _write(tmp_path / "a.wav")
    FeatureCache(tmp_path / "cache").load_many([_clip(audio)], progress=False)

    def refuse(path: Path) -> str:
        raise AssertionError(f"an unchanged file was hashed again: {path}")

    monkeypatch.setattr(train.cache, "_hash_file", refuse)
    result = FeatureCache(tmp_path / "cache").load_many([_clip(audio)], progress=False)
    assert result.hits == 1 and result.misses == 0


def test_key_is_the_content_not_the_name(tmp_path: Path) -> None:
    original = _write(tmp_path / "a.wav", seed=1)
    cache = FeatureCache(tmp_path / "cache")
    features = cache.features(original)
    copy = tmp_path / "renamed" / "b.wav"
    copy.parent.mkdir()
    shutil.copy(original, copy)
    np.testing.assert_array_equal(cache.features(copy), features)
    assert cache.decode_count == 1
    # same size, same mtime, new content: the ctime in the stamp still reveals the change
    stat = original.stat()
    _write(original, seed=2)
    os.utime(original, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert original.stat().st_size == stat.st_size
    changed = FeatureCache(tmp_path / "cache").features(original)
    assert not np.array_equal(changed, features)
    np.testing.assert_array_equal(changed, log_mel(read_audio(original)))


def test_feature_config_is_part_of_the_key(tmp_path: Path) -> None:
    audio = _write(tmp_path / "a.wav")
    default = FeatureCache(tmp_path / "cache").features(audio)
    narrow_config = FeatureConfig(n_mels=32, fmax_hz=4_000.0)
    narrow = FeatureCache(tmp_path / "cache", narrow_config)
    features = narrow.features(audio)
    assert default.shape[1] == 64 and features.shape == (default.shape[0], 32)
    np.testing.assert_array_equal(features, log_mel(read_audio(audio), narrow_config))
    assert len(list((tmp_path / "cache").glob("logmel-*"))) == 2


def test_audio_is_cached_and_feeds_the_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audio = _write(tmp_path / "a.ogg", rate_hz=22_050)
    cache = FeatureCache(tmp_path / "cache")
    waveform = cache.audio(audio)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    np.testing.assert_array_equal(waveform, read_audio(audio))
    _no_decoding(monkeypatch)
    np.testing.assert_array_equal(cache.audio(audio), waveform)
    # the features are computed from the cached waveform: no decoder call
    np.testing.assert_array_equal(cache.features(audio), log_mel(waveform))


def test_load_many_skips_and_reports_bad_clips(tmp_path: Path) -> None:
    good = [_write(tmp_path / f"ok{i}.flac", seconds=0.25 * (i + 1), seed=i) for i in range(3)]
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    text = tmp_path / "text.flac"
    text.write_text("not audio " * 50)
    missing = tmp_path / "gone.wav"
    clips = [_clip(good[0]), _clip(empty), _clip(good[1]), _clip(text), _clip(missing)]
    clips.append(_clip(good[2]))
    cache = FeatureCache(tmp_path / "cache")
    result = cache.load_many(clips, progress=False)
    assert [c.path for c in result.clips] == good
    assert result.durations_s == pytest.approx([0.25, 0.5, 0.75])
    assert [f.shape[1] for f in result.features] == [64, 64, 64]
    assert [c.path for c, _ in result.skipped] == [empty, text, missing]
    for clip, reason in result.skipped:
        assert str(clip.path) in reason
    assert (result.hits, result.misses) == (0, 3)
    second = FeatureCache(tmp_path / "cache").load_many(clips, progress=False)
    assert (second.hits, second.misses, len(second.skipped)) == (3, 0, 3)
    for a, b in zip(result.features, second.features, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AudioError, match="empty"):
        cache.load_many(clips, strict=True, progress=False)
    waves = cache.load_many(clips, what="audio", progress=False)
    assert [len(w) for w in waves.features] == [4_000, 8_000, 12_000]


def test_load_false_only_fills_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clips = [_clip(_write(tmp_path / f"{i}.wav", seconds=0.5 * (i + 1), seed=i)) for i in range(2)]
    filled = FeatureCache(tmp_path / "cache").load_many(clips, progress=False, load=False)
    assert filled.features == [] and filled.misses == 2
    assert filled.durations_s == pytest.approx([0.5, 1.0])
    _no_decoding(monkeypatch)
    checked = FeatureCache(tmp_path / "cache").load_many(clips, progress=False, load=False)
    assert (checked.hits, checked.features, checked.durations_s) == (2, [], filled.durations_s)
    loaded = FeatureCache(tmp_path / "cache").load_many(clips, progress=False)
    assert [f.shape for f in loaded.features] == [(48, 64), (98, 64)]


def test_damaged_entry_is_recomputed(tmp_path: Path) -> None:
    audio = _write(tmp_path / "a.wav")
    cache = FeatureCache(tmp_path / "cache")
    features = cache.features(audio)
    (entry,) = cache.feature_dir.rglob("*.npy")
    entry.write_bytes(entry.read_bytes()[:100])
    fresh = FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(fresh.features(audio), features)
    assert fresh.decode_count == 1
    (tmp_path / "cache" / "index.json").write_text("{not json")
    np.testing.assert_array_equal(FeatureCache(tmp_path / "cache").features(audio), features)


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert default_cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv(CACHE_ENV)
    assert default_cache_root().parts[-2:] == (".cache", "features")
