"""The app a stress cell's taskq worker loads: the target app with the ledger hooks installed.

``taskq worker -A stress.harness`` loads the app named by ``TASKQ_STRESS_APP`` (default: the
stress workload, ``stress.workload``) and installs, on taskq's hooks:

- in the worker's main process, ``lost``: the child running a task died (with whether the task
  was requeued), at the moment the pool noticed;
- in the pool children, ``started``/``finished`` around app teams' own tasks, so their tasks
  need no change (the stress workload's tasks write these themselves).

Everything else about the worker (flags, ``TASKQ_*`` settings) is the user's real command.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal

from stress import ledger
from stress.workload import noop, task_name, traced
from taskq import TaskQ
from taskq.loading import find_app
from taskq.task import Task

__all__ = ["APP_ENV", "FDS_ENV", "app", "fd_pressure", "install"]

APP_ENV = "TASKQ_STRESS_APP"


def _own_ledger(task: Task) -> bool:
    return task.name.startswith("stress.")


def install(target: TaskQ) -> TaskQ:
    """Add the ledger hooks to ``target`` (they write nothing outside a stress cell)."""

    def on_lost(task_id: str, name: str, exc: BaseException, requeued: bool, *_: object) -> None:
        write = ledger.writer("worker")
        if write is not None:
            write.write("lost", task_id, name=name, error=type(exc).__name__,
                        requeued=requeued)

    def on_prerun(task: Task, task_id: str) -> None:
        write = ledger.writer("task")
        if write is not None and not _own_ledger(task):
            write.write("started", task_id, kind=task.name, **ledger.member())

    def on_postrun(task: Task, task_id: str, state: str) -> None:
        write = ledger.writer("task")
        if write is not None and not _own_ledger(task):
            write.write("finished", task_id, kind=task.name, outcome=state.lower())

    if task_name("noop") not in target.tasks:  # the runner's warm-up task
        target.task(name=task_name("noop"), bind=True)(traced("noop", noop))
    target.hooks.task_lost.append(on_lost)
    target.hooks.task_prerun.append(on_prerun)
    target.hooks.task_postrun.append(on_postrun)
    return target


# The deadlock oracle asks every worker process for its stacks with SIGUSR2 (the pool's
# children register it themselves).
with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):
    faulthandler.register(signal.SIGUSR2, all_threads=True, chain=False)

FDS_ENV = "TASKQ_STRESS_FDS"
_pressure: list[int] = []  # the fds held open in the worker's main process


def fd_pressure(count: int) -> None:
    """Open ``count`` fds (``/dev/null``) and keep them, so every socket and pipe the worker
    opens after this has a number above them (above 1024: ``select()`` cannot take it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY
                                                    else min(want, hard), hard))
    while len(_pressure) < count:
        _pressure.append(os.open(os.devnull, os.O_RDONLY))


# A cell with fd pressure: the worker's main process imports this module before it connects.
if os.environ.get(FDS_ENV, "0").isdigit() and int(os.environ.get(FDS_ENV, "0")) > 0:
    with contextlib.suppress(OSError, ValueError):
        fd_pressure(int(os.environ[FDS_ENV]))

app = install(find_app(os.environ.get(APP_ENV) or "stress.workload"))
