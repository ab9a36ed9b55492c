"""A durable on-disk queue of messages waiting for delivery, one queue per endpoint.

A message is committed here *before* any delivery attempt and deleted only once delivered, so a
crash, a SIGKILL or a power cut between detection and delivery loses nothing: the next process
that opens the same file delivers what is left.

Storage is SQLite (standard library) in WAL mode with ``synchronous=FULL``. ``NORMAL`` is enough
to survive a process crash in WAL mode, but it may lose the last committed transactions on power
loss; a Raspberry Pi loses power far more often than a server, and alerts arrive at most a few per
minute, so one fsync per alert costs nothing that matters and buys power-loss durability.

Ordering: records of one endpoint are delivered strictly in the order they were put (the oldest
pending record is the head; nothing behind it is tried until it is delivered or dead-lettered).

Size policy (never silent): the queue holds at most ``max_pending`` records. When a new record
would exceed that, the *oldest* pending record (whichever endpoint holds it: usually the one that
has been down longest) moves to the dead-letter table with the reason ``evicted: outbox full``, a
warning is logged for each, and ``on_overflow`` is called (at most once per
``overflow_report_s``, so the pipeline can turn it into an ``overflow`` health event that goes
through this same outbox without a storm). Newest alerts are kept because a baby crying
now matters more than a dog that barked two days ago while the network was down. The dead-letter
table keeps the newest ``max_dead`` records; older dead letters are dropped (already reported).

Only one process may deliver from an outbox at a time (an exclusive ``flock`` on ``<path>.lock``,
released by the kernel even on SIGKILL); a second one gets a
:class:`~edge_detect.errors.ConfigError`.
"""

from __future__ import annotations

import fcntl
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edge_detect.errors import ConfigError

__all__ = [
    "DEFAULT_MAX_DEAD",
    "DEFAULT_MAX_PENDING",
    "DeadLetter",
    "Outbox",
    "Record",
    "make_folder",
]

log = logging.getLogger(__name__)

OUTBOX_SCHEMA_VERSION = 1
DEFAULT_MAX_PENDING = 10_000
"""About 5 MB of alerts: days of a busy detector with the network down."""
DEFAULT_MAX_DEAD = 1_000
MAX_BODY_BYTES = 64 * 1024
"""An alert is a few hundred bytes; anything near this is a bug, not an alert."""
_BUSY_TIMEOUT_S = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    UNIQUE (endpoint, message_id)
);
CREATE INDEX IF NOT EXISTS pending_head ON pending (endpoint, seq);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    dead_at REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    disabled_reason TEXT,
    disabled_at REAL
);
"""


def make_folder(path: Path, what: str) -> None:
    """Create ``path`` if missing, but never its parents: a typo such as ``/var/lib/edge-detcet/x``
    must be an error naming it, not a new tree of folders. ConfigError when it cannot be made."""
    if path.is_dir():
        return
    if not path.parent.is_dir():
        raise ConfigError(
            f"cannot create {what} {path}: its parent {path.parent} does not exist; "
            "create it first, or check the path for a typo"
        )
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {what} {path}: {exc.strerror or exc}; choose a writable folder"
        ) from None


@dataclass(frozen=True)
class Record:
    """One pending message for one endpoint."""

    seq: int
    """Position in the outbox; increases with every put (ordering key)."""
    endpoint: str
    message_id: str
    """The message's id (``webhook-id``); the same on every attempt."""
    body: bytes
    created_at: float
    """Wall-clock time of the put, seconds since the epoch."""
    attempts: int
    """Delivery attempts made so far."""
    next_attempt_at: float
    """Clock time before which no attempt is made, seconds."""
    last_error: str | None


@dataclass(frozen=True)
class DeadLetter:
    """A message given up on, with the reason."""

    seq: int
    endpoint: str
    message_id: str
    body: bytes
    created_at: float
    attempts: int
    dead_at: float
    reason: str


