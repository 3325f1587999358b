"""Tasks with Celery's task options ``base`` and ``trail``, for a worker of appmod that
imports this module (``imports`` setting; test_e2e_celery_settings.py)."""

from __future__ import annotations

from typing import Any

from appmod import app

from taskq import Task


class Greeter(Task):
    """A base class as Celery projects write them: a helper every task made from it has."""

    greeting = "hello"

    def greet(self, who: str) -> str:
        return f"{self.greeting} {who} from {self.name}"


@app.task(base=Greeter, bind=True)
def greet(self: Any, who: str) -> str:
    return str(self.greet(who))


@app.task(bind=True)
def spawn(self: Any) -> str:
    app.send_task("appmod.add", (1, 1))
    return "sent"


@app.task(bind=True, trail=False)
def spawn_without_trail(self: Any) -> str:
    app.send_task("appmod.add", (2, 2))
    return "sent"


class Audited(Task):
    """A base class whose handlers note each call in the file the task is given."""

    def _note(self, path: str, line: str) -> None:
        with open(path, "a") as f:
            f.write(line + "\n")

    def before_start(self, task_id: Any, args: Any, kwargs: Any) -> None:
        self._note(args[0], f"before_start {task_id}")

    def on_success(self, retval: Any, task_id: Any, args: Any, kwargs: Any) -> None:
        self._note(args[0], f"on_success {task_id} {retval} {self.request.id}")

    def on_failure(self, exc: Any, task_id: Any, args: Any, kwargs: Any, einfo: Any) -> None:
        self._note(args[0], f"on_failure {task_id} {type(exc).__name__} "
                            f"{einfo.type.__name__}")

    def on_retry(self, exc: Any, task_id: Any, args: Any, kwargs: Any, einfo: Any) -> None:
        self._note(args[0], f"on_retry {task_id} {type(exc).__name__}")

    def after_return(self, status: Any, retval: Any, task_id: Any, args: Any, kwargs: Any,
                     einfo: Any) -> None:
        self._note(args[0], f"after_return {task_id} {status}")


@app.task(base=Audited, bind=True, max_retries=1, default_retry_delay=0)
def audited(self: Any, path: str, fail: bool) -> str:
    if fail and self.request.retries == 0:
        raise self.retry(exc=KeyError("again"))
    if fail:
        raise ValueError("boom")
    return "ok"


@app.task(throws=(KeyError,))
def picky(key: str) -> None:
    raise KeyError(key)


@app.task(send_events=False)
def quiet() -> str:
    return "quiet"


@app.task(bind=True, max_retries=1, default_retry_delay=0)
def priority_seen(self: Any) -> Any:
    """The priority in self.request.delivery_info, on the first attempt and on its retry."""
    if not self.request.retries:
        raise self.retry()
    return self.request.delivery_info.get("priority")


@app.task(bind=True)
def progress_event(self: Any) -> str:
    self.send_event("task-progress", done=1, of=2)
    return "sent"


@app.task(acks_late=True, acks_on_failure_or_timeout=False)
def fails_dead_lettered() -> None:
    raise ValueError("to the dead letters")


@app.task(acks_late=True)
def fails_acked() -> None:
    raise ValueError("acked")


@app.task
def send_a_chain() -> Any:
    """Sends add(1, 1) | add(2) and returns its result, as a Celery task may."""
    from taskq.canvas import Signature, chain

    return chain(Signature("appmod.add", (1, 1), app=app), Signature("appmod.add", (2,), app=app))()


@app.task
def unencodable() -> Any:
    """Returns what the JSON result serializer cannot take."""
    return object()
