"""``taskq-stress bench drain``: how fast a -c 2 worker drains a pre-filled queue of noops.

The queue is filled first; the worker starts; the clock runs from its first answer to a ping
until every task is done (counted from the worker's own stats). ``--compare celery`` runs a
Celery worker on the same messages, alternating, and prints both rates and their ratio.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
from kombu import Connection, Exchange, Queue

from stress.bench_common import Rated, cleanup, compile_checkout, fill, transport_options


@dataclass(frozen=True)
class DrainRun(Rated):
    worker: str
    broker: str
    count: int  # tasks drained
    seconds: float
    # CPU seconds (user + system) per task drained, in microseconds, over the timed part:
    # the worker's main process, and its pool's processes together (0: not read).
    main_cpu_us: float = 0.0
    pool_cpu_us: float = 0.0


class _CpuMeter:
    """CPU time of a worker's main process and of its pool's processes, from a start point.

    The pool is the main process's descendants at the start; one that ends before the last
    reading (recycled, killed) counts what it used until its last reading."""

    def __init__(self, pid: int) -> None:
        self.main = psutil.Process(pid)
        self.pool = self.main.children(recursive=True)
        self.first = self._read()
        self.last = self.first

    @staticmethod
    def _cpu(proc: psutil.Process) -> float | None:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            return None
        return times.user + times.system

    def _read(self) -> list[float | None]:
        return [self._cpu(p) for p in (self.main, *self.pool)]

    def update(self) -> None:
        self.last = [new if new is not None else old
                     for new, old in zip(self._read(), self.last, strict=True)]

    def per_task_us(self, tasks: int) -> tuple[float, float]:
        """(main, pool) CPU microseconds per task since the start."""
        used = [(b or 0.0) - (a or 0.0) for a, b in zip(self.first, self.last, strict=True)]
        if tasks <= 0:
            return 0.0, 0.0
        return used[0] / tasks * 1e6, sum(used[1:]) / tasks * 1e6


def _queue_size(url: str, options: dict[str, Any], queue: str) -> int:
    with Connection(url, transport_options=options) as conn:
        q = Queue(queue, Exchange(queue, "direct"), routing_key=queue, durable=True)
        _name, count, _consumers = q(conn.default_channel).queue_declare(passive=True)
        return int(count)


def _env(url: str, options: dict[str, Any], queue: str) -> dict[str, str]:
    return {**os.environ, "TASKQ_STRESS_BENCH_BROKER": url,
            "TASKQ_STRESS_BENCH_OPTIONS": json.dumps(options),
            "TASKQ_STRESS_BENCH_QUEUE": queue, "PYTHONPATH": os.getcwd()}


def _worker_cmd(kind: str, queue: str, node: str, concurrency: int,
                worker_args: Sequence[str] = ()) -> list[str]:
    if kind == "taskq":
        return [sys.executable, "-m", "taskq", "worker", "-A", "stress.bench_apps:app",
                "-P", "prefork", "-c", str(concurrency), "-O", "fair", "-Q", queue, "-n", node,
                "-l", "warning", "--without-mingle", "--without-gossip", *worker_args]
    return [sys.executable, "-m", "celery", "-A", "stress.bench_apps:celery", "worker",
            "-P", "prefork", "-c", str(concurrency), "-O", "fair", "-Q", queue, "-n", node,
            "-l", "warning", "--without-mingle", "--without-gossip", "--without-heartbeat",
            *worker_args]


def _done(url: str, options: dict[str, Any], queue: str, kind: str, node: str,
          timeout: float = 1.0) -> int:
    """Tasks the worker finished, from its own stats (taskq and Celery share the format);
    -1 when it did not answer within ``timeout``."""
    from kombu.pidbox import Mailbox

    with Connection(url, transport_options=options) as conn:
        replies = Mailbox("celery", type="fanout", accept=["json"])(conn)._broadcast(
            "stats", {}, [node], reply=True, timeout=timeout, limit=1) or []
    for reply in replies:
        stats = reply.get(node) or {}
        total = stats.get("total") or {}
        return int(sum(total.values())) if isinstance(total, dict) else 0
    return -1


@dataclass(frozen=True)
class RunningWorker:
    """A benchmark's worker, up: it has answered a stats request."""

    kind: str
    url: str
    options: dict[str, Any]
    queue: str
    node: str
    proc: subprocess.Popen[bytes]
    first_done: int  # tasks finished when it first answered

    def done(self) -> int:
        return _done(self.url, self.options, self.queue, self.kind, self.node)


