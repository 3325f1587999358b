"""The app the canvas tests run on a taskq worker (``taskq worker -A canvasmod``) and, with
the same task names, on a Celery worker (``celery -A canvasmod_celery``). Settings come from
TASKQ_* variables, as for appmod; tasks that must be observed append to a ledger file."""

from __future__ import annotations

from typing import Any

from ledgerfile import note

from taskq import TaskQ
from taskq.canvas import chain, group

app = TaskQ("canvasmod")


@app.task(name="canvasmod.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="canvasmod.tsum")
def tsum(values: list[int]) -> int:
    return sum(values)


@app.task(name="canvasmod.collect")
def collect(values: list[Any]) -> list[Any]:
    return list(values)


@app.task(name="canvasmod.boom")
def boom(*args: Any) -> None:
    raise ValueError("boom")


@app.task(name="canvasmod.counted", bind=True)
def counted(self: Any, value: Any, ledger: str) -> Any:
    """Notes each run (so a test can count how often a body ran)."""
    note(ledger, f"ran {self.request.id} {value!r}")
    return value


@app.task(name="canvasmod.errback")
def errback(task_id: str, ledger: str) -> None:
    """A classic errback: called with the failed task's id."""
    note(ledger, f"errback {task_id}")


@app.task(name="canvasmod.die")
def die(*args: Any) -> None:
    """The child running it dies (as an OOM kill would): the worker reports WorkerLostError."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="canvasmod.nap")
def nap(seconds: float) -> float:
    """Keeps its child busy for ``seconds``."""
    import time

    time.sleep(seconds)
    return seconds


@app.task(name="canvasmod.whoami", bind=True)
def whoami(self: Any, *args: Any) -> dict[str, Any]:
    """Its place in a canvas, as ``self.request`` tells it (and its arguments)."""
    r = self.request
    return {"chain": r.chain, "group": r.group, "group_index": r.group_index,
            "chord": r.chord, "args": list(args)}


@app.task(name="canvasmod.ids", bind=True)
def ids(self: Any, i: int = 0) -> list[Any]:
    """Its root and parent ids, and ``i``."""
    return [self.request.root_id, self.request.parent_id, i]


@app.task(name="canvasmod.fanout")
def fanout(n: int) -> int:
    """Sends a task, a group and a chain from inside itself: its result's children."""
    add.delay(n, n)
    group(add.s(i, i) for i in range(n)).delay()
    chain(add.s(1, 1), add.s(10)).delay()
    return n


# -- tasks that replace themselves (as in Celery's integration tests) ----------------------------

@app.task(name="canvasmod.add_replaced", bind=True)
def add_replaced(self: Any, x: int, y: int) -> Any:
    return self.replace(add.s(x, y))


@app.task(name="canvasmod.add_to_all", bind=True)
def add_to_all(self: Any, nums: list[int], val: int) -> Any:
    return self.replace(group(add.s(n, val) for n in nums))


@app.task(name="canvasmod.replace_with_chain", bind=True)
def replace_with_chain(self: Any, x: int, y: int) -> Any:
    return self.replace(chain(add.s(x, y), add.s(100)))


@app.task(name="canvasmod.replace_with_boom", bind=True)
def replace_with_boom(self: Any, *args: Any) -> Any:
    return self.replace(chain(add.s(1, 1), boom.s()))


# -- a child that dies right after it sends what follows a task --------------------------------

def _die_after_sending(msg: Any, _routing: Any) -> None:
    """With CANVASMOD_DIE_AFTER_SENDING=<task name>:<marker file>, the first process to send
    that task (a pool child sending a chord's body or a chain's next step) dies at once, as
    if SIGKILLed between the send and telling its parent; later senders (the parent, sending
    on its behalf) find the marker and go on."""
    import os
    import signal

    name, _, marker = os.environ.get("CANVASMOD_DIE_AFTER_SENDING", "").partition(":")
    if msg.task != name or not marker:
        return
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


app.hooks.after_task_publish.append(_die_after_sending)
