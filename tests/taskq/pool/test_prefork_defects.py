"""The prefork pool's answers to issue 13, with real children through the real loop:

- #1: a job taken back from a child (``withdraw`` → ``skipped``) gives its max-tasks slot back;
- #4: a parent with fds >= 1024 still runs jobs; a child that dies before it starts its first
  job is throttled, and the job it held fails after ``task_max_redeliveries`` such deaths;
- #9: a child killed after it stored its result keeps the stored state (``done``, never
  ``lost``); a soft limit that lands while the result is stored does not lose it;
- #12: a child stops a task past its hard limit (plus a grace) by itself when the parent
  does not.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pool_support import Harness, app, message

from taskq import states
from taskq.canvas import Signature
from taskq.errors import TimeLimitExceeded, WorkerLostError
from taskq.pool.base import Job
from taskq.protocol import TaskMessage
from tests.fd_support import many_open_fds


@app.task(name="wait_for_file")
def wait_for_file(path: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


@app.task(name="value")
def value(x: Any) -> Any:
    return x


class _DiesWhenRead:
    """Unpickling it ends the process: a job that kills every child it is written to,
    before its ``started`` (as a child unable to read its pipe did, issue 13 #4)."""

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return os._exit, (3,)


def _apply(h: Harness, msg: TaskMessage, **job: Any) -> Job:
    j = Job(msg=msg, **job)
    h.backlog.append(j)
    h.feed()
    return j


def _results_db(tmp_path: Path) -> dict[str, Any]:
    app._backend = None
    return {"result_backend": f"db+sqlite:///{tmp_path / 'results.db'}"}


# -- #1 ---------------------------------------------------------------------------------------

def test_withdrawn_jobs_give_their_max_tasks_slot_back(harness, tmp_path):
    """Given -c 1 -O fast with max 3 tasks per child, a running job and two queued behind it,
    when the two are taken back (a lost connection), then the child gets work again: the
    two run after all, and so do three more (on its replacement after it is recycled)."""
    h = harness(concurrency=1, worker_optimization="fast", worker_fast_queue_depth=2,
                worker_max_tasks_per_child=3)
    gate = tmp_path / "gate"
    running = h.submit("wait_for_file", str(gate))
    h.running_child(running)
    queued = [h.submit("sleep", 0) for _ in range(2)]
    # Given its third job, the child is spent: its successor is forked already.
    [child] = [c for c in h.pool.children.values() if c.taken]
    assert [job for _, job in child.queued] == queued
    h.pool.withdraw(queued)
    gate.touch()
    h.run_until(lambda: len(h.unstarted) == 2)  # skipped by the child: never run there
    more = [h.submit("sleep", 0) for _ in range(3)]
    h.run_until(lambda: len(h.done) == 6)
    assert {j for j, _ in h.done} == {running, *queued, *more}
    assert not h.lost


def test_a_spent_childs_successor_is_forked_ahead_and_waits_for_its_slot(harness, tmp_path):
    """Given -c 1 --max-tasks-per-child 1, when the child is given its job, its successor is
    forked at once and gets ready while that job runs; it takes the next job only once the
    first is done: never two jobs at once at -c 1."""
    h = harness(concurrency=1, worker_max_tasks_per_child=1)
    gate = tmp_path / "gate"
    first = h.submit("wait_for_file", str(gate))
    h.running_child(first)
    h.run_until(lambda: len(h.pool.children) == 2 and all(
        c.ready for c in h.pool.children.values()))
    second = h.submit("sleep", 0)
    assert not h.pool.can_accept(), "the successor waits while the spent child runs"
    assert second.pid is None and h.backlog == [second]
    gate.touch()
    h.run_until(lambda: len(h.done) == 2)
    assert [j for j, _ in h.done] == [first, second]
    assert all(r.state == states.SUCCESS for _, r in h.done)
    assert second.pid is not None and second.pid != first.pid
    assert h.pool.stats["spawned"] >= 3 and not h.lost


# -- #4 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimization", ["fair", "fast"])
def test_a_parent_with_fds_above_1024_runs_jobs(harness, optimization):
    """Given a parent with 1,100 open fds (so the children's pipes are numbered >= 1024),
    jobs run: nothing in the child selects on its pipe (select() fails past 1023)."""
    with many_open_fds(1100):
        h = harness(concurrency=1, worker_optimization=optimization)
        [child] = h.pool.children.values()
        assert child.job_fd >= 1024 and child.event_fd >= 1024
        jobs = [h.submit("sleep", 0) for _ in range(3)]
        h.run_until(lambda: len(h.done) == 3)
    assert [j for j, _ in h.done] == jobs
    assert all(r.state == states.SUCCESS for _, r in h.done)
    assert h.pool.stats["spawned"] == 1 and not h.lost


def test_a_job_that_kills_its_child_before_starting_is_throttled_then_fails(harness, caplog):
    """Given a job whose arrival kills the child reading it (before ``started``), then the
    restarts back off (a storm, not a busy fork loop) and after task_max_redeliveries such
    deaths the job is reported lost, unstarted, with a reason; the next job runs."""
    caplog.set_level(logging.INFO, logger="taskq.pool.prefork")
    h = harness(concurrency=1, task_max_redeliveries=3)
    poison = _apply(h, message("value", _DiesWhenRead()))
    h.run_until(lambda: len(h.lost) == 1, timeout=30)
    job, exc = h.lost[0]
    assert job is poison and job.started_at is None and job.pid is None
    assert job.start_failures == 4
    assert isinstance(exc, WorkerLostError)
    assert "before it started" in str(exc) and "exitcode 3" in str(exc)
    assert h.pool.stats["spawned"] == 4  # the first child and one per death before: no loop
    assert any("keep dying" in r.getMessage() for r in caplog.records)  # throttled
    nxt = h.submit("sleep", 0)
    h.run_until(lambda: any(j is nxt for j, _ in h.done), timeout=30)
    assert h.pool._storm_delay() == 0.0  # a started job ends the storm


# -- #9 ---------------------------------------------------------------------------------------

def _stall_callbacks(flag: Path) -> None:
    """In the child: sending a callback (after the result is stored) stalls forever."""
    def send_task(*args: Any, **kwargs: Any) -> None:
        flag.write_text(str(os.getpid()))
        time.sleep(60)

    app.send_task = send_task  # type: ignore[method-assign]


def _stall_store(flag: Path, until: Callable[[], bool]) -> None:
    """In the child: the first SUCCESS store stalls inside the backend until ``until()``."""
    backend = app.backend
    real = backend._set

    def _set(task_id: str, meta: Any, state: str, request: Any) -> None:
        if state == states.SUCCESS and not flag.exists():
            flag.write_text(str(os.getpid()))
            deadline = time.monotonic() + 20
            while not until() and time.monotonic() < deadline:
                time.sleep(0.01)
        real(task_id, meta, state, request)

    backend._set = _set  # type: ignore[method-assign]


def _wait_file(h: Harness, path: Path) -> int:
    h.run_until(lambda: path.exists() and path.read_text())
    return int(path.read_text())


def test_a_child_killed_after_storing_success_reports_done_not_lost(harness, tmp_path):
    """Given a task that stored SUCCESS and is sending its link callback, when its child is
    killed, then the pool reports the job done with SUCCESS (not lost: the worker would
    overwrite the result with FAILURE, or run the task again), and SUCCESS stays stored."""
    flag = tmp_path / "sending"
    app.hooks.worker_process_init.append(lambda: _stall_callbacks(flag))
    h = harness(concurrency=1, **_results_db(tmp_path))
    msg = message("value", 42).evolve(callbacks=(Signature("value", (1,)),))
    job = _apply(h, msg)
    os.kill(_wait_file(h, flag), signal.SIGKILL)
    h.run_until(lambda: h.done or h.lost)
    assert not h.lost
    [(done, result)] = h.done
    assert done is job and result.state == states.SUCCESS
    meta = app.backend.get_task_meta(job.id)
    assert meta["status"] == states.SUCCESS and meta["result"] == 42


def test_a_child_killed_inside_its_result_store_keeps_what_was_stored(harness, tmp_path):
    """Given a child killed while its SUCCESS store is under way (written, the call not yet
    returned), then the pool finds the stored state and reports done, not lost."""
    flag = tmp_path / "storing"
    app.hooks.worker_process_init.append(lambda: _stall_store(flag, lambda: False))
    h = harness(concurrency=1, **_results_db(tmp_path))
    job = h.submit("value", 7)
    pid = _wait_file(h, flag)
    # What the stalled call would write, written for it: the store reached the backend.
    app.backend.mark_as_done(job.id, 7)
    os.kill(pid, signal.SIGKILL)
    h.run_until(lambda: h.done or h.lost)
    assert not h.lost
    assert h.done[0][0] is job and h.done[0][1].state == states.SUCCESS
    assert app.backend.get_task_meta(job.id)["status"] == states.SUCCESS


def test_a_child_killed_inside_a_store_that_did_not_happen_is_lost(harness, tmp_path):
    """The other side of the same check: nothing stored yet, so the job is lost."""
    flag = tmp_path / "storing"
    app.hooks.worker_process_init.append(lambda: _stall_store(flag, lambda: False))
    h = harness(concurrency=1, **_results_db(tmp_path))
    job = h.submit("value", 7)
    os.kill(_wait_file(h, flag), signal.SIGKILL)
    h.run_until(lambda: h.done or h.lost)
    assert not h.done
    assert h.lost[0][0] is job and isinstance(h.lost[0][1], WorkerLostError)


def _soft_limit_pending() -> bool:
    return signal.SIGUSR1 in signal.sigpending()


def test_a_soft_limit_during_the_result_store_does_not_lose_the_result(harness, tmp_path):
    """Given a task that returned and is storing SUCCESS when its soft limit fires, then
    the result is stored (the signal waits until the store is over) and reported SUCCESS;
    the late signal does not reach the child's next task."""
    flag = tmp_path / "storing"
    app.hooks.worker_process_init.append(lambda: _stall_store(flag, _soft_limit_pending))
    h = harness(concurrency=1, **_results_db(tmp_path))
    job = h.submit("value", "kept", soft_time_limit=0.3)
    h.run_until(lambda: h.done or h.lost)
    assert not h.lost
    assert h.done[0][0] is job and h.done[0][1].state == states.SUCCESS
    meta = app.backend.get_task_meta(job.id)
    assert meta["status"] == states.SUCCESS and meta["result"] == "kept"
    nxt = h.submit("sleep", 0)  # a leaked signal would fail it with SoftTimeLimitExceeded
    h.run_until(lambda: len(h.done) == 2)
    assert h.done[1][0] is nxt and h.done[1][1].state == states.SUCCESS


# -- #12 --------------------------------------------------------------------------------------

def test_a_child_stops_a_task_past_its_hard_limit_when_the_parent_does_not(harness):
    """Given a parent whose time-limit timer never acts (a stalled loop), a task with a hard
    limit still ends: the child stops it at the limit plus a grace, and the job fails with
    TimeLimitExceeded."""
    h = harness(concurrency=1)
    h.pool._on_alarm = lambda child: None  # type: ignore[method-assign]
    job = h.submit("sleep", 60, time_limit=0.5)
    h.running_child(job)
    began = time.monotonic()
    h.run_until(lambda: h.lost or h.done, timeout=30)
    took = time.monotonic() - began
    assert not h.done
    assert h.lost[0][0] is job and isinstance(h.lost[0][1], TimeLimitExceeded)
    assert took >= 0.5
    print(f"the child's backstop ended the task {took:.2f} s after it started")


# -- found by taskq-stress explore: a fork while another thread imports -------------------------

@app.task(name="import_module")
def import_module(directory: str, name: str) -> int:
    import importlib
    import sys

    sys.path.insert(0, directory)
    return int(importlib.import_module(name).VALUE)


def test_a_child_forked_while_a_parent_thread_imports_a_module_can_import_it(harness, tmp_path):
    """Given a thread of the parent halfway through importing a module (as an offload lane
    creating the result backend's engine does) when the pool forks a child, then a job in
    that child that imports the module runs: the fork copied the module's import lock held
    by a thread the child does not have, and the child must not wait on it forever (explore
    case cefc975b8: sqlite, --max-tasks-per-child 1, a child killed; its replacement hung in
    SQLAlchemy's dialect import until the hard time limit)."""
    import threading

    module = f"half_imported_{tmp_path.name.replace('-', '_')}"
    gate = threading.Event()
    sys.modules[f"{module}_gate"] = gate  # type: ignore[assignment]
    (tmp_path / f"{module}.py").write_text(
        "import sys, threading\n"
        "if threading.current_thread().name == 'importer':\n"
        f"    sys.modules['{module}_gate'].wait()\n"
        "VALUE = 42\n")
    h = harness(concurrency=1, worker_max_tasks_per_child=1)
    sys.path.insert(0, str(tmp_path))
    importer = threading.Thread(target=__import__, args=(module,), name="importer", daemon=True)
    try:
        importer.start()
        deadline = time.monotonic() + 10
        while module not in sys.modules and time.monotonic() < deadline:
            time.sleep(0.01)  # the importer is inside the module's body, holding its lock
        assert module in sys.modules
        first = h.submit("sleep", 0)  # its child is recycled: the next one is forked now
        h.run_until(lambda: len(h.done) == 1 and h.ready_children() == 1)
        assert h.pool.stats["spawned"] == 2
        second = h.submit("import_module", str(tmp_path), module)
        h.run_until(lambda: len(h.done) == 2, timeout=30)
        [(_, result)] = [(j, r) for j, r in h.done if j == second]
        assert result.state == states.SUCCESS, result
        assert first in {j for j, _ in h.done}
    finally:
        gate.set()
        importer.join(10)
        sys.path.remove(str(tmp_path))
        sys.modules.pop(module, None)
        sys.modules.pop(f"{module}_gate", None)
