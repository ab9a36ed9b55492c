"""A durable on-disk queue of messages waiting for delivery, one queue per endpoint.

A message is committed here *before* any delivery attempt and deleted only once delivered, so a
crash, a SIGKILL or a power cut between detection and delivery loses nothing: the next process
that opens the same file delivers what is left.

The file itself (schema, records, lock, opening) is :mod:`edge_detect.outbox_file`.

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

Faults of the storage never stop detection and never lose a message silently:

- **A corrupt file** (not a database, a malformed image), found when opening it or later, is
  moved aside as ``<name>.corrupt-<time>`` (kept for inspection, with its ``-wal``/``-shm``), the
  pending messages that can still be read from it are salvaged into a new file, and the owner is
  told (``on_storage('outbox_replaced', detail)``).
- **A full or failing disk**: a write that fails (``database or disk is full``) is kept in
  memory instead, in order (new messages, and delivered/retry/dead decisions), up to
  ``max_memory`` messages, and written when the disk accepts it again (tried at most every
  ``STORAGE_RETRY_S``, on puts and delivery-thread reads). Reads honour the decisions kept in
  memory: a delivered message is never sent again because its deletion could not be written.
  The owner is told once when writing fails (``'outbox_unwritable'``, naming the cause) and
  once when it works again (``'outbox_writable'``); beyond ``max_memory`` the oldest kept
  message is dropped with an error log line (bounded memory comes first on a device).

Only one process may deliver from an outbox at a time (an exclusive ``flock`` on ``<path>.lock``,
released by the kernel even on SIGKILL); a second one gets a
:class:`~edge_detect.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TextIO

from edge_detect.errors import ConfigError
from edge_detect.outbox_file import (
    DeadLetter,
    Kept,
    Record,
    StorageEvent,
    connect,
    is_corruption,
    is_storage_fault,
    lock_outbox,
    move_aside,
    salvage,
)
from edge_detect.strict import make_folder

__all__ = [
    "DEFAULT_MAX_DEAD",
    "DEFAULT_MAX_MEMORY",
    "DEFAULT_MAX_PENDING",
    "Outbox",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 10_000
"""About 5 MB of alerts: days of a busy detector with the network down."""
DEFAULT_MAX_DEAD = 1_000
MAX_BODY_BYTES = 64 * 1024
"""An alert is a few hundred bytes; anything near this is a bug, not an alert."""
DEFAULT_MAX_MEMORY = 1_000
"""Messages kept in memory at most while the outbox cannot be written (about 500 KB)."""
STORAGE_RETRY_S = 2.0
"""Least time between two attempts to write what is kept in memory, seconds."""


class Outbox:
    """The durable queue. Thread-safe: the audio thread puts, delivery threads take.

    Parameters
    ----------
    path
        SQLite file (its folder is created if missing, never the folder's parents).
    max_pending
        Most records kept pending over all endpoints; see the module docstring for the policy.
    max_dead
        Most dead letters kept (newest win).
    on_overflow
        Called with a detail (never a secret) when records are evicted, at most once per
        ``overflow_report_s`` seconds (0: every eviction); settable later. It may put here.
    max_memory
        Most messages kept in memory while the file cannot be written.
    on_storage
        ``on_storage(event, detail)`` when the file was replaced, cannot be written, or can be
        written again (module docstring); settable later; never called under the lock.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_dead: int = DEFAULT_MAX_DEAD,
        on_overflow: Callable[[str], None] | None = None,
        overflow_report_s: float = 600.0,
        max_memory: int = DEFAULT_MAX_MEMORY,
        on_storage: StorageEvent | None = None,
    ) -> None:
        if max_pending < 1 or max_dead < 0 or max_memory < 1:
            raise ConfigError(
                f"outbox sizes must be max_pending >= 1, max_dead >= 0 and max_memory >= 1; got "
                f"max_pending={max_pending}, max_dead={max_dead}, max_memory={max_memory}"
            )
        self.path = Path(path)
        self.max_pending = max_pending
        self.max_dead = max_dead
        self.max_memory = max_memory
        self.on_overflow = on_overflow
        self.on_storage = on_storage
        self.overflow_report_s = overflow_report_s
        self._last_report = -math.inf
        self._unreported = 0
        self._reporting = False
        self._lock = threading.Lock()
        self.evicted = 0
        """Records evicted because the outbox was full, since this object was opened."""
        self.lost = 0
        """Messages dropped because the memory queue was full while the disk was."""
        self.replaced: list[Path] = []
        """Corrupt files moved aside by this object."""
        self.write_error: str | None = None
        """Why the last write failed, while writes fail (None: the file is writable)."""
        self._kept: deque[Kept] = deque()
        self._decided: dict[int, tuple[Any, ...]] = {}
        """seq -> ('delivered',) | ('dead', reason, now, attempted) | ('retry', at, error, n):
        decisions about records that could not be written yet."""
        self._next_try = 0.0
        self._notices: list[tuple[str, str]] = []
        make_folder(self.path.parent, "the outbox folder")
        self._lock_file: TextIO | None = lock_outbox(self.path)
        self._db: sqlite3.Connection | None = None
        try:
            self._db = self._open_or_replace()
        except BaseException:
            self._lock_file.close()
            self._lock_file = None
            raise

    # -- opening, and replacing a corrupt file -----------------------------------------------

    def _open_or_replace(self) -> sqlite3.Connection | None:
        """The connection; a corrupt file is replaced, a full disk leaves None (kept in memory
        until the file can be made); any other failure is a ConfigError naming the path."""
        try:
            return connect(self.path)
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                return self._replace_corrupt(exc)
            if is_storage_fault(exc):
                self._storage_failed(exc)
                return None
            raise ConfigError(
                f"outbox {self.path} cannot be opened ({exc}); point the outbox at a writable "
                "folder"
            ) from None

    def _replace_corrupt(self, exc: BaseException) -> sqlite3.Connection | None:
        """Move the corrupt file aside, start a new one, salvage what can still be read."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        aside = move_aside(self.path)
        self.replaced.append(aside)
        salvaged = salvage(aside)
        self._decided.clear()  # their seqs belong to the old file
        self._kept.extendleft(reversed(salvaged))
        log.error(
            "outbox %s is corrupt (%s): moved aside to %s, a new one started, %d pending "
            "message(s) salvaged",
            self.path,
            exc,
            aside.name,
            len(salvaged),
        )
        self._notices.append(
            (
                "outbox_replaced",
                f"outbox {self.path.name} was corrupt ({exc}); moved aside to {aside.name}, a "
                f"new one started, {len(salvaged)} pending message(s) salvaged",
            )
        )
        try:
            db: sqlite3.Connection | None = connect(self.path)
        except sqlite3.DatabaseError as again:
            if not is_storage_fault(again):
                raise ConfigError(f"outbox {self.path} cannot be created: {again}") from None
            self._storage_failed(again)
            db = None
        self._db = db
        self._next_try = 0.0
        if db is not None:
            self._write_back()
        return self._db

    # -- what is kept in memory while the disk is full -----------------------------------------

    def _storage_failed(self, exc: BaseException) -> None:
        """A write failed on a full or failing disk (lock held): remember, tell once."""
        self._rollback()
        self._next_try = time.monotonic() + STORAGE_RETRY_S
        if self.write_error is None:
            self.write_error = str(exc)
            log.error(
                "outbox %s cannot be written (%s): messages are kept in memory (up to %d) and "
                "written when it can be",
                self.path,
                exc,
                self.max_memory,
            )
            self._notices.append(
                (
                    "outbox_unwritable",
                    f"outbox {self.path.name}: {exc}; messages kept in memory (up to "
                    f"{self.max_memory}) until it can be written",
                )
            )

    def _rollback(self) -> None:
        if self._db is not None and self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:  # the original error matters more; never hide it
                log.debug("outbox rollback: %s", exc)

    def _keep(self, endpoints: tuple[str, ...], message_id: str, body: bytes, now: float) -> None:
        if len(self._kept) >= self.max_memory:
            dropped = self._kept.popleft()
            self.lost += 1
            log.error(
                "outbox %s: memory queue full (%d messages, the disk still cannot be written): "
                "message %s lost",
                self.path,
                self.max_memory,
                dropped.message_id,
            )
        self._kept.append(Kept(endpoints, message_id, body, now))

    def _write_back(self) -> bool:
        """Write what is kept in memory (lock held); True when nothing is left in memory."""
        if not self._kept and not self._decided and self._db is not None:
            return True
        if time.monotonic() < self._next_try:
            return False
        try:
            if self._db is None:
                self._db = connect(self.path)
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            for seq, decision in list(self._decided.items()):
                self._apply(seq, decision)
            evicted: list[str] = []
            for kept in self._kept:
                evicted += self._insert(kept.endpoints, kept.message_id, kept.body, kept.now)[1]
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc):
                self._replace_corrupt(exc)
                return False
            if not is_storage_fault(exc):
                raise
            self._storage_failed(exc)
            return False
        written = len(self._kept)
        self._kept.clear()
        self._decided.clear()
        self._log_evictions(evicted)
        if self.write_error is not None:
            log.warning(
                "outbox %s can be written again: %d message(s) written from memory",
                self.path,
                written,
            )
            self._notices.append(
                (
                    "outbox_writable",
                    f"outbox {self.path.name} can be written again; {written} message(s) "
                    "written from memory",
                )
            )
            self.write_error = None
        return True

    def _apply(self, seq: int, decision: tuple[Any, ...]) -> None:
        """Write one decision kept in memory (inside a transaction; lock held)."""
        assert self._db is not None
        if decision[0] == "delivered":
            self._db.execute("DELETE FROM pending WHERE seq=?", (seq,))
        elif decision[0] == "retry":
            _, at, error, failures = decision
            self._db.execute(
                "UPDATE pending SET attempts=attempts+?, next_attempt_at=?, last_error=? "
                "WHERE seq=?",
                (failures, at, error, seq),
            )
        else:
            _, reason, now, attempted = decision
            if attempted:
                self._db.execute("UPDATE pending SET attempts=attempts+1 WHERE seq=?", (seq,))
            if self._db.execute("SELECT 1 FROM pending WHERE seq=?", (seq,)).fetchone():
                self._move_to_dead(seq, reason, now)

    def _decide(self, seq: int, decision: tuple[Any, ...]) -> None:
        """Apply a decision about a record now, or keep it in memory if the disk refuses."""
        with self._lock:
            if self._write_back():
                try:
                    self._db.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
                    self._apply(seq, decision)
                    self._db.execute("COMMIT")  # type: ignore[union-attr]
                    decision = ()
                except sqlite3.DatabaseError as exc:
                    if is_corruption(exc):
                        self._replace_corrupt(exc)
                        decision = ()  # the record went with the old file (or was salvaged)
                    elif not is_storage_fault(exc):
                        self._rollback()
                        raise
                    else:
                        self._storage_failed(exc)
            if decision:
                if decision[0] == "retry" and seq in self._decided:
                    decision = (*decision[:3], self._decided[seq][3] + 1)
                self._decided[seq] = decision
        self._tell()

    def _tell(self) -> None:
        """Hand the notices raised under the lock to ``on_storage`` (outside the lock)."""
        with self._lock:
            notices, self._notices = self._notices, []
        for event, detail in notices:
            if self.on_storage is not None:
                try:
                    self.on_storage(event, detail)
                except Exception:  # noqa: BLE001 - the owner's report must not break the queue
                    log.exception("outbox %s: reporting %s failed", self.path, event)

    @property
    def in_memory(self) -> int:
        """Messages and decisions waiting in memory to be written."""
        return len(self._kept) + len(self._decided)

    # -- writing ---------------------------------------------------------------------------

    def put(
        self, endpoints: Iterable[str], message_id: str, body: bytes, *, now: float
    ) -> list[int]:
        """Commit one message for each endpoint in one transaction (fsynced before returning).

        Putting a message id an endpoint already holds pending is a no-op for that endpoint, so
        a caller may safely repeat a put after a crash. Returns the new records' seqs (none
        when the message had to be kept in memory: the disk is full; see the module docstring).
        """
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(
                f"message {message_id} is {len(body)} bytes; the outbox takes at most "
                f"{MAX_BODY_BYTES} (an alert is a few hundred)"
            )
        targets = tuple(endpoints)
        seqs: list[int] = []
        evicted: list[str] = []
        with self._lock:
            if not self._write_back():
                self._keep(targets, message_id, body, now)
            else:
                try:
                    self._db.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
                    seqs, evicted = self._insert(targets, message_id, body, now)
                    self._db.execute("COMMIT")  # type: ignore[union-attr]
                except sqlite3.DatabaseError as exc:
                    seqs, evicted = [], []
                    if is_corruption(exc):
                        self._replace_corrupt(exc)
                    elif not is_storage_fault(exc):
                        self._rollback()
                        raise
                    else:
                        self._storage_failed(exc)
                    self._keep(targets, message_id, body, now)
                    self._write_back()
        self._log_evictions(evicted)
        self._tell()
        return seqs

    def _insert(
        self, endpoints: tuple[str, ...], message_id: str, body: bytes, now: float
    ) -> tuple[list[int], list[str]]:
        """INSERT for each endpoint, evicting when full (inside a transaction; lock held)."""
        assert self._db is not None
        seqs: list[int] = []
        evicted: list[str] = []
        for endpoint in endpoints:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO pending (endpoint, message_id, body, created_at, "
                "next_attempt_at) VALUES (?, ?, ?, ?, ?)",
                (endpoint, message_id, body, now, now),
            )
            if cursor.rowcount and cursor.lastrowid is not None:
                seqs.append(cursor.lastrowid)
                evicted += self._evict_if_full(endpoint, now)
        return seqs, evicted

    def _log_evictions(self, evicted: list[str]) -> None:
        for detail in evicted:
            self.evicted += 1
            log.warning("%s", detail)
        if evicted:
            self._report_overflow(len(evicted), evicted[-1])

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
        assert self._db is not None
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
        assert self._db is not None
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

    def mark_delivered(self, seq: int) -> None:
        """Delete a delivered record (committed and fsynced before returning; kept in memory,
        and never handed out again, when the disk refuses)."""
        self._decide(seq, ("delivered",))

    def schedule_retry(self, seq: int, *, next_attempt_at: float, error: str) -> None:
        """Count one failed attempt and set when the next may happen."""
        self._decide(seq, ("retry", next_attempt_at, error, 1))

    def dead_letter(self, seq: int, reason: str, *, now: float, attempted: bool = True) -> None:
        """Give up on one record: move it to the dead letters with the reason."""
        self._decide(seq, ("dead", reason, now, attempted))

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work(db)`` in one transaction (lock held by the caller)."""
        if self._db is None:
            raise sqlite3.OperationalError(f"outbox {self.path} is not open: {self.write_error}")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = work(self._db)
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return result

    def disable_endpoint(self, endpoint: str, target: str, reason: str, *, now: float) -> None:
        """Mark an endpoint disabled (e.g. after HTTP 410 Gone); its messages stay pending, and
        new ones are still queued, until it is enabled again."""
        with self._lock:
            self._transaction(
                lambda db: db.execute(
                    "INSERT OR REPLACE INTO endpoints (name, target, disabled_reason, disabled_at) "
                    "VALUES (?, ?, ?, ?)",
                    (endpoint, target, reason, now),
                )
            )

    def enable_endpoint(self, endpoint: str) -> bool:
        """Enable a disabled endpoint again; True if it was disabled."""
        with self._lock:
            cursor = self._transaction(
                lambda db: db.execute(
                    "UPDATE endpoints SET disabled_reason=NULL, disabled_at=NULL "
                    "WHERE name=? AND disabled_reason IS NOT NULL",
                    (endpoint,),
                )
            )
        return bool(cursor.rowcount)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return [] if self._db is None else self._db.execute(sql, params).fetchall()

    def disabled_reason(self, endpoint: str) -> str | None:
        """Why an endpoint is disabled (None: it is enabled). Another process may change it
        (``edge-detect webhook enable``), so delivery threads ask again."""
        rows = self._query("SELECT disabled_reason FROM endpoints WHERE name=?", (endpoint,))
        return None if not rows or rows[0][0] is None else str(rows[0][0])

    def endpoints(self) -> dict[str, str | None]:
        """Every endpoint this outbox knows, with why it is disabled (None: enabled)."""
        return dict(self._query("SELECT name, disabled_reason FROM endpoints"))

    def register_endpoint(self, endpoint: str, target: str) -> str | None:
        """Record an endpoint's target; returns why it is disabled, or None if it is enabled.

        An endpoint disabled for one target (e.g. a URL that answered 410 Gone) is enabled again
        when it is configured with a different target.
        """
        with self._lock:
            if self._db is None:
                return None
            row = self._db.execute(
                "SELECT target, disabled_reason FROM endpoints WHERE name=?", (endpoint,)
            ).fetchone()
            if row is not None and row[0] == target:
                return None if row[1] is None else str(row[1])
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO endpoints (name, target, disabled_reason, "
                    "disabled_at) VALUES (?, ?, NULL, NULL)",
                    (endpoint, target),
                )
            except sqlite3.OperationalError as exc:
                if not is_storage_fault(exc):
                    raise
                log.warning("outbox %s: cannot record endpoint %s: %s", self.path, endpoint, exc)
            return None

    # -- reading ---------------------------------------------------------------------------

    def _not_gone(self, where: str, params: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
        """``where`` narrowed to records not delivered or dead-lettered in memory."""
        gone = tuple(seq for seq, d in self._decided.items() if d[0] != "retry")
        if not gone:
            return where, params
        return f"{where} AND seq NOT IN ({','.join('?' * len(gone))})", params + gone

    def _select(self, where: str, params: tuple[Any, ...], limit: str = "") -> list[Record]:
        """Pending records as the decisions kept in memory leave them (lock held)."""
        if self._db is None:
            return []
        where, params = self._not_gone(where, params)
        rows = self._db.execute(
            "SELECT seq, endpoint, message_id, body, created_at, attempts, next_attempt_at, "
            f"last_error FROM pending WHERE {where} ORDER BY seq {limit}",
            params,
        ).fetchall()
        records = []
        for row in rows:
            record = Record(*row)
            decision = self._decided.get(record.seq)
            if decision is not None:  # a retry decided but not written yet
                _, at, error, failures = decision
                record = dataclasses.replace(
                    record,
                    attempts=record.attempts + failures,
                    next_attempt_at=at,
                    last_error=error,
                )
            records.append(record)
        return records

    def _read(self, where: str, params: tuple[Any, ...], limit: str = "") -> list[Record]:
        with self._lock:
            self._write_back()  # a delivery thread's read is when a full disk is tried again
            try:
                records = self._select(where, params, limit)
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise
                self._replace_corrupt(exc)
                records = self._select(where, params, limit)
        self._tell()
        return records

    def head(self, endpoint: str) -> Record | None:
        """The oldest pending record of an endpoint (the only one that may be attempted)."""
        records = self._read("endpoint=?", (endpoint,), "LIMIT 1")
        return records[0] if records else None

    def pending(self, endpoint: str | None = None) -> list[Record]:
        """Every pending record written to the file (of one endpoint, or all), oldest first."""
        return self._read("endpoint=?", (endpoint,)) if endpoint else self._read("1", ())

    def pending_count(self, endpoint: str | None = None) -> int:
        """Messages waiting for delivery, those kept in memory included."""
        where, params = ("endpoint=?", (endpoint,)) if endpoint is not None else ("1", ())
        with self._lock:
            kept = sum(
                len(k.endpoints) if endpoint is None else k.endpoints.count(endpoint)
                for k in self._kept
            )
            if self._db is None:
                return kept
            where, params = self._not_gone(where, params)
            (count,) = self._db.execute(
                f"SELECT COUNT(*) FROM pending WHERE {where}", params
            ).fetchone()
        return int(count) + kept

    def dead_letters(self, endpoint: str | None = None) -> list[DeadLetter]:
        """The dead letters (of one endpoint, or all), oldest first."""
        where, params = ("WHERE endpoint=?", (endpoint,)) if endpoint is not None else ("", ())
        columns = "seq, endpoint, message_id, body, created_at, attempts, dead_at, reason"
        rows = self._query(f"SELECT {columns} FROM dead {where} ORDER BY seq", params)
        return [DeadLetter(*row) for row in rows]

    def retry_storage(self) -> bool:
        """Try to write what is kept in memory now; True when nothing is left in memory."""
        with self._lock:
            self._next_try = 0.0
            done = self._write_back()
        self._tell()
        return done

    def close(self) -> None:
        """Close the database and release the process lock (idempotent). What is still kept in
        memory is tried once more and reported if it cannot be written."""
        with self._lock:
            if self._kept or self._decided:
                self._next_try = 0.0
                self._write_back()
                if self._kept:
                    log.error(
                        "outbox %s: %d message(s) could not be written before exit (%s): lost",
                        self.path,
                        len(self._kept),
                        self.write_error,
                    )
            if self._db is not None:
                self._db.close()
                self._db = None
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Outbox({str(self.path)!r}, max_pending={self.max_pending})"
