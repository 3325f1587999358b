"""A tiny app for trying the worker: `cd examples && taskq worker -A demo -P threads`.

Send it work from another shell: `cd examples && taskq call demo.add --args '[2, 3]'`, then
`taskq result <id> --wait 5`.
"""

from __future__ import annotations

import time

from taskq import TaskQ

app = TaskQ(
    "demo",
    broker="redis://127.0.0.1:6379/0",
    backend="redis://127.0.0.1:6379/0",
    broker_transport_options={"global_keyprefix": "taskq-demo:"},
    result_backend_transport_options={"global_keyprefix": "taskq-demo:"},
    task_default_queue="taskq-demo",
)


@app.task
def add(a: int, b: int) -> int:
    return a + b


@app.task(bind=True, acks_late=True)
def slow(self, seconds: float) -> str:  # type: ignore[no-untyped-def]
    time.sleep(seconds)
    return f"slept {seconds}s on {self.request.hostname}"
