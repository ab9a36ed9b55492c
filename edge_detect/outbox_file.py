"""The outbox's SQLite file: its schema and records, the one-process lock, opening it, and
what is left of a corrupt one.

Storage is SQLite (standard library) in WAL mode with ``synchronous=FULL``. ``NORMAL`` is enough
to survive a process crash in WAL mode, but it may lose the last committed transactions on power
loss; a Raspberry Pi loses power far more often than a server, and alerts arrive at most a few per
minute, so one fsync per alert costs nothing that matters and buys power-loss durability.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from edge_detect.errors import ConfigError

__all__ = [
    "OUTBOX_SCHEMA_VERSION",
    "DeadLetter",
    "Kept",
    "Record",
    "StorageEvent",
    "connect",
    "is_corruption",
    "is_storage_fault",
    "lock_outbox",
    "move_aside",
    "salvage",
]

log = logging.getLogger(__name__)

OUTBOX_SCHEMA_VERSION = 1
_BUSY_TIMEOUT_S = 5.0
_STORAGE_FAULTS = ("disk is full", "disk i/o error", "readonly database", "out of memory")
"""SQLite messages of storage faults (as opposed to a wrong path or a corrupt file)."""

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


def is_storage_fault(exc: BaseException) -> bool:
    """True for SQLite errors that come from a full or failing disk (they may pass)."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        text in str(exc).lower() for text in _STORAGE_FAULTS
    )


def is_corruption(exc: BaseException) -> bool:
    """True for a file that is not (or no longer) a usable database."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


StorageEvent = Callable[[str, str], None]
"""``on_storage(event, detail)``: 'outbox_replaced', 'outbox_unwritable', 'outbox_writable'."""


@dataclass
class Kept:
    """A message kept in memory (the disk was full) or salvaged from a corrupt file."""

    endpoints: tuple[str, ...]
    message_id: str
    body: bytes
    now: float


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


def lock_outbox(path: Path) -> TextIO:
    """Take the exclusive process lock of the outbox at ``path`` (``<path>.lock``); the returned
    handle holds it until closed (the kernel releases it even on SIGKILL)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        handle = open(lock_path, "a+")  # noqa: SIM115 -- held open for the outbox's lifetime
    except OSError as exc:
        raise ConfigError(
            f"cannot open the outbox {path} ({lock_path.name}: {exc.strerror or exc}); "
            "point the outbox at a writable folder"
        ) from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"outbox {path} is in use by another edge-detect process; "
            "stop it, or give this one its own outbox path"
        ) from None
    return handle


def connect(path: Path) -> sqlite3.Connection:
    """Open the outbox file (WAL, synchronous=FULL) and make sure it holds our schema.

    sqlite3 errors are raised as they are (the caller tells corruption from a full disk); a file
    of another schema version is a ConfigError.
    """
    db = sqlite3.connect(
        path,
        timeout=_BUSY_TIMEOUT_S,
        isolation_level=None,  # explicit BEGIN/COMMIT below
        check_same_thread=False,  # guarded by self._lock
    )
    try:
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
            raise ConfigError(
                f"outbox {path} has schema version {row[0]}, this edge-detect writes "
                f"version {OUTBOX_SCHEMA_VERSION}; deliver or move the old file aside"
            )
    except BaseException:
        db.close()
        raise
    if str(mode).lower() != "wal":
        log.warning("outbox %s: WAL journal not available (got %s)", path, mode)
    return db


def move_aside(path: Path) -> Path:
    """Rename a corrupt outbox (and its ``-wal``/``-shm``: an old WAL beside a new file would
    corrupt that too) to ``<name>.corrupt-<time>``; returns the new path of the file."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            os.replace(part, aside.with_name(aside.name + suffix))
    return aside


def salvage(path: Path) -> list[Kept]:
    """The pending messages that can still be read from a corrupt outbox file, oldest first
    (none when it cannot be read at all)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return []
    try:
        rows = db.execute(
            "SELECT endpoint, message_id, body, created_at FROM pending ORDER BY seq"
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        db.close()
    return [Kept((str(e),), str(m), bytes(b), float(t)) for e, m, b, t in rows]
