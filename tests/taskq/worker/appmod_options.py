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
