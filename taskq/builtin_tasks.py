"""Tasks every app has, under Celery's names, because the canvas sends them.

- ``celery.accumulate``: the body ``Task.replace`` puts after a group that replaces a task,
  so that one task (with the replaced task's id) ends with the group's results as a list.

``inspect registered`` leaves them out unless asked (as Celery does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskq.app import TaskQ

PREFIX = "celery."


def own_tasks(app: TaskQ) -> list[str]:
    """The names of ``app``'s tasks without the built-in ones, sorted."""
    return sorted(name for name in app.tasks if not name.startswith(PREFIX))


def register(app: TaskQ) -> None:
    """Add the built-in tasks to ``app`` (its own tasks of the same name win)."""

    def accumulate(*args: Any, index: int | None = None) -> Any:
        return args[index] if index is not None else args

    if "celery.accumulate" not in app.tasks:
        app.task(name="celery.accumulate")(accumulate)
