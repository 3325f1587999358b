"""The Celery app Flower runs with in test_e2e_flower.py (``celery -A flower_app flower``):
the test's broker and result keys, taken from the TASKQ_* variables a taskq worker of the test
reads, and Celery stubs of two appmod tasks (Flower's apply buttons look tasks up by name in
its own app; the taskq worker runs them)."""

from __future__ import annotations

import json
import os

from celery import Celery

env = os.environ
app = Celery("flower_app", broker=env["TASKQ_BROKER_URL"], backend=env["TASKQ_RESULT_BACKEND"])
app.conf.update(
    broker_transport_options=json.loads(env.get("TASKQ_BROKER_TRANSPORT_OPTIONS", "{}")),
    result_backend_transport_options=json.loads(
        env.get("TASKQ_RESULT_BACKEND_TRANSPORT_OPTIONS", "{}")),
    task_default_queue=env["TASKQ_TASK_DEFAULT_QUEUE"],
)


@app.task(name="appmod.add")
def add(x: int, y: int) -> int:
    raise NotImplementedError("runs on the taskq worker")


@app.task(name="appmod.sleeper")
def sleeper(seconds: float, ledger: str | None = None) -> str:
    raise NotImplementedError("runs on the taskq worker")
