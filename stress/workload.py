"""The stress workload: tasks that exercise the worker, and the mix a suite publishes.

The tasks write the ledger themselves (``started`` before the body, ``finished`` after it), so
any worker that speaks Celery's protocol can be judged: taskq's, or Celery's through
``celery -A stress.workload:celery worker``. Every task's expected end is in ``EXPECTED``:

- ``ok``: the body returns (noop, sleeps, CPU bursts, big arguments and results, memory growth,
  a soft time limit the task catches, a short task published with a countdown);
- ``lost``: the task kills its own child (``os._exit``, a segfault): ``WorkerLostError``;
- ``timeout``: the task outlives its hard time limit: ``TimeLimitExceeded``.

The app is configured entirely from ``TASKQ_*`` variables, as a user's app would be.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stress import ledger
from taskq import TaskQ

__all__ = ["EXPECTED", "KINDS", "Mix", "TaskSpec", "app", "task_name", "traced"]

_held: list[bytes] = []  # memory the grow task keeps, as a leak would


def _soft_limit_error() -> tuple[type[BaseException], ...]:
    from billiard.exceptions import SoftTimeLimitExceeded

    return (SoftTimeLimitExceeded,)


def traced(kind: str, body: Callable[..., Any]) -> Callable[..., Any]:
    """``body`` wrapped with the ledger writes; bound, so it knows its task id."""
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        write = ledger.writer("task")
        task_id = self.request.id
        if write is not None:
            write.write("started", task_id, kind=kind, **ledger.member())
        outcome = "ok"
        try:
            return body(*args, **kwargs)
        except _soft_limit_error():
            outcome = "soft-limit"
            return None
        finally:
            if write is not None:
                write.write("finished", task_id, kind=kind, outcome=outcome)

    run.__name__ = body.__name__
    run.__doc__ = body.__doc__
    return run


def noop() -> None:
    return None


def sleep(seconds: float) -> None:
    time.sleep(seconds)


def cpu(ms: float) -> int:
    end, n = time.monotonic() + ms / 1000, 0
    while time.monotonic() < end:
        n += 1
    return n


def big(blob: str, size: int) -> str:
    """Big arguments in, a big result out."""
    return blob[:1] * size


def grow(mib: int) -> int:
    _held.append(b"x" * (mib << 20))
    return len(_held)


def exit_child(code: int = 3) -> None:
    os._exit(code)


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)  # the signal is delivered before this returns


def soft_limit(seconds: float) -> None:
    """Sleeps into its soft limit; catching ``SoftTimeLimitExceeded`` is its normal end."""
    time.sleep(seconds)


def hard_limit(seconds: float) -> None:
    """Sleeps past its hard limit; the worker must kill it."""
    time.sleep(seconds)


def eta(seconds: float) -> None:
    """Published with a countdown: the worker holds it (reserved, not started) until due."""
    time.sleep(seconds)


BODIES: dict[str, Callable[..., Any]] = {
    "noop": noop, "sleep": sleep, "cpu": cpu, "big": big, "grow": grow,
    "exit": exit_child, "crash": crash, "soft_limit": soft_limit, "hard_limit": hard_limit,
    "eta": eta,
}
KINDS = tuple(BODIES)
EXPECTED = {kind: "ok" for kind in KINDS} | {"exit": "lost", "crash": "lost",
                                            "hard_limit": "timeout"}


def task_name(kind: str) -> str:
    return f"stress.{kind}"


app = TaskQ("stress")
for _kind, _body in BODIES.items():
    app.task(name=task_name(_kind), bind=True)(traced(_kind, _body))


def _celery_app() -> Any:
    """The same tasks for a Celery worker, configured from the cell's ``TASKQ_*`` variables."""
    import json

    from celery import Celery

    env = os.environ
    capp = Celery("stress", set_as_current=False)
    queue = env.get("TASKQ_TASK_DEFAULT_QUEUE", "celery")
    backend = env.get("TASKQ_RESULT_BACKEND") or None
    capp.conf.update(
        broker_url=env.get("TASKQ_BROKER_URL"),
        broker_transport_options=json.loads(env.get("TASKQ_BROKER_TRANSPORT_OPTIONS") or "{}"),
        result_backend=backend if backend and backend.startswith("redis") else None,
        result_backend_transport_options=json.loads(
            env.get("TASKQ_RESULT_BACKEND_TRANSPORT_OPTIONS") or "{}"),
        task_default_queue=queue, task_default_exchange=queue,
        task_default_routing_key=queue,
        task_acks_late=env.get("TASKQ_TASK_ACKS_LATE") == "true",
        task_reject_on_worker_lost=env.get("TASKQ_TASK_REJECT_ON_WORKER_LOST") == "true",
        worker_hijack_root_logger=False,
    )
    for kind, body in BODIES.items():
        capp.task(name=task_name(kind), bind=True)(traced(kind, body))
    return capp


# -- the mix ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskSpec:
    """One message to publish: its kind, arguments and per-call options."""

    kind: str
    args: tuple[Any, ...] = ()
    options: Mapping[str, Any] | None = None


def _args(kind: str, rng: random.Random, params: Mapping[str, Any]) -> TaskSpec:
    if kind == "sleep":
        low, high = params.get("sleep", (0.01, 0.1))
        return TaskSpec(kind, (round(rng.uniform(low, high), 4),))
    if kind == "cpu":
        return TaskSpec(kind, (rng.uniform(1, float(params.get("cpu_ms", 20))),))
    if kind == "big":
        size = int(params.get("big_bytes", 1 << 20))
        return TaskSpec(kind, ("x" * size, size))
    if kind == "grow":
        return TaskSpec(kind, (int(params.get("grow_mib", 8)),))
    if kind == "exit":
        return TaskSpec(kind, (rng.choice((1, 3, 137)),))
    if kind == "soft_limit":
        soft = float(params.get("soft_limit", 0.2))
        return TaskSpec(kind, (soft * 4,), {"soft_time_limit": soft, "time_limit": soft * 10})
    if kind == "hard_limit":
        hard = float(params.get("hard_limit", 0.3))
        return TaskSpec(kind, (hard * 20,), {"time_limit": hard})
    if kind == "eta":
        low, high = params.get("countdown", (0.5, 4.0))
        return TaskSpec(kind, (round(rng.uniform(0.0, 0.2), 4),),
                        {"countdown": round(rng.uniform(low, high), 2)})
    return TaskSpec(kind)


class Mix:
    """Draws task specs from weighted kinds with a seeded generator (same seed, same run)."""

    def __init__(self, weights: Mapping[str, float], seed: int,
                 params: Mapping[str, Any] | None = None) -> None:
        unknown = sorted(set(weights) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown workload kinds {unknown}; known: {', '.join(KINDS)}")
        self.kinds = [k for k, w in weights.items() if w > 0]
        if not self.kinds:
            raise ValueError("the workload mix needs at least one kind with a weight above 0")
        self.weights = [float(weights[k]) for k in self.kinds]
        self.rng = random.Random(seed)
        self.params = dict(params or {})

    def draw(self) -> TaskSpec:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        return _args(kind, self.rng, self.params)


try:  # `celery -A stress.workload:celery worker` finds this
    celery = _celery_app()
except ImportError:  # pragma: no cover - celery is optional
    celery = None
