"""Prefork children with threads (``worker_threads``, ``--threads``): several jobs at once in
one process, each still a job of its own for lost-process detection and time limits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from pool_support import zombies

from taskq.errors import ConfigurationError, TimeLimitExceeded, WorkerLostError
from taskq.pool import pool_label, prefork


def test_a_threaded_child_runs_as_many_jobs_at_once_as_it_has_threads(harness, tmp_path: Path):
    # Given one child with three threads
    h = harness(concurrency=1, worker_threads=3)
    assert h.pool.size() == 3 and len(h.pool.pids()) == 1
    # When three jobs each wait until all three have started
    jobs = [h.submit("rendezvous", str(tmp_path), 3) for _ in range(3)]
    h.run_until(lambda: len(h.done) == 3, timeout=40)
    # Then all three ran at once, in the one process
    assert {j for j, _ in h.done} == set(jobs)
    assert all(result.state == "SUCCESS" for _, result in h.done), h.done
    assert {job.pid for job in jobs} == set(h.pool.pids())
    assert not h.lost


def test_jobs_go_to_the_least_busy_process_first(harness):
    # Threads of one process share its GIL: two jobs on a pool of two processes with two
    # threads each run in different processes, and the third joins one of them.
    h = harness(concurrency=2, worker_threads=2)
    first = [h.submit("sleep", 30) for _ in range(2)]
    h.run_until(lambda: all(job.pid is not None for job in first))
    assert len({job.pid for job in first}) == 2
    third = h.submit("sleep", 30)
    h.run_until(lambda: third.pid is not None)
    assert third.pid in {job.pid for job in first}


def test_a_threaded_pool_refuses_resizing_and_says_why(harness):
    h = harness(concurrency=1, worker_threads=3)
    assert not h.pool.supports_resize and not h.pool.supports_autoscale
    assert pool_label("prefork", h.pool) == "prefork --threads 3"
    assert pool_label("prefork", harness(concurrency=1).pool) == "prefork"


def test_a_killed_threaded_child_fails_every_job_it_ran_and_is_replaced(harness, monkeypatch):
    monkeypatch.setattr(prefork, "HOUSEKEEPING", 3600.0)  # the death is seen, not polled
    h = harness(concurrency=1, worker_threads=3)
    jobs = [h.submit("sleep", 30) for _ in range(3)]
    h.run_until(lambda: all(job.pid is not None for job in jobs))
    (pid,) = {job.pid for job in jobs}
    os.kill(pid, signal.SIGKILL)
    h.run_until(lambda: len(h.lost) == 3, timeout=25)  # long before the jobs would end
    assert {j for j, _ in h.lost} == set(jobs)
    assert all(isinstance(exc, WorkerLostError) and "SIGKILL" in str(exc) for _, exc in h.lost)
    # One new process with all three slots, not one per slot
    h.run_until(lambda: h.ready_children() == 3)
    assert len(h.pool.pids()) == 1 and h.pool.pids() != [pid]
    assert h.pool.stats["spawned"] == 2
    assert not zombies()


def test_a_soft_limit_interrupts_only_the_task_that_exceeded_it(harness):
    h = harness(concurrency=1, worker_threads=2)
    limited = h.submit("busy_catcher", 20, soft_time_limit=0.5)
    other = h.submit("busy_catcher", 2.0)
    h.run_until(lambda: len(h.done) == 2, timeout=30)
    results = {job: result for job, result in h.done}
    assert limited.pid == other.pid
    assert results[limited].state == "SUCCESS" and results[other].state == "SUCCESS"
    assert results[limited].summary == "'caught'"
    assert results[other].summary == "'not caught'"


def test_a_hard_limit_kills_the_process_its_other_jobs_are_lost_with_it(harness):
    h = harness(concurrency=1, worker_threads=2)
    limited = h.submit("sleep", 30, time_limit=0.5)
    other = h.submit("sleep", 30)
    h.run_until(lambda: len(h.lost) == 2, timeout=25)
    lost = dict(h.lost)
    assert isinstance(lost[limited], TimeLimitExceeded)
    assert isinstance(lost[other], WorkerLostError)
    h.run_until(lambda: h.ready_children() == 2)


def test_recycling_a_threaded_child_replaces_the_whole_process(harness, tmp_path: Path):
    # max_tasks_per_child counts per thread: the first slot to reach it recycles the process
    h = harness(concurrency=1, worker_threads=2, worker_max_tasks_per_child=2)
    jobs = [h.submit("sleep", 0.01) for _ in range(8)]
    h.run_until(lambda: len(h.done) == 8, timeout=40)
    assert {j for j, _ in h.done} == set(jobs)
    assert all(result.state == "SUCCESS" for _, result in h.done)
    assert len({job.pid for job in jobs}) >= 2
    assert h.pool.stats["recycled_max_tasks_per_child"] >= 1
    assert not h.lost
    h.run_until(lambda: len(h.pool.pids()) == 1 and h.ready_children() == 2)
    assert all(p.status() != psutil.STATUS_ZOMBIE for p in psutil.Process().children())


def test_a_recycled_threaded_child_finishes_its_other_tasks_however_long_they_take(
        harness, monkeypatch):
    # The retire timeout kills an idle slot that does not exit; killing it kills the process,
    # so it must wait for the process's other slots, not only for the idle one.
    monkeypatch.setattr(prefork, "RETIRE_TIMEOUT", 0.5)
    monkeypatch.setattr(prefork, "HOUSEKEEPING", 0.1)
    h = harness(concurrency=1, worker_threads=2, worker_max_tasks_per_child=1)
    slow = h.submit("sleep", 4)
    h.run_until(lambda: slow.pid is not None)
    # When the other slot's one task ends, the process is recycled after what it holds
    quick = h.submit("sleep", 0.01)
    h.run_until(lambda: h.pool.stats["recycled_max_tasks_per_child"] >= 1, timeout=20)
    h.run_until(lambda: len(h.done) + len(h.lost) == 2, timeout=30)
    # Then the slow task ran to its end in that process, long after the retire timeout
    assert not h.lost, h.lost
    assert {j for j, _ in h.done} == {slow, quick}
    assert all(result.state == "SUCCESS" for _, result in h.done), h.done
    assert quick.pid == slow.pid


def test_a_recycled_threaded_process_and_its_successor_run_no_more_than_the_pool_size(
        harness, tmp_path: Path):
    # Given one process with two threads, recycled after each slot's first task, one slot
    # still running a long task in it
    h = harness(concurrency=1, worker_threads=2, worker_max_tasks_per_child=1)
    running: list[int] = []
    h.checks.append(lambda: running.append(
        sum(1 for c in h.pool.children.values() if c.current is not None)))
    gate = tmp_path / "gate"
    slow = h.submit("wait_for", str(gate))
    h.run_until(lambda: slow.pid is not None)
    h.submit("sleep", 0.01)
    h.run_until(lambda: h.pool.stats["recycled_max_tasks_per_child"] >= 1, timeout=20)
    h.run_until(lambda: len(h.pool.pids()) == 2 and h.ready_children() == 2, timeout=20)
    # When two more tasks come while it runs
    more = [h.submit("sleep", 0.2) for _ in range(2)]
    h.run_until(lambda: all(j in {d for d, _ in h.done} for j in more), timeout=30)
    gate.touch()
    h.run_until(lambda: len(h.done) == 4, timeout=30)
    # Then no more than two tasks (one process's threads) ran at any time
    assert max(running) == 2, max(running)
    assert all(result.state == "SUCCESS" for _, result in h.done), h.done
    assert not h.lost


@pytest.mark.parametrize("threads", [0, 100])
def test_a_thread_count_out_of_range_is_refused_with_the_setting_named(harness, threads):
    with pytest.raises(ConfigurationError, match="worker_threads"):
        harness(start=False, concurrency=1, worker_threads=threads)
