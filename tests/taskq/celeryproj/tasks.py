"""Tasks written for Celery: ``@app.task`` and ``@shared_task``, bound, retrying, with a
custom base class, ``autoretry_for``, ``update_state``, ``Reject`` and ``Ignore``."""

import os
import signal
import time

from celery import Task, current_task, group, shared_task
from celery.exceptions import Ignore, Reject

from .celery import app


def _append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def _count(path):
    try:
        with open(path) as f:
            return len(f.readlines())
    except FileNotFoundError:
        return 0


@app.task
def add(x, y):
    return x + y


@shared_task(bind=True)
def whoami(self, *args, **kwargs):
    req = self.request
    return {
        "id": req.id, "task": req.task, "args": list(req.args), "kwargs": req.kwargs,
        "retries": req.retries, "hostname": req.hostname, "is_eager": req.is_eager,
        "called_directly": req.called_directly, "routing_key": req.delivery_info.get(
            "routing_key"), "current_task_id": current_task.request.id,
        "name": self.name, "pid": os.getpid(),
    }


@shared_task(bind=True, max_retries=3, default_retry_delay=0.1)
def flaky(self, path, succeed_on=2):
    _append(path, f"attempt {self.request.retries}")
    if self.request.retries < succeed_on:
        raise self.retry(countdown=0.1)
    return self.request.retries


@app.task(bind=True, max_retries=1)
def always_retry(self):
    raise self.retry(countdown=0)


@app.task(bind=True)
def progress(self, gate):
    self.update_state(state="PROGRESS", meta={"done": 1, "of": 2})
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "finished"


class Audited(Task):
    """A custom base class, as Celery projects write them."""

    audit_path = None

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        _append(args[0], f"on_failure {task_id} {type(exc).__name__} {exc} "
                         f"{'Traceback' in str(einfo)}")

    def on_success(self, retval, task_id, args, kwargs):
        _append(args[0], f"on_success {task_id} {retval}")

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        _append(args[0], f"after_return {task_id} {status}")


@app.task(base=Audited)
def explode(path):
    raise ValueError("boom")


@app.task(base=Audited, bind=True)
def audited_ok(self, path):
    return f"ok-{self.request.retries}"


@app.task(base=Audited)
def dies(path):
    """Its pool process dies under it, as an out-of-memory kill would end it."""
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(base=Audited, time_limit=1)
def overruns(path):
    time.sleep(60)


@shared_task(bind=True, autoretry_for=(ConnectionError,), retry_backoff=1,
             retry_backoff_max=1, retry_jitter=False, retry_kwargs={"max_retries": 4})
def autoretried(self, path):
    _append(path, f"attempt {self.request.retries}")
    if _count(path) < 3:
        raise ConnectionError("not yet")
    return self.request.retries


@app.task
def refuse():
    raise Reject("not for me", requeue=False)


@app.task
def ignored():
    raise Ignore()


@app.task(rate_limit="30/m")
def limited():
    return time.time()


@app.task
def spawn(n):
    """Sends tasks and a group from inside itself: its result's children."""
    for i in range(n):
        add.delay(i, i)
    group(add.s(i, i) for i in range(n)).delay()
    return n


@app.task(bind=True)
def add_replaced(self, x, y):
    raise self.replace(add.s(x, y))


@app.task(bind=True)
def add_to_all(self, nums, val):
    raise self.replace(group(add.s(n, val) for n in nums))


@app.task(bind=True)
def properties(self):
    return self.request.properties
