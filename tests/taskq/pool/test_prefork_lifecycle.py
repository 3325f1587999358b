"""The prefork pool's lifecycle: warm stop, cold terminate, grow/shrink, revoke-terminate,
children that never get ready, restart storms, and what a child inherits."""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from pool_support import app, message, zombies

from taskq.errors import WorkerLostError
from taskq.pool import prefork
from taskq.pool.base import Job
from taskq.pool.child import log_fds


@pytest.fixture
def hook() -> Iterator[Any]:
    added: list[tuple[list[Any], Any]] = []

    def add(fn: Any, kind: str = "worker_process_init") -> None:
        hooks = getattr(app.hooks, kind)
        hooks.append(fn)
        added.append((hooks, fn))

    yield add
    for hooks, fn in added:
        hooks.remove(fn)


def test_warm_stop_runs_what_was_written_and_gives_back_what_was_not(harness):
    # Given a child running a job, with a small job written whole behind it and an 8 MiB
    # job only partly written (the pipe holds 64 KiB)
    h = harness(concurrency=1, worker_optimization="fast", worker_fast_queue_depth=2)
    running = h.submit("sleep", 0.3)
    h.running_child(running)
    whole = h.submit("sleep", 0)
    partial = h.submit("size", "x" * (8 << 20))
    assert h.pool.info()["writes_pending"] == 1
    # When the pool stops warm
    h.pool.stop()
    # Then the partly written job comes back at once, never to run there...
    assert h.unstarted == [partial] and not h.pool.can_accept()
    h.run_until(lambda: not h.pool.children)
    # ...the running and the whole one finish, nothing is lost, and the child has exited
    assert h.done_ids() == [running.id, whole.id]
    assert partial not in h.started and not h.lost
    assert h.pool.is_idle() and not zombies()


def test_warm_stop_lets_the_running_job_finish_then_children_exit(harness):
    h = harness(concurrency=2)
    job = h.submit("sleep", 0.3)
    h.running_child(job)
    h.pool.stop()
    assert not h.pool.is_idle()
    h.run_until(lambda: h.pool.is_idle())
    assert h.done_ids() == [job.id] and not h.lost and not h.unstarted
    h.run_until(lambda: not h.pool.children)
    assert not zombies()


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_cold_terminate_kills_children_and_gives_back_only_unstarted_jobs(
        harness, monkeypatch):
    # Idle children would get a minute to exit on their own: busy ones must not wait for it.
    monkeypatch.setattr(prefork, "TERMINATE_GRACE", 60.0)
    monkeypatch.setattr(prefork, "TERMINATE_TIMEOUT", 120.0)
    h = harness(concurrency=2, worker_optimization="fast", worker_fast_queue_depth=1)
    proc = psutil.Process()
    jobs = [h.submit("sleep", 30) for _ in range(4)]
    h.run_until(lambda: len(h.started) == 2)
    pids = h.pool.pids()
    theirs = [fd for c in h.pool.children.values() for fd in (c.job_fd, c.event_fd, c.pidfd)
              if fd >= 0]
    fds = proc.num_fds()
    started = time.monotonic()
    h.pool.terminate()
    # Killed at once: neither the 60 s grace nor the 30 s jobs were waited for.
    assert time.monotonic() - started < 20
    assert not h.lost  # the worker is exiting: running jobs are not reported lost
    assert sorted(j.id for j in h.unstarted) == sorted(j.id for j in jobs[2:])
    assert not h.pool.children and not any(psutil.pid_exists(p) and
                                           psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                           for p in pids)
    assert not zombies()
    # Both children's pipe ends and pidfds are closed, and nothing was left open
    assert len(theirs) == 2 * (3 if prefork.HAS_PIDFD else 2)
    assert [fd for fd in theirs if _is_open(fd)] == []
    assert proc.num_fds() <= fds - len(theirs)
    h.pool.terminate()  # idempotent


def test_apply_without_room_gives_the_job_back(harness):
    h = harness(concurrency=1)
    h.pool.stop()
    job = Job(msg=message("sleep", 0))
    h.pool.apply(job)
    assert h.unstarted == [job]


def test_shrink_retires_a_busy_child_after_its_job_and_grow_adds_children(harness):
    h = harness(concurrency=2)
    jobs = [h.submit("sleep", 0.3) for _ in range(2)]
    h.run_until(lambda: len(h.started) == 2)
    h.pool.shrink(1)
    assert h.pool.size() == 1
    h.run_until(lambda: len(h.pool.children) == 1 and len(h.done) == 2)
    assert sorted(h.done_ids()) == sorted(j.id for j in jobs) and not h.lost
    h.pool.shrink(5)  # never below one child
    assert h.pool.size() == 1
    h.pool.grow(2)
    h.run_until(lambda: h.ready_children() == 3)
    assert h.pool.size() == 3 and len(h.pool.pids()) == 3
    assert h.pool.info()["processes"] == h.pool.pids()
    assert not zombies()


