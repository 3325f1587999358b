"""The prefork pool with real children and real signals, driven through the real loop:
running jobs, deaths, recycling, time limits, scheduling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import psutil
import pytest
from pool_support import app, zombies

from taskq.errors import TimeLimitExceeded, WorkerLostError
from taskq.pool import prefork


def test_jobs_report_started_then_done(harness):
    h = harness()
    events: list[tuple[str, str]] = []
    h.pool.on_started = lambda job, pid: events.append(("started", job.id))
    jobs = [h.submit("sleep", 0.01) for _ in range(6)]
    h.run_until(lambda: len(h.done) == 6)
    for job, result in h.done:
        events.append(("done", job.id))
        assert result.state == "SUCCESS"
    assert {j for j, _ in h.done} == set(jobs)
    for job in jobs:
        assert events.index(("started", job.id)) < events.index(("done", job.id))
    assert not h.lost and not h.unstarted
    assert h.pool.is_idle()


def test_a_job_with_nothing_to_store_or_follow_costs_the_parent_two_frames(harness):
    """Given tasks whose outcome is written nowhere (no result backend), when a child runs
    one after which nothing else runs, then the parent reads two frames for it (started,
    done; the done says the rest), not five; one with its own ``on_success`` still says
    ``stored`` before that handler runs (a death in it leaves the outcome final), and so
    does one with a hard time limit."""
    h = harness(concurrency=1)
    kinds: list[str] = []
    handle = h.pool._handle

    def recording(child: Any, frame: tuple[Any, ...]) -> None:
        kinds.append(frame[0])
        handle(child, frame)

    h.pool._handle = recording  # type: ignore[method-assign]
    h.submit("size", "abc")
    h.run_until(lambda: len(h.done) == 1)
    assert kinds == ["started", "done"]
    kinds.clear()
    h.submit("handled")
    h.run_until(lambda: len(h.done) == 2)
    assert kinds == ["started", "stored", "followed", "done"]
    kinds.clear()
    # A hard limit: this pool may kill the child at any moment, which must not undo an
    # outcome the task reached, so the outcome is told at once.
    h.submit("size", "abc", time_limit=30)
    h.run_until(lambda: len(h.done) == 3)
    assert kinds == ["started", "stored", "followed", "done"]
    assert [r.state for _, r in h.done] == ["SUCCESS"] * 3


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSEGV", "exit"])
def test_a_dying_child_fails_its_job_and_is_replaced(harness, how, monkeypatch):
    # No periodic sweep within the test: a death can only be seen as it happens (detection
    # is immediate, not a poll).
    monkeypatch.setattr(prefork, "HOUSEKEEPING", 3600.0)
    h = harness()
    before = set(h.pool.pids())
    if how == "SIGKILL":
        job = h.submit("sleep", 30)
        pid = h.running_child(job)
        os.kill(pid, signal.SIGKILL)
        h.run_until(lambda: len(h.lost) == 1, timeout=25)  # long before the job would end
    else:
        job = h.submit("die", how)
        h.run_until(lambda: len(h.lost) == 1)
    lost_job, exc = h.lost[0]
    assert lost_job is job
    assert isinstance(exc, WorkerLostError)
    expected = "exitcode 3" if how == "exit" else f"({how})"
    assert expected in str(exc) and job.id in str(exc)
    h.run_until(lambda: h.ready_children() == 2)
    assert set(h.pool.pids()) != before
    assert not zombies()


def test_repeated_kills_leak_no_fds_and_no_zombies(harness):
    h = harness(concurrency=2)
    proc = psutil.Process()
    fds_before = proc.num_fds()
    for _ in range(50):
        job = h.submit("sleep", 30)
        os.kill(h.running_child(job), signal.SIGKILL)
        h.run_until(lambda job=job: any(j is job for j, _ in h.lost))
        h.run_until(lambda: h.ready_children() == 2)
    assert len(h.lost) == 50
    assert all("SIGKILL" in str(exc) for _, exc in h.lost)
    assert proc.num_fds() <= fds_before
    assert not zombies()
    assert len(h.pool.children) == 2


def test_death_is_detected_without_pidfd_too(harness):
    h = harness(pool_options={"use_pidfd": False})
    assert all(c.pidfd == -1 for c in h.pool.children.values())
    job = h.submit("sleep", 30)
    os.kill(h.running_child(job), signal.SIGKILL)
    h.run_until(lambda: len(h.lost) == 1, timeout=25)  # long before the job would end
    assert "SIGKILL" in str(h.lost[0][1])
    h.run_until(lambda: h.ready_children() == 2)
    assert not zombies()


@pytest.mark.parametrize("use_pidfd", [True, False])
def test_a_grandchild_holding_the_event_pipe_does_not_hide_a_death(harness, tmp_path,
                                                                   use_pidfd, monkeypatch):
    # Given a task that forked a process which keeps the child's pipes open
    if use_pidfd:  # no periodic sweep within the test: only the pidfd can tell
        monkeypatch.setattr(prefork, "HOUSEKEEPING", 3600.0)
    h = harness(concurrency=1, pool_options={"use_pidfd": use_pidfd})
    assert all((c.pidfd >= 0) == use_pidfd for c in h.pool.children.values())
    pidfile = tmp_path / "grandchild"
    job = h.submit("fork_and_hold", str(pidfile))
    pid = h.running_child(job)
    h.run_until(lambda: pidfile.exists() and pidfile.read_text())
    grandchild = int(pidfile.read_text())
    try:
        # When the child dies, EOF never comes on its event pipe
        os.kill(pid, signal.SIGKILL)
        # Then the death is still seen, long before the task (30 s) or the grandchild would
        # end: through the pidfd (the sweep is off), or by the periodic sweep without one
        h.run_until(lambda: len(h.lost) == 1, timeout=20)
        assert "SIGKILL" in str(h.lost[0][1])
        nxt = h.submit("sleep", 0)
        h.run_until(lambda: any(j is nxt for j, _ in h.done))
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_max_tasks_per_child_recycles_without_losing_jobs(harness):
    h = harness(concurrency=2, worker_max_tasks_per_child=1)
    jobs = [h.submit("sleep", 0.01) for _ in range(8)]
    h.run_until(lambda: len(h.done) == 8)
    pids = {r.summary for _, r in h.done}
    assert len(pids) == 8  # every task on a fresh child
    assert not h.lost
    assert {j for j, _ in h.done} == set(jobs)
    h.run_until(lambda: len(h.pool.children) == 2 and h.ready_children() == 2)
    assert not zombies()


def test_max_memory_recycles_only_a_grown_child(harness):
    h = harness(concurrency=1, worker_max_memory_per_child=200 * 1024)  # 200 MiB
    h.submit("grow", 1)
    h.run_until(lambda: len(h.done) == 1)
    h.submit("sleep", 0)
    h.run_until(lambda: len(h.done) == 2)
    assert h.done[0][1].summary == h.done[1][1].summary  # under the limit: same child
    h.submit("grow", 300)
    h.run_until(lambda: len(h.done) == 3)
    h.submit("sleep", 0)
    h.run_until(lambda: len(h.done) == 4)
    assert h.done[3][1].summary != h.done[2][1].summary  # grown past it: replaced
    assert not h.lost and not h.unstarted


def test_soft_limit_is_catchable_and_hard_limit_kills(harness):
    h = harness(concurrency=1)
    soft = h.submit("soft_catcher", soft_time_limit=0.3)
    h.run_until(lambda: len(h.done) == 1)
    assert h.done[0][0] is soft and h.done[0][1].state == "SUCCESS"
    assert "caught" in h.done[0][1].summary
    hard = h.submit("sleep", 30, time_limit=0.3)
    h.run_until(lambda: len(h.lost) == 1)
    assert h.lost[0][0] is hard and isinstance(h.lost[0][1], TimeLimitExceeded)
    nxt = h.submit("sleep", 0)  # SCENARIOS #4: the next task runs at -c 1
    h.run_until(lambda: any(j is nxt for j, _ in h.done))
    assert h.done[-1][1].summary != str(hard.pid)  # on a fresh child


def test_a_short_limit_after_a_long_one_still_fires_on_time(harness):
    h = harness(concurrency=1)
    h.submit("sleep", 0, time_limit=600, soft_time_limit=500)
    h.run_until(lambda: len(h.done) == 1)
    short = h.submit("sleep", 30, time_limit=0.3)
    # Its own limit, long before the earlier task's limits or its own end (30 s)
    h.run_until(lambda: len(h.lost) == 1, timeout=20)
    assert h.lost[0][0] is short and isinstance(h.lost[0][1], TimeLimitExceeded)


def test_a_late_soft_limit_signal_between_tasks_is_harmless(harness):
    h = harness(concurrency=1)
    [pid] = h.pool.pids()
    os.kill(pid, signal.SIGUSR1)
    os.kill(pid, signal.SIGINT)  # children leave ^C to the parent
    job = h.submit("sleep", 0)
    h.run_until(lambda: len(h.done) == 1)
    assert h.done[0][0] is job and h.done[0][1].summary == str(pid)


def test_fair_short_jobs_never_wait_behind_a_long_one(harness):
    h = harness(concurrency=2, worker_optimization="fair")
    long = h.submit("sleep", 30)
    h.running_child(long)
    shorts = [h.submit("sleep", 0.01) for _ in range(10)]
    # A short job queued behind the long one would finish after it, past this deadline.
    h.run_until(lambda: all(any(j is s for j, _ in h.done) for s in shorts), timeout=20)
    assert not any(j is long for j, _ in h.done)
    assert {r.summary for _, r in h.done} == {str(pid) for pid in h.pool.pids()} - {
        str(long.pid)}


def test_fast_never_lets_a_child_hold_more_than_its_depth(harness):
    h = harness(concurrency=2, worker_optimization="fast", worker_fast_queue_depth=2)
    high = [0]

    def check() -> None:
        for child in h.pool.children.values():
            high[0] = max(high[0], len(child.queued))
            assert len(child.queued) <= 2

    h.checks.append(check)
    for _ in range(40):
        h.submit("sleep", 0.005)
    h.run_until(lambda: len(h.done) == 40)
    assert high[0] == 2  # it did buffer
    assert len({r.summary for _, r in h.done}) == 2


def test_fast_gives_back_the_unstarted_jobs_of_a_dead_child(harness):
    h = harness(concurrency=2, worker_optimization="fast", worker_fast_queue_depth=2)
    jobs = [h.submit("sleep", 1.0) for _ in range(10)]
    h.run_until(lambda: len(h.started) == 2)
    assert all(c.load() == 3 for c in h.pool.children.values())
    assert len(h.backlog) == 10 - 6
    victim = jobs[0] if jobs[0].pid else jobs[1]
    os.kill(h.running_child(victim), signal.SIGKILL)
    h.run_until(lambda: len(h.lost) == 1)
    assert len(h.unstarted) == 2  # its two queued jobs came back, not lost
    h.run_until(lambda: len(h.done) == 9, timeout=30)
    assert sorted(h.done_ids()) == sorted(j.id for j in jobs if j is not victim)


@pytest.mark.parametrize("optimization", ["fair", "fast"])
def test_big_arguments_to_recycled_children(harness, optimization):
    h = harness(concurrency=1, worker_max_tasks_per_child=1, worker_optimization=optimization)
    blob = "x" * (8 * 1024 * 1024)
    for _ in range(3):
        h.submit("size", blob)
    h.run_until(lambda: len(h.done) == 3, timeout=60)
    assert all(r.summary == str(len(blob)) for _, r in h.done)
    assert not h.lost


PARENT = """
import sys, time
sys.path.insert(0, {path!r})
from pool_support import Harness
h = Harness(concurrency=2).start()
print(" ".join(map(str, h.pool.pids())), flush=True)
time.sleep(60)
"""


def test_children_die_with_their_parent():
    from chaos import wait_until

    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT.format(path=os.path.dirname(__file__))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2
        parent.kill()
        parent.wait(10)

        def gone(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_until(lambda: all(gone(p) for p in pids), timeout=10,
                   what="children gone after their parent")
    finally:
        parent.kill()
        parent.wait(10)


def test_settings_come_from_the_app_and_options_override_them():
    app.conf.override({"worker_optimization": "fast", "worker_fast_queue_depth": 5,
                       "worker_max_tasks_per_child": 7})
    try:
        from taskq.pool.prefork import PreforkPool

        def noop(*a: Any) -> None:
            return None

        pool = PreforkPool(app, concurrency=3, on_started=noop, on_done=noop, on_lost=noop,
                           on_unstarted=noop, max_tasks_per_child=2)
        assert (pool.optimization, pool.depth, pool.max_tasks) == ("fast", 5, 2)
        with pytest.raises(ValueError, match="fair"):
            PreforkPool(app, concurrency=1, on_started=noop, on_done=noop, on_lost=noop,
                        on_unstarted=noop, optimization="quick")
    finally:
        app.conf.restore_overrides({})
