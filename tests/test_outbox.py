"""The durable outbox: order, idempotent puts, bounded size, dead letters, crash survival."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_detect.errors import ConfigError
from edge_detect.outbox import Outbox


def _ids(records: list) -> list[str]:
    return [r.message_id for r in records]


def test_put_is_durable_ordered_per_endpoint_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        box.put(["a", "b"], "m1", b"one", now=1.0)
        box.put(["a"], "m2", b"two", now=2.0)
        box.put(["b"], "m3", b"three", now=3.0)
        assert box.put(["a"], "m1", b"one", now=4.0) == []  # repeated put: no duplicate
        assert _ids(box.pending("a")) == ["m1", "m2"]
        assert _ids(box.pending("b")) == ["m1", "m3"]
        head = box.head("a")
        assert head is not None and (head.message_id, head.body, head.attempts) == ("m1", b"one", 0)
        box.mark_delivered(head.seq)
    with Outbox(path) as box:  # a new process sees exactly what was committed
        assert _ids(box.pending("a")) == ["m2"]
        assert _ids(box.pending("b")) == ["m1", "m3"]
        assert box.pending_count() == 3


def test_wal_and_full_sync(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        assert box._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert box._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_retry_schedule_and_dead_letter_keep_reason(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.sqlite") as box:
        (seq,) = box.put(["a"], "m1", b"x", now=10.0)
        box.put(["a"], "m2", b"y", now=11.0)
        box.schedule_retry(seq, next_attempt_at=99.0, error="HTTP 503")
        head = box.head("a")
        assert head is not None
        assert (head.attempts, head.next_attempt_at, head.last_error) == (1, 99.0, "HTTP 503")
        box.dead_letter(seq, "HTTP 400 Bad Request: nope", now=12.0)
        assert _ids(box.pending("a")) == ["m2"]  # the queue moves on
        (dead,) = box.dead_letters("a")
        assert (dead.message_id, dead.attempts, dead.reason) == (
            "m1",
            2,
            "HTTP 400 Bad Request: nope",
        )


def test_full_outbox_evicts_oldest_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    overflow: list[str] = []
    path = tmp_path / "o.sqlite"
    with Outbox(path, max_pending=3, max_dead=1, overflow_report_s=0) as box:
        box.on_overflow = overflow.append
        with caplog.at_level(logging.WARNING, logger="edge_detect.outbox"):
            for i in range(5):
                box.put(["a"], f"m{i}", b"x", now=float(i))
        assert _ids(box.pending()) == ["m2", "m3", "m4"]  # newest kept
        assert len(overflow) == 2 and "m0" in overflow[0] and "m1" in overflow[1]
        assert sum("full" in r.getMessage() for r in caplog.records) == 2
        (dead,) = box.dead_letters()  # max_dead=1: the newest dead letter is kept
        assert dead.message_id == "m1" and dead.reason.startswith("evicted: outbox full")
        assert box.evicted == 2


def test_overflow_reports_are_rate_limited_and_may_reenter(tmp_path: Path) -> None:
    """The pipeline turns a report into a health event that goes into the same full outbox."""
    reports: list[str] = []
    with Outbox(tmp_path / "o.sqlite", max_pending=2, overflow_report_s=3600) as box:

        def health_event(detail: str) -> None:
            reports.append(detail)
            box.put(["a"], f"health{len(reports)}", b"overflow", now=0.0)  # evicts again

        box.on_overflow = health_event
        for i in range(10):
            box.put(["a"], f"m{i}", b"x", now=float(i))
        assert len(reports) == 1 and reports[0].startswith("1 message(s) evicted")
        assert _ids(box.pending()) == ["m8", "m9"]
        assert box.evicted == 9  # m0..m7 and the health event itself, each logged
        box.overflow_report_s = 0
        box.put(["a"], "m10", b"x", now=10.0)
        assert reports[1].startswith("9 message(s) evicted since the last report")


def test_disabled_endpoint_keeps_its_queue_until_enabled_or_its_target_changes(
    tmp_path: Path,
) -> None:
    """Issue 15 item 6: a 410 used to dead-letter the queue and disable the endpoint for good."""
    path = tmp_path / "o.sqlite"
    with Outbox(path) as box:
        assert box.register_endpoint("hook", "https://a.example/x") is None
        box.put(["hook"], "m1", b"x", now=1.0)
        box.disable_endpoint("hook", "https://a.example/x", "410 Gone", now=2.0)
        box.put(["hook"], "m2", b"y", now=3.0)  # still queued while disabled
        assert _ids(box.pending("hook")) == ["m1", "m2"] and box.dead_letters() == []
        assert box.disabled_reason("hook") == "410 Gone"
    with Outbox(path) as box:
        assert box.register_endpoint("hook", "https://a.example/x") == "410 Gone"  # persists
        assert box.enable_endpoint("hook") and not box.enable_endpoint("hook")
        assert box.disabled_reason("hook") is None and box.endpoints() == {"hook": None}
        box.disable_endpoint("hook", "https://a.example/x", "410 Gone", now=4.0)
        assert box.register_endpoint("hook", "https://b.example/y") is None  # new URL: enabled
        assert _ids(box.pending("hook")) == ["m1", "m2"]


def test_second_process_and_bad_files_get_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path):
        with pytest.raises(ConfigError, match="in use by another edge-detect process"):
            Outbox(path)
    Outbox(path).close()  # the lock is released on close
    with pytest.raises(ConfigError, match="max_pending >= 1"):
        Outbox(tmp_path / "x.sqlite", max_pending=0)
    with Outbox(tmp_path / "y.sqlite") as box, pytest.raises(ValueError, match="at most"):
        box.put(["a"], "big", b"x" * 100_000, now=0.0)


def test_every_acknowledged_put_survives_sigkill(tmp_path: Path) -> None:
    """A writer prints each id after put() returns; whatever it printed must be there after -9."""
    path = tmp_path / "o.sqlite"
    writer = textwrap.dedent(
        f"""
        import sys
        from edge_detect.outbox import Outbox
        box = Outbox({str(path)!r})
        i = 0
        while True:
            box.put(["a"], f"m{{i}}", b"x" * 300, now=float(i))
            print(f"m{{i}}", flush=True)
            i += 1
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(40)]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with Outbox(path) as box:  # opens although the killed process held the lock
        stored = _ids(box.pending("a"))
    assert stored[: len(acknowledged)] == acknowledged
    # The file is a consistent database, not a torn one.
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


