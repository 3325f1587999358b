"""The prefork pool with real children and real signals, driven through the real loop."""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import psutil
import pytest

from taskq import TaskQ
from taskq.errors import TimeLimitExceeded, WorkerLostError
from taskq.pool.base import Job, JobResult
from taskq.pool.prefork import PreforkPool
from taskq.protocol import TaskMessage
from taskq.worker.loop import Loop

app = TaskQ("pooltest", broker="memory://")


@app.task(name="sleep")
def sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@app.task(name="soft_catcher")
def soft_catcher() -> str:
    from taskq import SoftTimeLimitExceeded

    try:
        time.sleep(10)
    except SoftTimeLimitExceeded:
        return "caught"
    return "not caught"


@app.task(name="die")
def die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    os.kill(os.getpid(), getattr(signal, how))


@app.task(name="size")
def size(blob: str) -> int:
    return len(blob)


@app.task(name="grow")
def grow(mib: int) -> int:
    global _BALLAST
    _BALLAST = bytearray(mib * 1024 * 1024)
    for i in range(0, len(_BALLAST), 4096):
        _BALLAST[i] = 1  # touch every page so it counts in RSS
    return os.getpid()


_BALLAST = bytearray()


class Harness:
    def __init__(self, concurrency: int = 2, **conf: Any) -> None:
        app.conf.restore_overrides({})
        app.conf.override(conf)
        self.loop = Loop()
        self.started: list[Job] = []
        self.done: list[tuple[Job, JobResult]] = []
        self.lost: list[tuple[Job, BaseException]] = []
        self.unstarted: list[Job] = []
        self.backlog: list[Job] = []
        self.pool = PreforkPool(app, concurrency=concurrency, hostname="test",
                                on_started=lambda j, pid: self.started.append(j),
                                on_done=self._done, on_lost=self._lost,
                                on_unstarted=self._unstarted)
        self._iter = self.loop.iterate_handling(lambda exc: False)

    def _done(self, job: Job, result: JobResult) -> None:
        self.done.append((job, result))
        self.feed()

    def _lost(self, job: Job, exc: BaseException) -> None:
        self.lost.append((job, exc))
        self.feed()

    def _unstarted(self, job: Job) -> None:
        self.unstarted.append(job)
        self.backlog.insert(0, job)

    def start(self) -> Harness:
        self.pool.start(self.loop)
        self.run_until(lambda: self.ready_children() == self.pool.target)
        return self

    def ready_children(self) -> int:
        return sum(1 for c in self.pool.children.values() if c.ready)

    def submit(self, name: str, *args: Any, time_limit: float | None = None,
               soft_time_limit: float | None = None) -> Job:
        job = Job(msg=TaskMessage(task=name, id=str(uuid.uuid4()), args=args),
                  time_limit=time_limit, soft_time_limit=soft_time_limit)
        self.backlog.append(job)
        self.feed()
        return job

    def feed(self) -> None:
        while self.backlog and self.pool.can_accept():
            self.pool.apply(self.backlog.pop(0))

    def run_until(self, predicate: Any, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s; pool: "
                                     f"{self.pool.info()}")
            next(self._iter)
            self.feed()

    def running_child(self, job: Job) -> int:
        self.run_until(lambda: job.pid is not None)
        assert job.pid is not None
        return job.pid

    def close(self) -> None:
        self.pool.terminate()
        self.loop.close()
        app.conf.restore_overrides({})


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(**kwargs: Any) -> Harness:
        h = Harness(**kwargs).start()
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def no_zombies() -> bool:
    return not [c for c in psutil.Process().children(recursive=True)
                if c.status() == psutil.STATUS_ZOMBIE]


def test_jobs_report_started_then_done(harness):
    h = harness()
    jobs = [h.submit("sleep", 0.01) for _ in range(6)]
    h.run_until(lambda: len(h.done) == 6)
    assert {j for j, _ in h.done} == set(jobs)
    assert all(r.state == "SUCCESS" for _, r in h.done)
    assert set(h.started) == set(jobs)
    assert not h.lost and not h.unstarted


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSEGV", "exit"])
def test_a_dying_child_fails_its_job_and_is_replaced(harness, how):
    h = harness()
    before = set(h.pool.pids())
    if how == "SIGKILL":
        job = h.submit("sleep", 30)
        os.kill(h.running_child(job), signal.SIGKILL)
    else:
        job = h.submit("die", how)
    h.run_until(lambda: len(h.lost) == 1)
    lost_job, exc = h.lost[0]
    assert lost_job is job
    assert isinstance(exc, WorkerLostError)
    expected = "exitcode 3" if how == "exit" else how
    assert expected in str(exc)
    h.run_until(lambda: h.ready_children() == 2)
    assert set(h.pool.pids()) != before
    assert no_zombies()


def test_repeated_kills_leak_no_fds_and_no_zombies(harness):
    h = harness(concurrency=2)
    proc = psutil.Process()
    fds_before = proc.num_fds()
    for _ in range(25):
        job = h.submit("sleep", 30)
        os.kill(h.running_child(job), signal.SIGKILL)
        h.run_until(lambda job=job: any(j is job for j, _ in h.lost))
        h.run_until(lambda: h.ready_children() == 2)
    assert len(h.lost) == 25
    assert proc.num_fds() <= fds_before + 2
    assert no_zombies()


