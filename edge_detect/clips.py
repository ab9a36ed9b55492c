"""Audio clips around alerts: what was heard, for the user to check and for retraining.

A :class:`ClipRecorder` keeps the last ``pre_roll_s`` of audio in a ring buffer. When an alert is
made, :meth:`ClipRecorder.start_clip` names the clip's file at once (so ``Alert.clip`` can carry
it) and keeps collecting ``post_roll_s`` more; the finished clip is written by a background
thread as 16-bit mono WAV, first to a hidden temporary name and then renamed, so a reader never
sees half a file. Retention keeps at most ``max_clips`` files and ``max_bytes`` bytes in the
folder, deleting the oldest clips first.

A clip that cannot be written (a full disk) leaves no temporary file behind and is kept in memory
(at most ``MAX_WAITING_CLIPS``) and written when the disk accepts it again, tried every
``RETRY_S``; the cause is logged once and raised as a ``clips_unwritable`` health event (and
``clips_writable`` when it works again). The writer thread is supervised.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_detect.audio import check_rate, write_wav
from edge_detect.errors import ConfigError
from edge_detect.strict import make_folder
from edge_detect.supervise import HealthReporter, Supervised

__all__ = ["CLIP_STAMP_FORMAT", "CLIP_SUFFIX", "ClipRecorder"]

log = logging.getLogger(__name__)

CLIP_SUFFIX = ".wav"
MAX_WAITING_CLIPS = 20
"""Clips kept in memory at most while the folder cannot be written (10 s each: ~13 MB)."""
RETRY_S = 5.0
"""How often a clip that could not be written is tried again, seconds."""
CLOSE_WAIT_S = 30.0
"""Longest wait at close for the clips still to be written."""
_RETRY = object()  # the writer's wake-up to try the waiting clips again
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
        self._queue: queue.Queue[Any] = queue.Queue()
        self._waiting: deque[_PendingClip] = deque()
        """Clips that could not be written yet (a full disk), oldest first."""
        self.write_error: str | None = None
        self.written = 0
        self.failed = 0
        """Clips given up on (the memory queue was full)."""
        self.report: HealthReporter | None = None
        """Where health events go (the pipeline sets its ``health``)."""
        self._stop = threading.Event()
        self._writer = Supervised(
            "clip writer", self._write_loop, stop=self._stop, report=self._health
        ).start()

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

    def _health(self, event: str, detail: str) -> None:
        if self.report is not None:
            self.report(event, detail)

    def _write_loop(self) -> None:
        while True:
            try:
                clip = self._queue.get(timeout=RETRY_S if self._waiting else None)
            except queue.Empty:
                clip = _RETRY
            if clip is None:  # close(): a last try for what waits
                self._write_waiting()
                return
            if clip is not _RETRY:
                if len(self._waiting) >= MAX_WAITING_CLIPS:
                    dropped = self._waiting.popleft()
                    self.failed += 1
                    log.error(
                        "clip %s dropped: %d clips wait to be written",
                        dropped.path,
                        MAX_WAITING_CLIPS,
                    )
                self._waiting.append(clip)
            self._write_waiting()

    def _write_waiting(self) -> None:
        """Write the waiting clips in order; stop at the first that the disk refuses."""
        while self._waiting:
            clip = self._waiting[0]
            samples = np.concatenate([clip.pre, *clip.post]) if clip.post else clip.pre
            tmp = clip.path.with_name("." + clip.path.name + ".tmp")
            try:
                write_wav(tmp, samples, self.sample_rate_hz)
                os.replace(tmp, clip.path)
            except OSError as exc:
                tmp.unlink(missing_ok=True)  # never leave a half or empty file behind
                if self.write_error is None:
                    self.write_error = exc.strerror or str(exc)
                    log.error(
                        "could not write clip %s (%s): kept in memory (up to %d clips) and "
                        "tried again every %.0f s",
                        clip.path,
                        self.write_error,
                        MAX_WAITING_CLIPS,
                        RETRY_S,
                    )
                    self._health(
                        "clips_unwritable",
                        f"clip folder {self.directory}: {self.write_error}; clips wait in memory",
                    )
                return
            self._waiting.popleft()
            self.written += 1
            if self.write_error is not None:
                log.warning("clips can be written again (%s)", self.directory)
                self._health("clips_writable", f"clip folder {self.directory} can be written again")
                self.write_error = None
            self._enforce_retention()

    def collect(self) -> Iterable[tuple[str, Mapping[str, str], float]]:
        """Clips written, waiting in memory and dropped, and the writer thread's state."""
        yield from self._writer.figures()
        yield "edge_detect_clips_written_total", {}, float(self.written)
        yield "edge_detect_clips_waiting", {}, float(len(self._waiting))
        yield "edge_detect_clips_dropped_total", {}, float(self.failed)

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
        self._writer.join(CLOSE_WAIT_S)
        self._stop.set()
        if self._waiting:
            log.error(
                "%d clip(s) could not be written before exit (%s)",
                len(self._waiting),
                self.write_error,
            )
