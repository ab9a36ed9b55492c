"""On-disk cache of decoded audio and log-mel features, keyed by audio content and FeatureConfig.

Layout under the cache root (default ``$EDGE_DETECT_CACHE``, else ``.cache/features`` in the
checkout, which git ignores)::

    index.json                      path -> (size, mtime, ctime, inode, content hash), samples
    audio-16000-v1/ab/<sha256>.npy  float32 (samples,) at 16 kHz
    logmel-<config hash>-v1/ab/<sha256>.npy   float32 (frames, n_mels)
    logmel-<config hash>-v1/feature_config.json

Entries are named by the SHA-256 of the file's bytes, so a renamed or copied file hits the cache
and an edited one misses it; the feature directory is named by a hash of the FeatureConfig, so a
different front end never reads stale features. Hashing 140 MB of audio on every run would cost
more than the cached run itself, so ``index.json`` remembers each file's hash together with its
size, mtime, ctime and inode: a file whose stat is unchanged is not re-read (ctime cannot be set
from user space, so even a copy that preserves mtime is noticed). Every write goes to a temporary
file first and is then renamed (``os.replace``): a crash never leaves half an entry, and parallel
runs at worst compute the same entry twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from edge_detect.errors import AudioError
from edge_detect.features import FeatureConfig, log_mel
from train.audio_io import read_audio
from train.datasets import Clip

__all__ = ["CACHE_ENV", "FeatureCache", "LoadResult", "config_hash", "default_cache_root"]

log = logging.getLogger(__name__)

CACHE_ENV = "EDGE_DETECT_CACHE"
"""Environment variable that moves the cache (e.g. to a bigger disk)."""

CACHE_FORMAT_VERSION = 1
"""Bump when decoding, resampling or log-mel code changes what an entry holds."""

_INDEX_NAME = "index.json"
_INDEX_SAVE_EVERY = 256
"""New index entries after which the index is written even mid-run (a crash keeps most)."""
_HASH_BLOCK_BYTES = 1 << 20


def default_cache_root() -> Path:
    """``$EDGE_DETECT_CACHE`` if set, else ``<checkout>/.cache/features``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".cache" / "features"


