"""The noop task the drain benchmark uses, for taskq and for Celery (same name, same queue).

Both apps read their broker and queue from the environment the benchmark sets.
"""

from __future__ import annotations

import json
import os
from typing import Any

from taskq import TaskQ

BROKER = os.environ.get("TASKQ_STRESS_BENCH_BROKER", "redis://127.0.0.1:6379/0")
OPTIONS: dict[str, Any] = json.loads(os.environ.get("TASKQ_STRESS_BENCH_OPTIONS", "{}"))
QUEUE = os.environ.get("TASKQ_STRESS_BENCH_QUEUE", "bench")

app = TaskQ("bench", broker=BROKER, broker_transport_options=OPTIONS, task_default_queue=QUEUE,
            task_ignore_result=True)


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


def celery_app() -> Any:
    from celery import Celery

    capp = Celery("bench", broker=BROKER, set_as_current=False)
    capp.conf.update(broker_transport_options=OPTIONS, task_default_queue=QUEUE,
                     task_ignore_result=True, worker_hijack_root_logger=False)
    def celery_noop() -> None:
        return None

    capp.task(name="bench.noop", ignore_result=True)(celery_noop)
    return capp


try:  # `celery -A stress.bench_apps:celery worker` finds this
    celery = celery_app()
except ImportError:  # pragma: no cover - celery is optional
    celery = None
