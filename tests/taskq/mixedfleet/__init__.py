"""A Celery project that a Celery worker and a taskq worker run side by side
(test_mixed_fleet.py): one task that notes each of its runs in a ledger file with a single
``os.write`` (task id, the node that ran it, the pid), independent of broker and backend.
Its settings come from MIXEDFLEET_* variables, so each test has its own queue and keys."""

import os

from celery import Celery

NAME = os.environ.get("MIXEDFLEET_NAME", "mixedfleet")
BROKER = os.environ.get("MIXEDFLEET_BROKER", "redis://127.0.0.1:6379/0")
LEDGER = os.environ.get("MIXEDFLEET_LEDGER", os.devnull)

app = Celery("mixedfleet", broker=BROKER, backend="redis://127.0.0.1:6379/0")
app.conf.update(
    task_default_queue=NAME,
    broker_transport_options=({"global_keyprefix": f"{NAME}:"}
                              if BROKER.startswith("redis") else {}),
    result_backend_transport_options={"global_keyprefix": f"{NAME}:r:"},
    result_expires=600,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
)


@app.task(bind=True)
def record(self, n):
    line = f"{self.request.id} {self.request.hostname} {os.getpid()} {n}\n".encode()
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return n
