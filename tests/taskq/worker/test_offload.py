"""Offload lanes (taskq.worker.offload) and the state file written off the loop."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskq import TaskQ
from taskq.worker.loop import Loop
from taskq.worker.offload import Offload, Outcome


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def _run_until(loop: Loop, until: object, deadline: float = 10.0) -> None:
    iterations = loop.iterate_handling(lambda exc: False)
    end = time.monotonic() + deadline
    while not until():  # type: ignore[operator]
        assert time.monotonic() < end, "the loop did not get there in time"
        next(iterations)


def test_calls_run_in_order_off_the_loop_and_complete_on_it(loop: Loop) -> None:
    lane = Offload(loop, "test")
    ran_in: list[str] = []
    done: list[tuple[str, Outcome]] = []

    def call(name: str) -> str:
        ran_in.append(threading.current_thread().name)
        if name == "bad":
            raise OSError("backend gone")
        return name.upper()

    for name in ("a", "bad", "c"):
        assert lane.submit(name, lambda n=name: call(n),
                           lambda outcome, n=name: done.append((n, outcome)))
    _run_until(loop, lambda: len(done) == 3)
    assert [n for n, _ in done] == ["a", "bad", "c"]
    assert [o.value for _, o in done] == ["A", None, "C"]
    assert isinstance(done[1][1].error, OSError) and not done[1][1].ok
    assert all(name == "taskq-offload-test" for name in ran_in)
    assert lane.pending() == 0


def test_a_full_lane_refuses_and_says_so(loop: Loop, caplog: pytest.LogCaptureFixture
                                         ) -> None:
    lane = Offload(loop, "tiny", maxsize=1)
    release = threading.Event()
    started = threading.Event()

    def stuck() -> None:
        started.set()
        release.wait(10)

    assert lane.submit("stuck", stuck)
    assert started.wait(10)
    assert lane.submit("queued", lambda: None)
    with caplog.at_level(logging.ERROR, logger="taskq.worker.offload"):
        assert not lane.submit("one too many", lambda: None)
    assert "tiny lane full" in caplog.text and "one too many" in caplog.text
    release.set()
    assert lane.close(10)


def test_close_waits_for_queued_calls_and_runs_their_completions(loop: Loop) -> None:
    lane = Offload(loop, "closing")
    done: list[int] = []
    for i in range(5):
        lane.submit(f"call {i}", lambda i=i: time.sleep(0.01) or i,
                    lambda outcome: done.append(outcome.value))
    assert lane.close(10)  # the loop is not running: completions run in close()
    assert done == [0, 1, 2, 3, 4]
    assert not lane.submit("after close", lambda: None)


def test_revoke_does_not_fsync_the_state_file_on_the_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a worker with --statedb, when tasks are revoked, then the loop's thread never
    fsyncs the file (it is written off the loop, at most every SAVE_INTERVAL), and the file
    still holds the ids."""
    from taskq.worker.worker import Worker

    fsynced_in: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        fsynced_in.append(threading.current_thread().name)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "worker.state"
    app = TaskQ("offload_test", broker="memory://", environ={})
    worker = Worker(app, pool="threads", concurrency=1, statedb=str(path),
                    install_signals=False, mingle=False, gossip=False)
    try:
        for i in range(50):
            worker.revoke([f"id-{i}"])
        assert fsynced_in == []  # none of the 50 revokes wrote the file on the loop
        worker.save_state_soon()  # what the timer does every SAVE_INTERVAL
        _run_until(worker.loop, lambda: worker.offload_io.pending() == 0 and path.exists())
        assert fsynced_in and threading.main_thread().name not in fsynced_in
        saved = json.loads(path.read_text())["revoked"]
        assert {f"id-{i}" for i in range(50)} <= set(saved)
    finally:
        worker.offload_io.close(5)
        worker.loop.close()
        app.close()
