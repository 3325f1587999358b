"""``taskq-stress bench drain``: how fast a -c 2 worker drains a pre-filled queue of noops.

The queue is filled first; the worker starts; the clock runs from its first answer to a ping
until every task is done (counted from the worker's own stats). ``--compare celery`` runs a
Celery worker on the same messages, alternating, and prints both rates and their ratio.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Exchange, Queue

from stress.bench_common import Rated, fill, transport_options


@dataclass(frozen=True)
class DrainRun(Rated):
    worker: str
    broker: str
    count: int  # tasks drained
    seconds: float


def _queue_size(url: str, options: dict[str, Any], queue: str) -> int:
    with Connection(url, transport_options=options) as conn:
        q = Queue(queue, Exchange(queue, "direct"), routing_key=queue, durable=True)
        _name, count, _consumers = q(conn.default_channel).queue_declare(passive=True)
        return int(count)


def _env(url: str, options: dict[str, Any], queue: str) -> dict[str, str]:
    return {**os.environ, "TASKQ_STRESS_BENCH_BROKER": url,
            "TASKQ_STRESS_BENCH_OPTIONS": json.dumps(options),
            "TASKQ_STRESS_BENCH_QUEUE": queue, "PYTHONPATH": os.getcwd()}


def _worker_cmd(kind: str, queue: str, node: str, concurrency: int) -> list[str]:
    if kind == "taskq":
        return [sys.executable, "-m", "taskq", "worker", "-A", "stress.bench_apps:app",
                "-P", "prefork", "-c", str(concurrency), "-O", "fair", "-Q", queue, "-n", node,
                "-l", "warning", "--without-mingle", "--without-gossip"]
    return [sys.executable, "-m", "celery", "-A", "stress.bench_apps:celery", "worker",
            "-P", "prefork", "-c", str(concurrency), "-O", "fair", "-Q", queue, "-n", node,
            "-l", "warning", "--without-mingle", "--without-gossip", "--without-heartbeat"]


def _done(url: str, options: dict[str, Any], queue: str, kind: str, node: str) -> int:
    """Tasks the worker finished, from its own stats (taskq and Celery share the format)."""
    from kombu.pidbox import Mailbox

    with Connection(url, transport_options=options) as conn:
        replies = Mailbox("celery", type="fanout", accept=["json"])(conn)._broadcast(
            "stats", {}, [node], reply=True, timeout=1.0, limit=1) or []
    for reply in replies:
        stats = reply.get(node) or {}
        total = stats.get("total") or {}
        return int(sum(total.values())) if isinstance(total, dict) else 0
    return -1


def drain_once(kind: str, url: str, tasks: int, concurrency: int = 2,
               timeout: float = 600.0) -> DrainRun:
    queue = f"bench.{uuid.uuid4().hex[:8]}"
    options = transport_options(url, f"{queue}:")
    fill(url, options, queue, tasks, "bench.noop")
    node = f"{kind}-{queue}@bench"
    proc = subprocess.Popen(_worker_cmd(kind, queue, node, concurrency),
                            env=_env(url, options, queue), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while (first := _done(url, options, queue, kind, node)) < 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{kind} worker did not come up")
        # The clock starts at the worker's first answer; what it finished before that is
        # left out of the count (it may consume before it answers).
        start = time.monotonic()
        deadline = start + timeout
        while True:
            done = _done(url, options, queue, kind, node)
            if done >= tasks:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} drained {done}/{tasks} in {timeout} s")
            time.sleep(0.05)
        return DrainRun(kind, url.split("://")[0], tasks - first, time.monotonic() - start)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        with Connection(url, transport_options=options) as conn:
            try:
                Queue(queue, Exchange(queue, "direct"), routing_key=queue)(
                    conn.default_channel).delete()
            except Exception:
                pass


def report(runs: list[DrainRun]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in sorted({r.worker for r in runs}):
        rates = [r.rate for r in runs if r.worker == kind]
        out[kind] = {"runs": len(rates), "median_tasks_per_s": round(statistics.median(rates)),
                     "rates": [round(r) for r in rates]}
    if "taskq" in out and "celery" in out:
        out["ratio_taskq_over_celery"] = round(
            out["taskq"]["median_tasks_per_s"] / max(out["celery"]["median_tasks_per_s"], 1), 2)
    return out
