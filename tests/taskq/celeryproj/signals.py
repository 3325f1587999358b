"""Signal handlers a Celery project connects; each appends one line to CELERYPROJ_LEDGER."""

import os

from celery import signals


def _write(*words):
    path = os.environ.get("CELERYPROJ_LEDGER")
    if path:
        line = " ".join(str(w) for w in words) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


@signals.worker_process_init.connect
def on_process_init(**kwargs):
    _write("process_init", os.getpid())


@signals.worker_ready.connect
def on_ready(sender=None, **kwargs):
    _write("worker_ready", os.getpid())


@signals.task_prerun.connect
def on_prerun(sender=None, task_id=None, task=None, args=None, kwargs=None, **rest):
    _write("prerun", task_id, task.name, os.getpid())


@signals.task_postrun.connect
def on_postrun(sender=None, task_id=None, task=None, state=None, retval=None, **rest):
    _write("postrun", task_id, task.name, state)


@signals.task_success.connect
def on_success(sender=None, result=None, **rest):
    _write("success", sender.request.id, sender.name)


@signals.task_failure.connect
def on_failure(sender=None, task_id=None, exception=None, args=None, einfo=None, **rest):
    _write("failure", task_id, type(exception).__name__, os.getpid(), sender.request.id,
           len(args), "Traceback" in str(einfo))


@signals.task_retry.connect
def on_retry(sender=None, request=None, reason=None, **rest):
    _write("retry", request.id, request.retries)
