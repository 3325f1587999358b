"""The app the end-to-end worker tests run: ``taskq worker -A appmod`` (tests put this folder
on PYTHONPATH). Every setting comes from TASKQ_* variables, so each test points it at its own
broker keys, queues and result keys.

Tasks that the tests need to observe from outside write a line to a *ledger* file (one
``os.write`` per line, so lines never interleave): ``start <task id> <pid> <wall time>`` when
they begin and ``end <task id>`` when they return. The ledger is independent of the broker and
the backend under test.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ledgerfile import note as _note

from taskq import TaskQ

app = TaskQ("appmod")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task(bind=True)
def stamp(self: Any, ledger: str | None = None) -> float:
    """Return the wall time at which the task started."""
    now = time.time()
    _note(ledger, f"start {self.request.id} {os.getpid()} {now:.6f}")
    return now


@app.task(bind=True)
def sleeper(self: Any, seconds: float, ledger: str | None = None) -> str:
    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f}")
    time.sleep(seconds)
    _note(ledger, f"end {self.request.id}")
    return "slept"


@app.task(bind=True)
def gated(self: Any, gate: str, ledger: str | None = None, timeout: float = 120.0) -> str:
    """Runs until the file ``gate`` exists (a test opens it once it is done with the worker
    busy), or ``timeout`` seconds: no test waits on a guess of how long a step takes."""
    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f}")
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    _note(ledger, f"end {self.request.id}")
    return "opened"


@app.task(bind=True, acks_late=True)
def late_sleeper(self: Any, seconds: float, ledger: str | None = None) -> str:
    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f}")
    time.sleep(seconds)
    _note(ledger, f"end {self.request.id}")
    return "slept-late"


@app.task(bind=True, max_retries=5)
def flaky(self: Any, failures: int, countdown: float, ledger: str | None = None) -> int:
    """Fail ``failures`` times (retrying after ``countdown`` s), then return the retry count."""
    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f} "
                  f"{self.request.retries}")
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} fails"),
                         countdown=countdown)
    return int(self.request.retries)


@app.task
def boom() -> None:
    raise ValueError("boom")


@app.task(bind=True)
def record(self: Any, value: Any, ledger: str | None = None) -> Any:
    """A link callback target: notes that it ran with the parent's result."""
    _note(ledger, f"record {self.request.id} {value!r} parent={self.request.parent_id}")
    return value


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
def lossy_sleeper(self: Any, seconds: float, ledger: str | None = None) -> str:
    """acks_late + reject_on_worker_lost: requeued when its child dies."""
    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f}")
    time.sleep(seconds)
    _note(ledger, f"end {self.request.id}")
    return "survived"


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
def poison(self: Any, ledger: str | None = None) -> None:
    """Kills its own child every time: must stop after task_max_redeliveries."""
    import signal

    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f}")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(bind=True, ignore_result=True)
def tick(self: Any, seconds: float, ledger: str | None = None, blob: str = "") -> int:
    """Load tests: note start (with pid) and end; optionally carry a big argument."""
    _note(ledger, f"start {self.request.id} {os.getpid()} {time.time():.6f}")
    if seconds:
        time.sleep(seconds)
    _note(ledger, f"end {self.request.id}")
    return len(blob)


class AuditStep:
    """A user's own worker step: it runs after the consumer and notes that it started."""

    name = "audit"
    requires = ("consumer",)

    def start(self, worker: Any) -> None:
        import logging

        logging.getLogger("appmod").warning("audit step started on %s", worker.hostname)

    def stop(self, worker: Any) -> None:
        return None


app.steps.append(AuditStep())


@app.task
def tiny(n: int) -> int:
    return n