@pytest.mark.parametrize(
    "name",
    [
        "edge_detect.outbox",
        "edge_detect.webhook",
        "edge_detect.throttle",
        "edge_detect.clips",
        "edge_detect.mqtt",
    ],
)
def test_delivery_modules_list_exactly_their_public_api(name: str) -> None:
    import importlib
    import inspect

    module = importlib.import_module(name)  # mqtt imports paho only when a sink is made
    defined = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    exported = set(module.__all__)
    assert all(hasattr(module, attr) for attr in exported)
    assert defined <= exported, f"public but not in __all__: {sorted(defined - exported)}"


@pytest.mark.parametrize(
    ("where", "message"),
    [
        # issue 15 item 12: parents were created anywhere (mkdir -p of a typo)
        ("/nonexistent-edge-detect/dir/outbox.sqlite", "does not exist"),
        # issue 15 item 8: a traceback (the lock file could not be opened)
        ("/proc/outbox.sqlite", "cannot open the outbox"),
        ("/proc/edge-detect/outbox.sqlite", "cannot create the outbox folder"),
    ],
)
def test_unusable_outbox_locations_are_one_line_errors(where: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Outbox(where)
    assert "\n" not in str(info.value)
    assert not Path("/nonexistent-edge-detect").exists()


def test_outbox_folder_is_created_when_its_parent_exists(tmp_path: Path) -> None:
    with Outbox(tmp_path / "state" / "outbox.sqlite") as box:
        assert box.pending_count() == 0


def _events() -> tuple[list[tuple[str, str]], object]:
    seen: list[tuple[str, str]] = []
    return seen, lambda event, detail: seen.append((event, detail))


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_new_one_started(
    tmp_path: Path,
) -> None:
    """Issue 15 item 5: a corrupt outbox stopped all detection (exit 2, kept down by systemd's
    RestartPreventExitStatus=2). Now it is kept aside for inspection and delivery goes on."""
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    (tmp_path / "outbox.sqlite-wal").write_bytes(b"a stale journal" * 10)
    with Outbox(path) as box:
        (aside,) = box.replaced
        box.put(["a"], "m1", b"x", now=1.0)
        assert _ids(box.pending("a")) == ["m1"]
    assert aside.name.startswith("outbox.sqlite.corrupt-")
    assert aside.read_bytes().startswith(b"this is not a database")
    with Outbox(path) as box:
        assert _ids(box.pending("a")) == ["m1"] and box.replaced == []


def _corrupt_page(path: Path, index_name: str) -> None:
    """Overwrite the root page of one index with garbage (a realistic SD-card error)."""
    db = sqlite3.connect(path)
    try:
        (root,) = db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name=?", (index_name,)
        ).fetchone()
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(b"\xde\xad\xbe\xef" * (page_size // 4))


def test_corruption_found_while_running_is_replaced_and_pending_messages_salvaged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as box:
        for i in range(5):
            box.put(["a"], f"m{i}", b"x" * 100, now=float(i))
    _corrupt_page(path, "pending_head")  # the index the delivery read uses; the table is fine
    seen, report = _events()
    box = Outbox(path, on_storage=report)  # opening does not touch that index
    try:
        head = box.head("a")  # ... the first read does: replaced, and the table salvaged
        assert head is not None and head.message_id == "m0"
        assert _ids(box.pending("a")) == [f"m{i}" for i in range(5)]
    finally:
        box.close()
    (event,) = seen
    assert event[0] == "outbox_replaced" and "5 pending message(s) salvaged" in event[1]
    assert "malformed" in event[1] or "corrupt" in event[1]


def test_a_full_database_keeps_messages_in_memory_and_writes_them_when_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 item 7: alerts written while the disk was full were lost, each logged only as
    'cannot rollback - no transaction is active', which hid the cause. SQLite's own limit on the
    file's pages gives the same SQLITE_FULL as a full disk, without root or a small filesystem."""
    seen, report = _events()
    box = Outbox(tmp_path / "outbox.sqlite", on_storage=report)
    try:
        box.put(["a"], "m0", b"x", now=0.0)
        (pages,) = box._db.execute("PRAGMA page_count").fetchone()
        box._db.execute(f"PRAGMA max_page_count={pages}")
        for i in range(1, 40):  # 40 kB of bodies cannot fit in the pages the file has
            assert box.put(["a", "b"], f"m{i}", b"y" * 1000, now=float(i)) in (
                [],
                [2 * i, 2 * i + 1],
            )
        assert box.in_memory > 0 and box.write_error == "database or disk is full"
        assert box.pending_count() == 1 + 2 * 39  # nothing lost: the kept ones count
        head = box.head("a")
        assert head is not None and head.message_id == "m0"
        box.mark_delivered(head.seq)  # a decision taken while full is honoured at once
        assert box.pending_count("a") == 39
        box._db.execute("PRAGMA max_page_count=1073741823")  # space returns
        assert box.retry_storage()
        assert _ids(box.pending("a")) == [f"m{i}" for i in range(1, 40)]
        assert _ids(box.pending("b")) == [f"m{i}" for i in range(1, 40)]
    finally:
        box.close()
    assert [e for e, _ in seen] == ["outbox_unwritable", "outbox_writable"]
    assert "database or disk is full" in seen[0][1]
    assert "cannot rollback" not in caplog.text
    assert "cannot be written (database or disk is full)" in caplog.text
