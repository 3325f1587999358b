"""The tasks the benchmarks use, for taskq and for Celery (same names, same queue).

``bench.noop`` does nothing (drain, publish); ``bench.stamp`` appends the monotonic time it
started at to the file ``TASKQ_STRESS_BENCH_STAMPS`` names (start-up: the task itself says
when the first one ran); ``bench.redis3`` makes three Redis calls (an I/O-bound task: INCR,
SET, GET on a key under the run's prefix, on the broker's Redis, one client per process).
Both apps read their broker and queue from the environment the benchmark sets.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

from taskq import TaskQ

BROKER = os.environ.get("TASKQ_STRESS_BENCH_BROKER", "redis://127.0.0.1:6379/0")
OPTIONS: dict[str, Any] = json.loads(os.environ.get("TASKQ_STRESS_BENCH_OPTIONS", "{}"))
QUEUE = os.environ.get("TASKQ_STRESS_BENCH_QUEUE", "bench")
STAMPS = os.environ.get("TASKQ_STRESS_BENCH_STAMPS", "")

app = TaskQ("bench", broker=BROKER, broker_transport_options=OPTIONS, task_default_queue=QUEUE,
            task_ignore_result=True)


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


def _stamp() -> None:
    """One line per task, one ``os.write`` each (lines from several children never mix);
    ``time.monotonic`` is the same clock in every process on Linux."""
    if STAMPS:
        fd = os.open(STAMPS, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{time.monotonic():.6f} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


stamp = app.task(name="bench.stamp", ignore_result=True)(_stamp)

_redis: dict[int, Any] = {}  # pid -> client: a pool process never uses its parent's socket


def _redis3() -> None:
    client = _redis.get(os.getpid())
    if client is None:
        import redis

        client = _redis[os.getpid()] = redis.Redis.from_url(BROKER)
    key = f"{OPTIONS.get('global_keyprefix', 'bench:')}redis3"
    client.incr(f"{key}:count")
    client.set(key, os.getpid())
    client.get(key)


redis3 = app.task(name="bench.redis3", ignore_result=True)(_redis3)


@functools.cache
def celery_app() -> Any:
    from celery import Celery

    capp = Celery("bench", broker=BROKER, set_as_current=False)
    capp.conf.update(broker_transport_options=OPTIONS, task_default_queue=QUEUE,
                     task_ignore_result=True, worker_hijack_root_logger=False)
    def celery_noop() -> None:
        return None

    capp.task(name="bench.noop", ignore_result=True)(celery_noop)
    capp.task(name="bench.stamp", ignore_result=True)(_stamp)
    capp.task(name="bench.redis3", ignore_result=True)(_redis3)
    return capp


def __getattr__(name: str) -> Any:
    """``celery -A stress.bench_apps:celery worker`` finds the Celery app here; it is built
    on that first look, so a taskq worker loading this module does not import Celery (the
    start-up benchmark would count it)."""
    if name == "celery":
        try:
            return celery_app()
        except ImportError:  # pragma: no cover - celery is optional
            return None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
