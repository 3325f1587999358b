"""The app the worker process runs for Celery's integration suite: the suite's
``celery_config`` (conftest.py), its tasks module, ``celery.ping`` and the class-based task
the conftest registers. Broker and backend come from TEST_BROKER / TEST_BACKEND."""

import os

from celery import Celery
from celery.contrib.testing.tasks import ping  # noqa: F401  (registers celery.ping)

app = Celery("celery.tests")  # the session app's name in celery.contrib.testing
app.conf.update(
    broker_url=os.environ.get("TEST_BROKER", "pyamqp://"),
    result_backend=os.environ.get("TEST_BACKEND", "redis://"),
    result_extended=True,
    task_create_missing_queues=False,
    broker_heartbeat=0,
)
app.loader.import_task_module("t.integration.tasks")

from t.integration.tasks import ClassBasedAutoRetryTask  # noqa: E402

app.register_task(ClassBasedAutoRetryTask())
