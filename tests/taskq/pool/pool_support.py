"""The pool tests' app, tasks and harness: a real ``Loop`` driving a real ``PreforkPool``.

Children are forks of the test process, so these module-level tasks exist in them too.
``Harness.run_until`` turns the loop until a condition holds, with a deadline: no sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import psutil

from taskq import Task, TaskQ
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
def soft_catcher(inside: str | None = None) -> str:
    from taskq import SoftTimeLimitExceeded

    try:
        if inside:
            open(inside, "w").close()  # tell the test the try block is entered
        time.sleep(10)
    except SoftTimeLimitExceeded:
        return "caught"
    return "not caught"


@app.task(name="rendezvous")
def rendezvous(folder: str, count: int) -> int:
    """Arrive (a file of this call's own in ``folder``), then wait until ``count`` calls have
    arrived: it returns only if that many run at the same time. Returns the pid."""
    open(os.path.join(folder, uuid.uuid4().hex), "w").close()
    deadline = time.monotonic() + 30
    while len(os.listdir(folder)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(os.listdir(folder))} of {count} arrived")
        time.sleep(0.01)
    return os.getpid()


@app.task(name="wait_for")
def wait_for(path: str) -> int:
    """Run until the test makes ``path`` (60 s at most); returns the pid."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never made")
        time.sleep(0.01)
    return os.getpid()


@app.task(name="busy_catcher")
def busy_catcher(seconds: float) -> str:
    """Python code running for ``seconds`` (short sleeps: a soft limit raised from another
    thread lands between them); says whether the soft limit interrupted it."""
    from taskq import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            time.sleep(0.01)
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


@app.task(name="fds")
def fds(path: str) -> None:
    """Write what each of this process's fds points at to ``path`` (JSON)."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    with open(path, "w") as fh:
        json.dump(out, fh)


@app.task(name="fork_and_hold")
def fork_and_hold(pidfile: str) -> None:
    """Fork a grandchild that keeps every inherited fd (so the event pipe) open, then hang."""
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    with open(pidfile, "w") as fh:
        fh.write(str(pid))
    time.sleep(30)


class _OwnOnSuccess(Task):
    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        return None


@app.task(name="handled", base=_OwnOnSuccess)
def handled() -> str:
    return "ok"


def message(name: str, *args: Any) -> TaskMessage:
    return TaskMessage(task=name, id=str(uuid.uuid4()), args=args)


class Harness:
    def __init__(self, concurrency: int = 2, pool_options: dict[str, Any] | None = None,
                 **conf: Any) -> None:
        app.conf.restore_overrides({})
        app.conf.override(conf)
        self.loop = Loop()
        self.started: list[Job] = []
        self.done: list[tuple[Job, JobResult]] = []
        self.lost: list[tuple[Job, BaseException]] = []
        self.unstarted: list[Job] = []
        self.backlog: list[Job] = []
        self.checks: list[Callable[[], None]] = []
        self.pool = PreforkPool(app, concurrency=concurrency, hostname="test",
                                on_started=lambda j, pid: self.started.append(j),
                                on_done=self._done, on_lost=self._lost,
                                on_unstarted=self._unstarted, **(pool_options or {}))
        self.pool.on_capacity = self.feed
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
        return sum(1 for c in self.pool.children.values() if c.ready and not c.retiring)

    def submit(self, name: str, *args: Any, time_limit: float | None = None,
               soft_time_limit: float | None = None) -> Job:
        job = Job(msg=message(name, *args), time_limit=time_limit,
                  soft_time_limit=soft_time_limit)
        self.backlog.append(job)
        self.feed()
        return job

    def feed(self) -> None:
        while self.backlog and self.pool.can_accept():
            self.pool.apply(self.backlog.pop(0))

    def run_until(self, predicate: Callable[[], Any], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s; pool: "
                                     f"{self.pool.info()}")
            next(self._iter)
            for check in self.checks:
                check()
            self.feed()

    def running_child(self, job: Job) -> int:
        self.run_until(lambda: job.pid is not None)
        assert job.pid is not None
        return job.pid

    def done_ids(self) -> list[str]:
        return [j.id for j, _ in self.done]

    def close(self) -> None:
        self.pool.terminate()
        self.loop.close()
        app.conf.restore_overrides({})


def zombies() -> list[psutil.Process]:
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.NoSuchProcess:
            pass
    return out
