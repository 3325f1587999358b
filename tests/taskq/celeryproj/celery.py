"""The Celery app, as in Celery's "First steps": ``proj/celery.py`` next to ``proj/tasks.py``."""

import os

from celery import Celery
from kombu import Exchange, Queue

NAME = os.environ.get("CELERYPROJ_NAME", "celeryproj")
BROKER = os.environ.get("CELERYPROJ_BROKER", "redis://127.0.0.1:6379/0")
BACKEND = os.environ.get("CELERYPROJ_BACKEND", "redis://127.0.0.1:6379/0")

app = Celery("celeryproj", broker=BROKER, backend=BACKEND, include=["celeryproj.tasks"])
app.conf.update(
    task_default_queue=NAME,
    # A priority queue, as Celery deployments declare them (RabbitMQ: x-max-priority).
    task_queues=[Queue(NAME, Exchange(NAME), routing_key=NAME,
                       queue_arguments={"x-max-priority": 10})],
    broker_transport_options=({"global_keyprefix": f"{NAME}:"}
                              if BROKER.startswith("redis") else {}),
    result_backend_transport_options={"global_keyprefix": f"{NAME}:r:"},
    result_expires=600,
    worker_hijack_root_logger=False,
    broker_channel_error_retry=True,  # a Celery-only setting: taskq names it in a warning
)

from . import signals  # noqa: E402,F401  (connects the signal handlers)
