"""Audio clips around alerts: what was heard, for the user to check and for retraining.

A :class:`ClipRecorder` keeps the last ``pre_roll_s`` of audio in a ring buffer. When an alert is
made, :meth:`ClipRecorder.start_clip` names the clip's file at once (so ``Alert.clip`` can carry
it) and keeps collecting ``post_roll_s`` more; the finished clip is written by a background
thread as 16-bit mono WAV, first to a hidden temporary name and then renamed, so a reader never
sees half a file. Retention keeps at most ``max_clips`` files and ``max_bytes`` bytes in the
folder, deleting the oldest clips first.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_detect.audio import check_rate, write_wav
from edge_detect.errors import ConfigError
from edge_detect.outbox import make_folder

__all__ = ["CLIP_STAMP_FORMAT", "CLIP_SUFFIX", "ClipRecorder"]

log = logging.getLogger(__name__)

CLIP_SUFFIX = ".wav"
CLIP_STAMP_FORMAT = "%Y%m%dT%H%M%S"
"""UTC time of the alert at the start of a clip's name: ``<stamp>_<class>_<alert id[:12]>.wav``
(``edge-detect clips`` reads names back)."""
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class _PendingClip:
    path: Path
    pre: npt.NDArray[np.float32]
    remaining: int
    """Post-roll samples still to collect."""
    post: list[npt.NDArray[np.float32]] = field(default_factory=list)


class ClipRecorder:
    """Pre-roll ring buffer plus post-roll, written as WAV with retention.

    Parameters
    ----------
    directory
        Folder of the clips (created if missing). Only ``*.wav`` files written here are managed.
    sample_rate_hz
        Rate of the audio given to :meth:`push`, in Hz.
    pre_roll_s, post_roll_s
        Audio kept before and collected after :meth:`start_clip`, in seconds.
    max_clips
        Most clips kept (oldest deleted first); 0 = no count limit.
    max_bytes
        Most bytes of clips kept (oldest deleted first); 0 = no size limit.
    """

    def __init__(
        self,
        directory: str | Path,
        sample_rate_hz: int,
        *,
        pre_roll_s: float = 5.0,
        post_roll_s: float = 5.0,
        max_clips: int = 200,
        max_bytes: int = 200 * 1024 * 1024,
    ) -> None:
        self.sample_rate_hz = check_rate(sample_rate_hz)
        if not (pre_roll_s >= 0 and post_roll_s >= 0 and max_clips >= 0 and max_bytes >= 0):
            raise ConfigError(
                "clips need pre_roll_s >= 0, post_roll_s >= 0, max_clips >= 0 and max_bytes >= 0; "
                f"got {pre_roll_s}, {post_roll_s}, {max_clips}, {max_bytes}"
            )
        self.directory = Path(directory)
        make_folder(self.directory, "the clip folder")
        self.max_clips = max_clips
        self.max_bytes = max_bytes
        self._pre_samples = round(pre_roll_s * self.sample_rate_hz)
        self._post_samples = round(post_roll_s * self.sample_rate_hz)
        self._ring = np.zeros(self._pre_samples, dtype=np.float32)  # (pre_samples,)
        self._filled = 0  # valid samples in the ring (less than its size at the start)
        self._pos = 0  # next write position in the ring
        self._pending: list[_PendingClip] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[_PendingClip | None] = queue.Queue()
        self._writer = threading.Thread(target=self._write_loop, name="clip writer", daemon=True)
        self._writer.start()
        self.written = 0
        self.failed = 0

    def push(self, samples: npt.ArrayLike) -> None:
        """Add one block of mono float samples (any length), in order, as they are heard."""
        block = np.asarray(samples, dtype=np.float32).reshape(-1)  # (n,)
        with self._lock:
            still = []
            for clip in self._pending:
                take = block[: clip.remaining]
                clip.post.append(take.copy())
                clip.remaining -= len(take)
                if clip.remaining > 0:
                    still.append(clip)
                else:
                    self._queue.put(clip)
            self._pending = still
            self._remember(block)

    def _remember(self, block: npt.NDArray[np.float32]) -> None:
        size = self._pre_samples
        if size == 0:
            return
        if len(block) >= size:
            self._ring[:] = block[-size:]
            self._pos, self._filled = 0, size
            return
        end = self._pos + len(block)
        if end <= size:
            self._ring[self._pos : end] = block
        else:
            split = size - self._pos
            self._ring[self._pos :] = block[:split]
            self._ring[: end - size] = block[split:]
        self._pos = end % size
        self._filled = min(size, self._filled + len(block))

    def _pre_roll(self) -> npt.NDArray[np.float32]:
        if self._filled < self._pre_samples:
            return self._ring[: self._filled].copy()
        return np.concatenate([self._ring[self._pos :], self._ring[: self._pos]])

    def start_clip(self, alert_id: str, label: str, when: datetime | None = None) -> Path:
        """Begin a clip now (pre-roll from the buffer); returns the path it will be written to."""
        stamp = (when or datetime.now(timezone.utc)).strftime(CLIP_STAMP_FORMAT)
        safe_label = _SAFE_NAME.sub("_", label).strip("_")
        name = f"{stamp}_{safe_label}_{_SAFE_NAME.sub('_', alert_id[:12])}{CLIP_SUFFIX}"
        path = self.directory / name
        with self._lock:
            clip = _PendingClip(path=path, pre=self._pre_roll(), remaining=self._post_samples)
            if clip.remaining == 0:
                self._queue.put(clip)
            else:
                self._pending.append(clip)
        return path

    def _write_loop(self) -> None:
        while True:
            clip = self._queue.get()
            if clip is None:
                return
            samples = np.concatenate([clip.pre, *clip.post]) if clip.post else clip.pre
            tmp = clip.path.with_name("." + clip.path.name + ".tmp")
            try:
                write_wav(tmp, samples, self.sample_rate_hz)
                os.replace(tmp, clip.path)
                self.written += 1
                self._enforce_retention()
            except OSError as exc:
                self.failed += 1
                log.error("could not write clip %s: %s", clip.path, exc)

    def _enforce_retention(self) -> None:
        clips = sorted(
            (p for p in self.directory.glob("*" + CLIP_SUFFIX) if p.is_file()),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
        )
        sizes = [p.stat().st_size for p in clips]
        count, total = len(clips), sum(sizes)
        for path, size in zip(clips[:-1], sizes[:-1], strict=True):  # the newest is always kept
            too_many = self.max_clips and count > self.max_clips
            too_big = self.max_bytes and total > self.max_bytes
            if not (too_many or too_big):
                break
            path.unlink(missing_ok=True)
            count, total = count - 1, total - size
            log.info("clip retention: deleted %s", path.name)

    def close(self) -> None:
        """Write the clips still collecting post-roll with what they have, then stop."""
        with self._lock:
            for clip in self._pending:
                self._queue.put(clip)
            self._pending = []
        self._queue.put(None)
        self._writer.join()