def test_terminate_job_signals_only_the_child_running_it(harness, tmp_path):
    h = harness(concurrency=2)
    victim, other = h.submit("sleep", 30), h.submit("sleep", 0.2)
    h.running_child(victim)
    h.pool.terminate_job(victim, signal.SIGTERM)
    h.run_until(lambda: len(h.lost) == 1 and len(h.done) == 1)
    assert h.lost[0][0] is victim and isinstance(h.lost[0][1], WorkerLostError)
    assert "SIGTERM" in str(h.lost[0][1])
    assert h.done[0][0] is other
    inside = tmp_path / "inside"
    catcher = h.submit("soft_catcher", str(inside))
    h.run_until(inside.exists)
    h.running_child(catcher)  # the parent has read its ``started``: it knows whom to signal
    h.pool.terminate_job(catcher, signal.SIGUSR1)  # SIGUSR1 is a soft limit: catchable
    h.run_until(lambda: any(j is catcher for j, _ in h.done))
    assert h.done[-1][1].summary == "'caught'"


def test_a_soft_signal_right_after_started_is_not_lost(harness):
    # Given a child that has just announced a job (its body may not have begun yet)
    h = harness(concurrency=1)
    job = h.submit("soft_catcher")
    pid = h.running_child(job)
    # When the soft-limit signal comes at once, then the job ends by it (a lost signal would
    # let it sleep its 10 s and return "not caught")
    os.kill(pid, signal.SIGUSR1)
    h.run_until(lambda: len(h.done) == 1, timeout=30)
    assert h.done[0][1].summary in ("'caught'", "SoftTimeLimitExceeded: SoftTimeLimitExceeded()")


def test_a_soft_limit_due_after_its_task_ended_does_not_interrupt_the_next_one(
        harness, tmp_path):
    # Given -O fast: the next job waits in the child and starts the moment the first ends
    h = harness(concurrency=1, pool_options={"optimization": "fast"})
    first = h.submit("sleep", 0.2, soft_time_limit=0.6)
    inside = tmp_path / "inside"
    second = h.submit("soft_catcher", str(inside))
    h.running_child(first)
    [child] = h.pool.children.values()
    soft_at = child.soft_at
    # When the first ends and the second runs before this loop turns again (a busy loop),
    # and only then the first one's soft limit comes due
    deadline = time.monotonic() + 30
    while not inside.exists() or h.pool.clock() <= soft_at:
        assert time.monotonic() < deadline, "the second job never started"
        time.sleep(0.01)
    # Then the limit is not sent to the child: the second job sleeps its 10 s, not caught
    h.run_until(lambda: len(h.done) == 2, timeout=40)
    results = dict(h.done)
    assert results[first].state == "SUCCESS"
    assert results[second].summary == "'not caught'"


def test_a_soft_signal_right_after_started_is_not_lost_in_a_threaded_child(harness):
    from taskq.pool.child_threads import soft_limit_signal

    h = harness(concurrency=1, worker_threads=2)
    job = h.submit("soft_catcher")
    pid = h.running_child(job)
    os.kill(pid, soft_limit_signal(job_slot(h, job)))
    h.run_until(lambda: len(h.done) == 1, timeout=30)
    assert h.done[0][1].summary in ("'caught'", "SoftTimeLimitExceeded: SoftTimeLimitExceeded()")
    assert not h.lost


def job_slot(h, job) -> int:
    [slot] = [c.slot for c in h.pool.children.values() if c.current is job]
    return slot


def test_a_child_that_never_gets_ready_is_killed_and_replaced(harness, first_child_hangs,
                                                              caplog):
    # A ready timeout far shorter than the hang, long enough for a slow machine's start
    h = harness(start=False, concurrency=1, pool_options={"ready_timeout": 3.0})
    h.pool.start(h.loop)
    h.run_until(lambda: len(h.pool.pids()) == 1)  # forked on the loop's first turn
    [first] = h.pool.pids()
    with caplog.at_level(logging.ERROR, logger="taskq.pool.prefork"):
        h.run_until(lambda: h.ready_children() == 1, timeout=30)
    assert first not in h.pool.pids()
    assert any("not ready after" in r.getMessage() for r in caplog.records)
    job = h.submit("sleep", 0)
    h.run_until(lambda: len(h.done) == 1)
    assert h.done[0][0] is job and not zombies()