class Outbox:
    """The durable queue. Thread-safe: the audio thread puts, delivery threads take.

    Parameters
    ----------
    path
        SQLite file (created with its folder if missing).
    max_pending
        Most records kept pending over all endpoints; see the module docstring for the policy.
    max_dead
        Most dead letters kept (newest win).
    on_overflow
        Called with a human-readable detail (never a secret) when records are evicted, at most
        once per ``overflow_report_s``; settable later as the ``on_overflow`` attribute (e.g.
        ``lambda detail: pipeline.health("overflow", detail)``). It may put into this outbox.
    overflow_report_s
        Least time between two ``on_overflow`` calls, seconds (0: every eviction).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_dead: int = DEFAULT_MAX_DEAD,
        on_overflow: Callable[[str], None] | None = None,
        overflow_report_s: float = 600.0,
    ) -> None:
        if max_pending < 1 or max_dead < 0:
            raise ConfigError(
                f"outbox sizes must be max_pending >= 1 and max_dead >= 0; got "
                f"max_pending={max_pending}, max_dead={max_dead}"
            )
        self.path = Path(path)
        self.max_pending = max_pending
        self.max_dead = max_dead
        self.on_overflow = on_overflow
        self.overflow_report_s = overflow_report_s
        self._last_report = -math.inf
        self._unreported = 0
        self._reporting = False
        self._lock = threading.Lock()
        self.evicted = 0
        """Records evicted because the outbox was full, since this object was opened."""
        make_folder(self.path.parent, "the outbox folder")
        self._lock_file: TextIO | None = self._acquire_process_lock()
        try:
            self._db = self._open()
        except BaseException:
            self._lock_file.close()
            self._lock_file = None
            raise

    def _acquire_process_lock(self) -> TextIO:
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            handle = open(lock_path, "a+")  # noqa: SIM115 -- held open for the outbox's lifetime
        except OSError as exc:
            raise ConfigError(
                f"cannot open the outbox {self.path} ({lock_path.name}: {exc.strerror or exc}); "
                "point the outbox at a writable folder"
            ) from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigError(
                f"outbox {self.path} is in use by another edge-detect process; "
                "stop it, or give this one its own outbox path"
            ) from None
        return handle

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,
                isolation_level=None,  # explicit BEGIN/COMMIT below
                check_same_thread=False,  # guarded by self._lock
            )
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?)",
                    (str(OUTBOX_SCHEMA_VERSION),),
                )
            elif row[0] != str(OUTBOX_SCHEMA_VERSION):
                db.close()
                raise ConfigError(
                    f"outbox {self.path} has schema version {row[0]}, this edge-detect writes "
                    f"version {OUTBOX_SCHEMA_VERSION}; deliver or move the old file aside"
                )
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"outbox {self.path} is not a usable SQLite outbox ({exc}); "
                "move the file aside or point the outbox at a new path"
            ) from exc
        if str(mode).lower() != "wal":
            log.warning("outbox %s: WAL journal not available (got %s)", self.path, mode)
        return db

    # -- writing ---------------------------------------------------------------------------

    def put(
        self, endpoints: Iterable[str], message_id: str, body: bytes, *, now: float
    ) -> list[int]:
        """Commit one message for each endpoint in one transaction (fsynced before returning).

        Putting a message id an endpoint already holds pending is a no-op for that endpoint, so
        a caller may safely repeat a put after a crash. Returns the new records' seqs.
        """
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(
                f"message {message_id} is {len(body)} bytes; the outbox takes at most "
                f"{MAX_BODY_BYTES} (an alert is a few hundred)"
            )
        seqs: list[int] = []
        evicted: list[str] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for endpoint in endpoints:
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO pending (endpoint, message_id, body, created_at, "
                        "next_attempt_at) VALUES (?, ?, ?, ?, ?)",
                        (endpoint, message_id, body, now, now),
                    )
                    if cursor.rowcount and cursor.lastrowid is not None:
                        seqs.append(cursor.lastrowid)
                        evicted += self._evict_if_full(endpoint, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        for detail in evicted:
            self.evicted += 1
            log.warning("%s", detail)
        if evicted:
            self._report_overflow(len(evicted), evicted[-1])
        return seqs

    def _report_overflow(self, count: int, detail: str) -> None:
        self._unreported += count
        now = time.monotonic()
        if (
            self.on_overflow is None
            or self._reporting  # the callback's own put evicted: counted for the next report
            or now - self._last_report < self.overflow_report_s
        ):
            return
        self._last_report, total, self._unreported = now, self._unreported, 0
        self._reporting = True
        try:
            self.on_overflow(f"{total} message(s) evicted since the last report; latest: {detail}")
        finally:
            self._reporting = False

    def _evict_if_full(self, endpoint: str, now: float) -> list[str]:
        (count,) = self._db.execute("SELECT COUNT(*) FROM pending").fetchone()
        details = []
        while count > self.max_pending:
            row = self._db.execute("SELECT seq FROM pending ORDER BY seq LIMIT 1").fetchone()
            reason = f"evicted: outbox full ({self.max_pending} pending records)"
            victim = self._move_to_dead(row[0], reason, now)
            details.append(
                f"outbox {self.path} full ({self.max_pending} pending): oldest message "
                f"{victim} moved to the dead letters"
            )
            count -= 1
        return details

    def _move_to_dead(self, seq: int, reason: str, now: float) -> str:
        row = self._db.execute(
            "SELECT endpoint, message_id, body, created_at, attempts FROM pending WHERE seq=?",
            (seq,),
        ).fetchone()
        self._db.execute(
            "INSERT OR REPLACE INTO dead (seq, endpoint, message_id, body, created_at, attempts, "
            "dead_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, *row, now, reason),
        )
        self._db.execute("DELETE FROM pending WHERE seq=?", (seq,))
        self._db.execute(
            "DELETE FROM dead WHERE seq NOT IN (SELECT seq FROM dead ORDER BY seq DESC LIMIT ?)",
            (self.max_dead,),
        )
        return str(row[1])

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def mark_delivered(self, seq: int) -> None:
        """Delete a delivered record (committed and fsynced before returning)."""
        self._write("DELETE FROM pending WHERE seq=?", (seq,))

    def schedule_retry(self, seq: int, *, next_attempt_at: float, error: str) -> None:
        """Count one failed attempt and set when the next may happen."""
        self._write(
            "UPDATE pending SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE seq=?",
            (next_attempt_at, error, seq),
        )

    def dead_letter(self, seq: int, reason: str, *, now: float, attempted: bool = True) -> None:
        """Give up on one record: move it to the dead letters with the reason."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if attempted:
                    self._db.execute("UPDATE pending SET attempts=attempts+1 WHERE seq=?", (seq,))
                self._move_to_dead(seq, reason, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def disable_endpoint(self, endpoint: str, target: str, reason: str, *, now: float) -> int:
        """Disable an endpoint and dead-letter everything it holds; returns how many."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO endpoints (name, target, disabled_reason, disabled_at) "
                    "VALUES (?, ?, ?, ?)",
                    (endpoint, target, reason, now),
                )
                seqs = [
                    seq
                    for (seq,) in self._db.execute(
                        "SELECT seq FROM pending WHERE endpoint=? ORDER BY seq", (endpoint,)
                    ).fetchall()
                ]
                for seq in seqs:
                    self._move_to_dead(seq, reason, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return len(seqs)

    def register_endpoint(self, endpoint: str, target: str) -> str | None:
        """Record an endpoint's target; returns why it is disabled, or None if it is enabled.

        An endpoint disabled for one target (e.g. a URL that answered 410 Gone) is enabled again
        when it is configured with a different target.
        """
        with self._lock:
            row = self._db.execute(
                "SELECT target, disabled_reason FROM endpoints WHERE name=?", (endpoint,)
            ).fetchone()
            if row is not None and row[0] == target:
                return None if row[1] is None else str(row[1])
            self._db.execute(
                "INSERT OR REPLACE INTO endpoints (name, target, disabled_reason, disabled_at) "
                "VALUES (?, ?, NULL, NULL)",
                (endpoint, target),
            )
            return None

    # -- reading ---------------------------------------------------------------------------

    def head(self, endpoint: str) -> Record | None:
        """The oldest pending record of an endpoint (the only one that may be attempted)."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, endpoint, message_id, body, created_at, attempts, next_attempt_at, "
                "last_error FROM pending WHERE endpoint=? ORDER BY seq LIMIT 1",
                (endpoint,),
            ).fetchone()
        return None if row is None else Record(*row)

    def pending(self, endpoint: str | None = None) -> list[Record]:
        """Every pending record (of one endpoint, or all), oldest first."""
        where, params = ("WHERE endpoint=?", (endpoint,)) if endpoint is not None else ("", ())
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, endpoint, message_id, body, created_at, attempts, next_attempt_at, "
                f"last_error FROM pending {where} ORDER BY seq",
                params,
            ).fetchall()
        return [Record(*row) for row in rows]

    def pending_count(self, endpoint: str | None = None) -> int:
        """Records waiting for delivery, for one endpoint or all."""
        where, params = ("WHERE endpoint=?", (endpoint,)) if endpoint is not None else ("", ())
        with self._lock:
            (count,) = self._db.execute(f"SELECT COUNT(*) FROM pending {where}", params).fetchone()
        return int(count)

    def dead_letters(self, endpoint: str | None = None) -> list[DeadLetter]:
        """The dead letters (of one endpoint, or all), oldest first."""
        where, params = ("WHERE endpoint=?", (endpoint,)) if endpoint is not None else ("", ())
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, endpoint, message_id, body, created_at, attempts, dead_at, reason "
                f"FROM dead {where} ORDER BY seq",
                params,
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def close(self) -> None:
        """Close the database and release the process lock (idempotent)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, max_pending={self.max_pending})"