def config_hash(config: FeatureConfig) -> str:
    """Short stable hash of a FeatureConfig's fields (sorted JSON)."""
    blob = json.dumps(config.to_dict(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _hash_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_HASH_BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Index:
    """``files``: absolute path -> [size, mtime_ns, ctime_ns, inode, sha256];
    ``samples``: "sha256@rate" -> decoded length. Saved atomically, merged with other writers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files, self.samples = self._read()
        self.unsaved = 0

    def _read(self) -> tuple[dict[str, list[Any]], dict[str, int]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != CACHE_FORMAT_VERSION:
                return {}, {}
            return dict(data["files"]), {k: int(v) for k, v in data["samples"].items()}
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable cache index %s (%s)", self.path, exc)
            return {}, {}

    def changed(self) -> None:
        self.unsaved += 1
        if self.unsaved >= _INDEX_SAVE_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.unsaved:
            return
        files, samples = self._read()
        files.update(self.files)
        samples.update(self.samples)
        self.files, self.samples = files, samples
        blob = json.dumps(
            {"version": CACHE_FORMAT_VERSION, "files": files, "samples": samples},
            separators=(",", ":"),
        ).encode()
        _atomic_write(self.path, lambda handle: handle.write(blob))
        self.unsaved = 0


@dataclass
class LoadResult:
    """What :meth:`FeatureCache.load_many` returns.

    ``clips[i]`` has array ``features[i]`` (float32 ``(frames, n_mels)`` for ``what="features"``,
    ``(samples,)`` at the config's rate for ``what="audio"``) and decoded duration
    ``durations_s[i]`` (``features`` is empty when called with ``load=False``). Clips that
    could not be read are in ``skipped`` with the reason.
    """

    clips: list[Clip] = field(default_factory=list)
    features: list[npt.NDArray[np.float32]] = field(default_factory=list)
    durations_s: list[float] = field(default_factory=list)
    skipped: list[tuple[Clip, str]] = field(default_factory=list)
    hits: int = 0
    """Clips served from the cache."""
    misses: int = 0
    """Clips whose entry had to be computed (decoded and, for features, transformed)."""


class FeatureCache:
    """Decoded audio and log-mel features of audio files, computed once and kept on disk.

    Parameters
    ----------
    root : path, optional
        Cache folder; default :func:`default_cache_root`.
    feature_config : FeatureConfig, optional
        The front end; default ``FeatureConfig()``. Audio is cached at its ``sample_rate_hz``.

    Attributes
    ----------
    decode_count : int
        Audio files decoded from their source by this object (a cache hit decodes nothing).
    """

    def __init__(
        self, root: str | Path | None = None, feature_config: FeatureConfig | None = None
    ) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.feature_config = feature_config or FeatureConfig()
        rate = self.feature_config.sample_rate_hz
        self.audio_dir = self.root / f"audio-{rate}-v{CACHE_FORMAT_VERSION}"
        self.feature_dir = (
            self.root / f"logmel-{config_hash(self.feature_config)}-v{CACHE_FORMAT_VERSION}"
        )
        self.decode_count = 0
        self._index = _Index(self.root / _INDEX_NAME)
        # single features()/audio() calls also get their index saved, when the object goes away
        weakref.finalize(self, self._index.flush)

    def flush(self) -> None:
        """Write the index now (load_many does it at its end)."""
        self._index.flush()

    def content_hash(self, path: str | Path) -> str:
        """SHA-256 of the file's bytes, from the index when the file's stat is unchanged."""
        path = Path(path)
        key = os.path.abspath(path)
        try:
            st = os.stat(path)
            stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            known = self._index.files.get(key)
            if known is not None and known[:4] == stamp:
                return str(known[4])
            content = _hash_file(path)
        except OSError as exc:
            raise AudioError(f"cannot read audio file {path}: {exc.strerror or exc}") from None
        self._index.files[key] = [*stamp, content]
        self._index.changed()
        return content

    def _sample_key(self, content: str) -> str:
        return f"{content}@{self.feature_config.sample_rate_hz}"

    # ---- entries ----

    def _entry(self, directory: Path, content: str) -> Path:
        return directory / content[:2] / f"{content}.npy"

    def _load_entry(self, path: Path, ndim: int, mmap: bool) -> npt.NDArray[np.float32] | None:
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("recomputing unreadable cache entry %s (%s)", path, exc)
            return None
        n_mels = self.feature_config.n_mels
        if (
            array.dtype != np.float32
            or array.ndim != ndim
            or (ndim == 2 and array.shape[1] != n_mels)
        ):
            log.warning("recomputing cache entry %s of unexpected shape %s", path, array.shape)
            return None
        return array

    def _store(self, path: Path, array: npt.NDArray[np.float32]) -> None:
        _atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))

    def _decode(self, path: Path, content: str) -> npt.NDArray[np.float32]:
        samples = read_audio(path, self.feature_config.sample_rate_hz)
        self.decode_count += 1
        self._index.samples[self._sample_key(content)] = len(samples)
        self._index.changed()
        return samples

    def _audio(
        self, path: Path, content: str, *, store: bool, mmap: bool = False
    ) -> tuple[npt.NDArray[np.float32], bool]:
        """(samples, came from the cache)."""
        entry = self._entry(self.audio_dir, content)
        cached = self._load_entry(entry, 1, mmap)
        if cached is not None:
            return cached, True
        samples = self._decode(path, content)
        if store:
            self._store(entry, samples)
        return samples, False

    def audio(self, path: str | Path, *, mmap: bool = False) -> npt.NDArray[np.float32]:
        """Mono float32 waveform of ``path`` at the config's rate, shape ``(samples,)``.

        Decoded (:func:`train.audio_io.read_audio`) on the first call, from the cache after.
        ``mmap=True`` maps the cached file read-only instead of reading it.

        Raises
        ------
        AudioError
            The file cannot be read or decoded (the message names it).
        """
        path = Path(path)
        return self._audio(path, self.content_hash(path), store=True, mmap=mmap)[0]

    def _features(
        self, path: Path, content: str, mmap: bool
    ) -> tuple[npt.NDArray[np.float32], bool]:
        entry = self._entry(self.feature_dir, content)
        cached = self._load_entry(entry, 2, mmap)
        if cached is not None:
            return cached, True
        config_file = self.feature_dir / "feature_config.json"
        if not config_file.is_file():  # for people browsing the cache
            blob = json.dumps(self.feature_config.to_dict(), indent=2, sort_keys=True).encode()
            _atomic_write(config_file, lambda handle: handle.write(blob))
        samples, _ = self._audio(path, content, store=False)
        features = log_mel(samples, self.feature_config)
        self._store(entry, features)
        return features, False

    def features(self, path: str | Path, *, mmap: bool = False) -> npt.NDArray[np.float32]:
        """Log-mel features of ``path``: float32, shape ``(frames, n_mels)``.

        ``frames = feature_config.num_frames(samples)`` (0 for a clip shorter than one window).
        Computed with :func:`edge_detect.features.log_mel` on the first call (from the cached
        waveform if :meth:`audio` stored one), read from the cache after.

        Raises
        ------
        AudioError
            The file cannot be read or decoded (the message names it).
        """
        path = Path(path)
        return self._features(path, self.content_hash(path), mmap)[0]

    def num_samples(self, path: str | Path) -> int:
        """Length of the decoded waveform at the config's rate (decodes only if unknown)."""
        path = Path(path)
        return self._num_samples(path, self.content_hash(path))

    def _num_samples(self, path: Path, content: str) -> int:
        known = self._index.samples.get(self._sample_key(content))
        if known is None:  # the index was lost but entries remain: measure once more
            known = len(self._audio(path, content, store=False, mmap=True)[0])
            self._index.samples[self._sample_key(content)] = known
            self._index.changed()
        return known

    # ---- many clips ----

    def load_many(
        self,
        clips: Sequence[Clip],
        *,
        what: Literal["features", "audio"] = "features",
        strict: bool = False,
        progress: bool = True,
        mmap: bool = False,
        load: bool = True,
    ) -> LoadResult:
        """Features (or waveforms) of many clips, skipping and reporting the unreadable ones.

        Parameters
        ----------
        clips : sequence of Clip
        what : "features" or "audio"
            float32 ``(frames, n_mels)`` log-mel, or float32 ``(samples,)`` waveforms.
        strict : bool
            Raise the first clip's AudioError instead of skipping it.
        progress : bool
            Show a progress bar on stderr (when tqdm is installed).
        mmap : bool
            Map cached arrays read-only instead of reading them (fast when only a few are used).
        load : bool
            False: only make sure every entry is in the cache (compute the missing ones) and
            measure durations; ``features`` stays empty. What ``edge-detect data stats`` does.

        Returns
        -------
        LoadResult
            Kept clips with their arrays and decoded durations; skipped clips with reasons.
        """
        if what not in ("features", "audio"):
            raise ValueError(f"what must be 'features' or 'audio', got {what!r}")
        result = LoadResult()
        rate = self.feature_config.sample_rate_hz
        try:
            for clip in _progress(clips, progress, f"{what} ({self.root})"):
                try:
                    content = self.content_hash(clip.path)
                    directory = self.feature_dir if what == "features" else self.audio_dir
                    array: npt.NDArray[np.float32] | None = None
                    if not load and self._entry(directory, content).is_file():
                        hit = True
                    elif what == "features":
                        array, hit = self._features(clip.path, content, mmap)
                    else:
                        array, hit = self._audio(clip.path, content, store=True, mmap=mmap)
                    samples = self._num_samples(clip.path, content)
                except AudioError as exc:
                    if strict:
                        raise
                    log.warning("skipping %s: %s", clip.path, exc)
                    result.skipped.append((clip, str(exc)))
                    continue
                result.clips.append(clip)
                if array is not None and load:
                    result.features.append(array)
                result.durations_s.append(samples / rate)
                if hit:
                    result.hits += 1
                else:
                    result.misses += 1
        finally:
            self._index.flush()
        if result.skipped:
            log.warning(
                "skipped %d of %d clips that could not be read (use strict mode to stop at the "
                "first one)",
                len(result.skipped),
                len(clips),
            )
        return result


def _progress(items: Sequence[Clip], enabled: bool, desc: str) -> Iterable[Clip]:
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return _log_progress(items, desc)
    bar: Iterable[Clip] = tqdm(items, desc=desc, unit="clip", file=sys.stderr, leave=False)
    return bar


def _log_progress(items: Sequence[Clip], desc: str) -> Iterator[Clip]:
    """Fallback without tqdm: a log line every few seconds."""
    last = time.monotonic()
    for i, item in enumerate(items):
        if time.monotonic() - last > 5.0:
            log.info("%s: %d/%d clips", desc, i, len(items))
            last = time.monotonic()
        yield item
