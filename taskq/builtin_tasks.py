"""Tasks every app has, under Celery's names, because the canvas sends them.

- ``celery.accumulate``: the body ``Task.replace`` puts after a group that replaces a task,
  so that one task (with the replaced task's id) ends with the group's results as a list.
- ``celery.map`` / ``celery.starmap`` (``task.map``, ``task.starmap``): one task that calls
  ``task`` here, in turn, with each item (``task(item)``, ``task(*item)``); the signature's
  own partial arguments are not used, as in Celery.
- ``celery.chunks`` (``task.chunks`` when sent as a task): starts the group of starmaps and
  ends with the group's tuple form, which Celery also stores for a returned result handle.

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

    def xmap(task: Any, it: Any) -> list[Any]:
        fn = _task_of(app, task)
        return [fn(item) for item in it]

    def xstarmap(task: Any, it: Any) -> list[Any]:
        fn = _task_of(app, task)
        return [fn(*item) for item in it]

    def chunks(task: Any, it: Any, n: int) -> Any:
        from taskq.canvas import chunks as _chunks

        return _chunks(task, it, n, app=app).apply_async().as_tuple()

    for name, fn in (("celery.accumulate", accumulate), ("celery.map", xmap),
                     ("celery.starmap", xstarmap), ("celery.chunks", chunks)):
        if name not in app.tasks:
            app.task(name=name)(fn)


def _task_of(app: TaskQ, task: Any) -> Any:
    """The registered task a map's ``task`` signature names (``NotRegistered`` if none)."""
    from taskq.canvas import signature

    return app.get_task(signature(task, app).name)