def test_death_is_detected_without_pidfd_too(harness):
    h = harness()
    h.pool.use_pidfd = False  # children spawned from now on are watched by pipe EOF
    for pid in h.pool.pids():
        os.kill(pid, signal.SIGKILL)
    h.run_until(lambda: h.ready_children() == 2 and all(
        c.pidfd == -1 for c in h.pool.children.values()))
    job = h.submit("sleep", 30)
    os.kill(h.running_child(job), signal.SIGKILL)
    h.run_until(lambda: len(h.lost) == 1)
    assert "SIGKILL" in str(h.lost[0][1])


def test_max_tasks_per_child_recycles_without_losing_jobs(harness):
    h = harness(concurrency=2, worker_max_tasks_per_child=1)
    jobs = [h.submit("sleep", 0.01) for _ in range(8)]
    h.run_until(lambda: len(h.done) == 8)
    pids = {r.summary for _, r in h.done}
    assert len(pids) == 8  # every task on a fresh child
    assert not h.lost
    assert {j for j, _ in h.done} == set(jobs)


def test_max_memory_recycles_only_a_grown_child(harness):
    h = harness(concurrency=1, worker_max_memory_per_child=200 * 1024)  # 200 MiB
    small = h.submit("grow", 1)
    h.run_until(lambda: len(h.done) == 1)
    again = h.submit("sleep", 0)
    h.run_until(lambda: len(h.done) == 2)
    assert h.done[0][1].summary == h.done[1][1].summary  # under the limit: same child
    h.submit("grow", 300)
    h.run_until(lambda: len(h.done) == 3)
    after = h.submit("sleep", 0)
    h.run_until(lambda: len(h.done) == 4)
    assert h.done[3][1].summary != h.done[2][1].summary  # grown past it: replaced
    assert not h.lost
    assert small and again and after


def test_soft_limit_is_catchable_and_hard_limit_kills(harness):
    h = harness(concurrency=1)
    soft = h.submit("soft_catcher", soft_time_limit=0.3)
    h.run_until(lambda: len(h.done) == 1)
    assert h.done[0][0] is soft and "caught" in h.done[0][1].summary
    hard = h.submit("sleep", 30, time_limit=0.3)
    h.run_until(lambda: len(h.lost) == 1)
    assert h.lost[0][0] is hard and isinstance(h.lost[0][1], TimeLimitExceeded)
    nxt = h.submit("sleep", 0)  # SCENARIOS #4: the next task runs at -c 1
    h.run_until(lambda: any(j is nxt for j, _ in h.done))


def test_fair_short_jobs_never_wait_behind_a_long_one(harness):
    h = harness(concurrency=2, worker_optimization="fair")
    long = h.submit("sleep", 3)
    h.running_child(long)
    t0 = time.monotonic()
    shorts = [h.submit("sleep", 0.01) for _ in range(10)]
    h.run_until(lambda: all(any(j is s for j, _ in h.done) for s in shorts))
    assert time.monotonic() - t0 < 2.0
    assert not any(j is long for j, _ in h.done)


def test_fast_bounds_each_child_backlog_and_gives_back_unstarted_jobs(harness):
    h = harness(concurrency=2, worker_optimization="fast", worker_fast_queue_depth=2)
    jobs = [h.submit("sleep", 1.0) for _ in range(10)]
    h.run_until(lambda: len(h.started) == 2)
    assert all(c.load() <= 3 for c in h.pool.children.values())
    assert len(h.backlog) == 10 - 6
    victim = jobs[0] if jobs[0].pid else jobs[1]
    os.kill(h.running_child(victim), signal.SIGKILL)
    h.run_until(lambda: len(h.lost) == 1)
    assert len(h.unstarted) == 2  # its two queued jobs came back, not lost
    h.run_until(lambda: len(h.done) == 9, timeout=30)


@pytest.mark.parametrize("optimization", ["fair", "fast"])
def test_big_arguments_to_recycled_children(harness, optimization):
    h = harness(concurrency=1, worker_max_tasks_per_child=1, worker_optimization=optimization)
    blob = "x" * (8 * 1024 * 1024)
    for _ in range(3):
        h.submit("size", blob)
    h.run_until(lambda: len(h.done) == 3, timeout=60)
    assert all(r.summary == str(len(blob)) for _, r in h.done)


PARENT = """
import sys, time
sys.path.insert(0, {path!r})
from test_prefork import Harness
h = Harness(concurrency=2).start()
print(" ".join(map(str, h.pool.pids())), flush=True)
time.sleep(60)
"""


def test_children_die_with_their_parent(tmp_path):
    import subprocess
    import sys

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
        wait_until(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status()
                                   != psutil.STATUS_ZOMBIE for p in pids),
                   timeout=10, what="children gone after their parent")
    finally:
        parent.kill()