@contextlib.contextmanager
def running_worker(kind: str, url: str, options: dict[str, Any], queue: str,
                   concurrency: int = 2, worker_args: Sequence[str] = ()
                   ) -> Iterator[RunningWorker]:
    """Start a ``kind`` worker on ``queue``, wait for its first answer, kill its process
    group on the way out (the queue and keys are the caller's to delete)."""
    node = f"{kind}-{queue}@bench"
    compile_checkout()
    proc = subprocess.Popen(_worker_cmd(kind, queue, node, concurrency, worker_args),
                            env=_env(url, options, queue), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        # Asked often at first: a request sent before the worker listens is lost, and the
        # worker drains meanwhile (a fast one, a thousand tasks in half a second); then
        # less often, for a worker slow to answer.
        wait = 0.25
        while (first := _done(url, options, queue, kind, node, timeout=wait)) < 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{kind} worker did not come up")
            wait = min(1.0, wait * 1.5)
        yield RunningWorker(kind, url, options, queue, node, proc, first)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def drain_once(kind: str, url: str, tasks: int, concurrency: int = 2,
               timeout: float = 600.0, task: str = "bench.noop",
               worker_args: Sequence[str] = (), budget: float | None = None) -> DrainRun:
    """Fill a fresh queue with ``tasks`` ``task`` messages and time a worker draining it.
    With ``budget`` (seconds), a drain that takes longer stops there and its rate is what
    it finished meanwhile (a slow worker, e.g. one forking a child per task); without, a
    drain longer than ``timeout`` fails."""
    queue = f"bench.{uuid.uuid4().hex[:8]}"
    prefix = f"{queue}:"
    options = transport_options(url, prefix)
    try:
        fill(url, options, queue, tasks, task)
        with running_worker(kind, url, options, queue, concurrency, worker_args) as worker:
            # The clock starts at the worker's first answer; what it finished before that
            # is left out of the count (it may consume before it answers).
            start = time.monotonic()
            meter = _CpuMeter(worker.proc.pid)
            if tasks - worker.first_done < max(1, tasks // 10):
                raise RuntimeError(
                    f"{kind} finished {worker.first_done} of {tasks} tasks before it first "
                    "answered: too few left to time; queue more tasks")
            deadline = start + (timeout if budget is None else budget)
            done = worker.first_done
            while True:
                done = max(done, worker.done())  # -1: no answer this time
                meter.update()
                if done >= tasks:
                    break
                if time.monotonic() > deadline:
                    if budget is None:
                        raise RuntimeError(f"{kind} drained {done}/{tasks} in {timeout} s")
                    break
                time.sleep(0.05)
            seconds = time.monotonic() - start
            main_us, pool_us = meter.per_task_us(done - worker.first_done)
            return DrainRun(kind, url.split("://")[0], done - worker.first_done, seconds,
                            main_us, pool_us)
    finally:
        cleanup(url, prefix, queue)


def report(runs: list[DrainRun]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in sorted({r.worker for r in runs}):
        mine = [r for r in runs if r.worker == kind]
        rates = [r.rate for r in mine]
        out[kind] = {"runs": len(rates), "median_tasks_per_s": round(statistics.median(rates)),
                     "rates": [round(r) for r in rates],
                     "median_main_cpu_us_per_task": round(
                         statistics.median(r.main_cpu_us for r in mine)),
                     "median_pool_cpu_us_per_task": round(
                         statistics.median(r.pool_cpu_us for r in mine))}
    if "taskq" in out and "celery" in out:
        out["ratio_taskq_over_celery"] = round(
            out["taskq"]["median_tasks_per_s"] / max(out["celery"]["median_tasks_per_s"], 1), 2)
    return out