def test_a_restart_storm_backs_off_and_recovers(harness, hook, tmp_path, caplog):
    flag = tmp_path / "broken"
    flag.write_text("yes")
    starts = tmp_path / "starts"

    def broken_init() -> None:
        with open(starts, "a") as fh:  # CLOCK_MONOTONIC is the same in every process
            fh.write(f"{time.monotonic()}\n")
        if flag.exists():
            raise RuntimeError("cannot initialise")

    def start_times() -> list[float]:
        return [float(t) for t in starts.read_text().split()] if starts.exists() else []

    hook(broken_init)
    h = harness(start=False, concurrency=1)
    with caplog.at_level(logging.ERROR, logger="taskq.pool.prefork"):
        h.pool.start(h.loop)
        h.run_until(lambda: len(start_times()) >= 6, timeout=60)
        # A child starts only after the one before it died (so after it started) plus the
        # backoff: the gaps between starts are lower bounds, which a slow machine only
        # lengthens. A few restart at once, then the wait doubles: no busy loop.
        gaps = [b - a for a, b in itertools.pairwise(start_times()[:6])]
        backoff = [prefork.STORM_BASE_DELAY * 2 ** n for n in range(3)]  # 0.25, 0.5, 1 s
        assert all(gap >= 0.9 * wait for gap, wait in zip(gaps[2:], backoff, strict=True)), \
            gaps
        flag.unlink()
        h.run_until(lambda: h.ready_children() == 1, timeout=30)
    messages = [r.getMessage() for r in caplog.records]
    assert any("before it was ready" in m for m in messages)
    assert any("keep dying before they are ready" in m for m in messages)
    assert not zombies()


def test_children_killed_from_outside_before_ready_are_replaced_without_backoff(
        harness, hook, tmp_path, caplog):
    # Given children that take a while to get ready, SIGKILLed from outside meanwhile (the
    # OOM killer, a chaos run killing a child every 10 ms)
    flag = tmp_path / "slow"
    flag.write_text("yes")

    def slow_init() -> None:
        while flag.exists():
            time.sleep(0.01)

    hook(slow_init)
    h = harness(start=False, concurrency=1)
    with caplog.at_level(logging.WARNING, logger="taskq.pool.prefork"):
        h.pool.start(h.loop)
        for _ in range(6):
            h.run_until(lambda: len(h.pool.pids()) == 1)
            victim = h.pool.pids()[0]
            os.kill(victim, signal.SIGKILL)
            h.run_until(lambda v=victim: v not in h.pool.pids())
        # Then each is replaced at once: no restart-storm backoff
        flag.unlink()
        h.run_until(lambda: h.ready_children() == 1, timeout=30)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("was killed before it was ready" in m for m in messages) == 6
    assert not any("keep dying" in m for m in messages)
    assert not zombies()


def test_children_fork_after_set_up_and_the_parent_gc_leaves_what_they_share_alone(harness):
    # Given what the parent holds before its pool starts (modules, the app, settings), in a
    # process nothing froze before (another test's pool may have)
    gc.unfreeze()
    held = {"settings": [1, 2, 3]}
    h = harness(start=False, concurrency=1)
    h.pool.start(h.loop)
    h.pool.grow(1)  # as --autoscale does when its minimum is above -c
    # Then no child forks inside start() or grow(): the other steps set up first, so what
    # they allocate does not copy pages the children share
    assert h.pool.pids() == []
    h.run_until(lambda: h.ready_children() == 2)
    # And the parent's collections no longer visit what it had at the first fork (each
    # one wrote into every page a child shares), nor after a child is replaced
    victim = h.pool.pids()[0]
    os.kill(victim, signal.SIGKILL)
    h.run_until(lambda: victim not in h.pool.pids() and h.ready_children() == 2)
    gc.collect()
    assert not any(obj is held for obj in gc.get_objects())
    assert gc.get_freeze_count() > 0


def test_children_keep_only_their_own_pipes_stdio_and_log_files(harness, tmp_path):
    left, right = socket.socketpair()  # the parent's sockets must not leak into children
    out = tmp_path / "fds.json"
    try:
        h = harness(concurrency=1)
        h.submit("fds", str(out))
        h.run_until(lambda: len(h.done) == 1)
    finally:
        left.close()
        right.close()
    assert h.done[0][1].state == "SUCCESS"
    kept = log_fds() | {0, 1, 2}
    targets = [t for fd, t in json.loads(out.read_text()).items() if int(fd) not in kept]
    pipes = [t for t in targets if t.startswith("pipe:")]
    others = [t for t in targets if not t.startswith("pipe:")]
    assert len(pipes) == 2  # its job pipe and its event pipe
    # /dev/null stands in for what it inherited; /proc/.../fd is the listing itself
    assert all(t == os.devnull or t.startswith("/proc/") for t in others), others


def test_a_log_handler_lock_held_by_another_thread_at_fork_does_not_hang_a_child(
        harness, hook, tmp_path):
    path = tmp_path / "child.log"
    stream = open(path, "a")  # noqa: SIM115 - closed below
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("pooltest.atfork")
    log.addHandler(handler)
    log.propagate = False
    hook(lambda: log.warning("child %d up", os.getpid()))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with handler.lock:  # type: ignore[union-attr]
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        held.wait(5)
        h = harness(concurrency=1, pool_options={"ready_timeout": 5})
        [pid] = h.pool.pids()
    finally:
        release.set()
        thread.join()
        log.removeHandler(handler)
        stream.close()
    assert f"child {pid} up" in path.read_text()
