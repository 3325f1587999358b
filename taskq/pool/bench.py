"""Measure lost-process detection: ``python -m taskq.pool.bench --kills 500``.

For each kill of a child running a task it records: SIGKILL → pidfd readable (the kernel
reports the death once the child's memory is freed), pidfd readable → job marked lost (the
pool's own work), SIGKILL → lost, and SIGKILL → replacement child ready; with the children's
RSS. A benchmark, not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import time
import uuid
from typing import Any

import psutil

from taskq import TaskQ
from taskq.pool.base import Job
from taskq.pool.prefork import Child, PreforkPool
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


def run(kills: int, concurrency: int, mib: int) -> dict[str, Any]:
    loop = Loop()
    marks: dict[str, float] = {}
    lost_at: list[float] = []
    t_readable: list[float] = []
    t_pool: list[float] = []
    t_lost: list[float] = []
    t_ready: list[float] = []
    rss: list[int] = []

    def on_lost(job: Job, exc: BaseException) -> None:
        lost_at.append(time.monotonic())

    pool = PreforkPool(app, concurrency=concurrency, hostname="bench",
                       on_started=lambda j, p: None, on_done=lambda j, r: None,
                       on_lost=on_lost, on_unstarted=lambda j: None)
    original_exit, original_handle = pool._on_exit, pool._handle

    def timed_exit(child: Child) -> None:
        marks["readable"] = time.monotonic()
        original_exit(child)

    def timed_handle(child: Child, frame: tuple[Any, ...]) -> None:
        if frame[0] == "ready" and "kill" in marks and "ready" not in marks:
            marks["ready"] = time.monotonic()
        original_handle(child, frame)

    pool._on_exit = timed_exit  # type: ignore[method-assign]
    pool._handle = timed_handle  # type: ignore[method-assign]
    pool.start(loop)
    iterate = loop.iterate_handling(lambda exc: False)

    def until(pred: Any, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark stalled")
            next(iterate)

    def ready_count() -> int:
        return sum(1 for c in pool.children.values() if c.ready)

    until(lambda: ready_count() == concurrency)
    for _ in range(kills):
        job = Job(msg=TaskMessage(task="bench.hold", id=str(uuid.uuid4()), args=(mib,)))
        until(pool.can_accept)
        pool.apply(job)
        until(lambda job=job: job.pid is not None)
        assert job.pid is not None
        if mib:
            until(lambda job=job: psutil.Process(job.pid).memory_info().rss > mib << 20)
        rss.append(psutil.Process(job.pid).memory_info().rss)
        marks.clear()
        count = len(lost_at)
        marks["kill"] = time.monotonic()
        os.kill(job.pid, signal.SIGKILL)
        until(lambda count=count: len(lost_at) > count and "ready" in marks)
        t_readable.append(marks["readable"] - marks["kill"])
        t_pool.append(lost_at[-1] - marks["readable"])
        t_lost.append(lost_at[-1] - marks["kill"])
        t_ready.append(marks["ready"] - marks["kill"])
        until(lambda: ready_count() == concurrency)
    pool.terminate()
    loop.close()

    def summary(values: list[float]) -> dict[str, float]:
        return {"p50_ms": round(statistics.median(values) * 1000, 3),
                "p99_ms": round(_pct(values, 0.99) * 1000, 3),
                "max_ms": round(max(values) * 1000, 3)}

    return {
        "kills": kills, "concurrency": concurrency,
        "child_rss_mib_median": round(statistics.median(rss) / 2**20, 1),
        "kill_to_pidfd_readable": summary(t_readable),
        "pidfd_readable_to_lost": summary(t_pool),
        "kill_to_lost": summary(t_lost),
        "kill_to_replacement_ready": summary(t_ready),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--mib", type=int, default=0, help="memory each child holds")
    args = parser.parse_args()
    import json

    print(json.dumps(run(args.kills, args.concurrency, args.mib), indent=2))


if __name__ == "__main__":
    main()
