"""``taskq-stress bench pool``: how fast the prefork pool notices a dead child and replaces it.

For each SIGKILL of a child running a task it records, from outside the pool (the benchmark
holds its own pidfd on the child):

- kill → pidfd readable: the kernel's part (it reports a death once the memory is freed);
- pidfd readable → job marked lost (``on_lost`` called): the pool's part, one loop iteration;
- kill → lost, and kill → replacement child ready (``on_capacity``);

with the children's RSS. A benchmark, not a test: ``run()`` returns the figures and the
command prints them as JSON.
"""

from __future__ import annotations

import os
import select
import signal
import statistics
import time
import uuid
from typing import Any

import psutil

from taskq import TaskQ
from taskq.pool.base import Job
from taskq.pool.prefork import PreforkPool
from taskq.protocol import TaskMessage
from taskq.worker.loop import Loop

app = TaskQ("bench", broker="memory://")
_BALLAST = bytearray()


@app.task(name="bench.hold")
def hold(mib: int) -> None:
    global _BALLAST
    if mib and len(_BALLAST) < mib << 20:
        _BALLAST = bytearray(os.urandom(1024) * (mib << 10))
    time.sleep(3600)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values) * 1000, 3),
            "p99_ms": round(_pct(values, 0.99) * 1000, 3),
            "max_ms": round(max(values) * 1000, 3)}


def run(kills: int = 500, concurrency: int = 2, mib: int = 0,
        use_pidfd: bool = True) -> dict[str, Any]:
    loop = Loop()
    lost_at: list[float] = []
    ready_at: list[float] = []

    def on_lost(job: Job, exc: BaseException) -> None:
        lost_at.append(time.monotonic())

    pool = PreforkPool(app, concurrency=concurrency, hostname="bench", use_pidfd=use_pidfd,
                       on_started=lambda j, p: None, on_done=lambda j, r: None,
                       on_lost=on_lost, on_unstarted=lambda j: None)
    pool.on_capacity = lambda: ready_at.append(time.monotonic())
    pool.start(loop)
    iterate = loop.iterate_handling(lambda exc: False)

    def until(pred: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError(f"benchmark stalled: {pool.info()}")
            next(iterate)

    def full() -> bool:
        return sum(1 for c in pool.children.values() if c.ready) == concurrency

    t_readable: list[float] = []
    t_pool: list[float] = []
    t_lost: list[float] = []
    t_ready: list[float] = []
    rss: list[int] = []
    try:
        until(full)
        for _ in range(kills):
            job = Job(msg=TaskMessage(task="bench.hold", id=str(uuid.uuid4()), args=(mib,)))
            until(pool.can_accept)
            pool.apply(job)
            until(lambda job=job: job.pid is not None)
            assert job.pid is not None
            proc = psutil.Process(job.pid)
            if mib:
                until(lambda proc=proc: proc.memory_info().rss > mib << 20)
            rss.append(proc.memory_info().rss)
            lost_count, ready_count = len(lost_at), len(ready_at)
            pidfd = os.pidfd_open(job.pid)
            try:
                poller = select.poll()
                poller.register(pidfd, select.POLLIN)
                killed = time.monotonic()
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                poller.poll(10_000)
                readable = time.monotonic()
            finally:
                os.close(pidfd)
            until(lambda n=lost_count: len(lost_at) > n)
            until(lambda n=ready_count: len(ready_at) > n and full())
            t_readable.append(readable - killed)
            t_pool.append(lost_at[-1] - readable)
            t_lost.append(lost_at[-1] - killed)
            t_ready.append(ready_at[ready_count] - killed)
    finally:
        pool.terminate()
        loop.close()
    return {
        "kills": kills, "concurrency": concurrency, "pidfd": use_pidfd,
        "child_rss_mib_median": round(statistics.median(rss) / 2**20, 1),
        "kill_to_pidfd_readable": _summary(t_readable),
        "pidfd_readable_to_lost": _summary(t_pool),
        "kill_to_lost": _summary(t_lost),
        "kill_to_replacement_ready": _summary(t_ready),
    }

