"""Supervised threads: a failing thread is restarted with backoff, reported, and counted."""

from __future__ import annotations

import threading
import time

from edge_detect.supervise import Supervised


def test_a_failing_thread_is_restarted_reported_and_counted(caplog) -> None:
    stop = threading.Event()
    runs: list[float] = []
    reports: list[tuple[str, str]] = []
    done = threading.Event()

    def work() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 2:
            raise RuntimeError(f"fault {len(runs)}")
        done.set()
        stop.wait()

    thread = Supervised(
        "worker", work, stop=stop, report=lambda e, d: reports.append((e, d)),
        restart_initial_s=0.05, restart_max_s=1.0,
    ).start()  # fmt: skip
    try:
        assert done.wait(10)
        figures = {(n, tuple(labels.items())): v for n, labels, v in thread.figures()}
        assert figures[("edge_detect_thread_restarts_total", (("thread", "worker"),))] == 2
        assert figures[("edge_detect_thread_up", (("thread", "worker"),))] == 1
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive() and len(runs) == 3
    assert reports == [  # the wait doubles
        ("thread_restarted", "worker: RuntimeError: fault 1; restart 1 in 0.05 s"),
        ("thread_restarted", "worker: RuntimeError: fault 2; restart 2 in 0.1 s"),
    ]
    assert "Traceback" in caplog.text and "thread 'worker' failed" in caplog.text


def test_stop_ends_a_thread_waiting_to_be_restarted() -> None:
    stop = threading.Event()

    def always_fails() -> None:
        raise ValueError("broken")

    thread = Supervised("w", always_fails, stop=stop, restart_initial_s=30).start()
    time.sleep(0.2)
    assert not thread.up and thread.restarts == 1
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
