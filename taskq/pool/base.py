"""The pool interface the worker drives, and the records that cross it.

The worker hands a pool ``Job``s; the pool reports back through three callbacks, always called
from the main process's event loop thread:

- ``on_started(job, pid)``: the job began running (early acks happen here);
- ``on_done(job, result)``: the task returned (late acks happen here);
- ``on_lost(job, exc)``: the process running the job died (``WorkerLostError``) or the job
  hit its hard time limit (``TimeLimitExceeded``).

Jobs that were given to the pool but never started are handed back with ``on_unstarted`` when
the pool stops or a child that held them dies, so the worker can run them elsewhere or
return them to the broker.

Optional features are declared on ``Pool`` with a documented default, so callers never probe
a pool with ``getattr``: neutral ones (``withdraw``, ``autoscale_tick``, ``size``,
``keepalive``, ``blocks_loop``, ``max_tasks``) have a default that is right for a pool that
lacks them; the others (``grow``, ``shrink``, ``restart``, ``autoscale``, ``terminate_job``)
raise ``PoolFeatureUnsupported`` unless the pool's ``supports_*`` flag says it has them, so
ask the flag before calling.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskq import states
from taskq.errors import PoolFeatureUnsupported

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.protocol import TaskMessage
    from taskq.worker.loop import Loop


_RUNS = itertools.count(1)
_BOOT = uuid.uuid4().hex[:16]


def _next_run_id() -> str:
    return f"{_BOOT}.{next(_RUNS)}"


@dataclass(eq=False)
class Job:
    """One task run handed to a pool. Identity equality: a redelivered task is a new job."""

    msg: TaskMessage
    delivery_info: Mapping[str, Any] = field(default_factory=dict)
    time_limit: float | None = None
    soft_time_limit: float | None = None
    acks_late: bool = False
    reject_on_worker_lost: bool = False
    pid: int | None = None          # set when started
    started_at: float | None = None
    start_failures: int = 0
    """Pool children that died holding this job before it started (set by the prefork pool;
    past ``task_max_redeliveries`` the job is reported lost, unstarted: a poison message)."""
    run_id: str = field(default_factory=_next_run_id)
    """Names this run among all runs of the task's id: what it sends as what follows it
    carries it (``canvas.ONCE_HEADER``), so the copy the parent sends on behalf of a dead
    child is known as the same message, and a frozen canvas applied again is not."""

    @property
    def id(self) -> str:
        return self.msg.id

    @property
    def name(self) -> str:
        return self.msg.task


@dataclass(frozen=True)
class JobResult:
    """What the main process needs to know about a finished task (the value stays in the child)."""

    state: str
    requeue: bool = False
    runtime: float = 0.0
    summary: str = ""
    traceback: str = ""  # a FAILURE's formatted traceback: the worker logs it and sends it
    # Its child died after storing the outcome, before it counted its chord part and sent
    # what follows: the worker does that (``taskq.trace.follow_up``), giving up ``claim``
    # (group id, token: the child's claim to fire a chord's body) first.
    follow_up: bool = False
    claim: tuple[str, str] | None = None
    fired: bool = False  # ... and had sent that chord's body
    sent: int = 0  # ... and how many of what follows it had sent
    expected: bool = False  # a FAILURE with one of the task's ``throws`` exceptions


StartedCallback = Callable[[Job, int], None]
DoneCallback = Callable[[Job, JobResult], None]
LostCallback = Callable[[Job, BaseException], None]
UnstartedCallback = Callable[[Job], None]


def run_job(app: TaskQ, job: Job, hostname: str | None, *,
            on_storing: Callable[[bool], None] | None = None,
            on_stored: Callable[[str, bool], None] | None = None,
            on_claimed: Callable[[str, str, bool], None] | None = None,
            on_followed: Callable[[], None] | None = None,
            on_sent: Callable[[int], None] | None = None) -> JobResult:
    """Run a job in this process (a child, a thread or the main process) and summarise it.

    ``on_storing(writes)`` / ``on_stored(state, urgent)``: called just before and just after
    the outcome is stored (see ``taskq.trace.execute``); the prefork child blocks its
    soft-limit signal and tells the parent, so that a death after the store never overwrites
    or reruns it.
    ``on_claimed`` / ``on_followed`` / ``on_sent``: see ``taskq.trace.execute``."""
    from taskq.trace import execute

    expires = job.msg.expires
    if expires is not None and expires <= dt.datetime.now(dt.UTC):
        # Expired while it waited in this child (-O fast): revoked unrun, as Celery does; the
        # store is framed as a task's is (a death after it never overwrites it), and a
        # chord's part counts.
        from taskq import chord
        from taskq.errors import TaskRevokedError

        if on_storing is not None:
            on_storing(True)
        try:
            app.backend.mark_as_revoked(job.id, "expired", request=job.msg)
        except Exception as exc:
            logging.getLogger("taskq.pool").warning("storing REVOKED of expired %s failed: %r",
                                                    job.id, exc)
        else:
            chord.ended_by_worker(app, job.msg, "REVOKED", TaskRevokedError("expired"))
        if on_stored is not None:
            on_stored("REVOKED", True)
        return JobResult("REVOKED", summary="expired")
    task = app.get_task(job.name)
    outcome = execute(task, job.msg, delivery_info=job.delivery_info, hostname=hostname,
                      on_storing=on_storing, on_stored=on_stored, on_claimed=on_claimed,
                      on_followed=on_followed, on_sent=on_sent, run_id=job.run_id)
    summary = "" if outcome.value is None else repr(outcome.value)[:200]
    expected = bool(outcome.state == states.FAILURE and task.throws
                    and isinstance(outcome.value, task.throws))
    return JobResult(outcome.state, outcome.requeue, outcome.runtime, summary,
                     outcome.traceback or "", expected=expected)


class Pool(ABC):
    """Runs jobs; owned and driven by the worker's main-process event loop."""

    kind = "base"

    on_capacity: Callable[[], None] | None = None
    """Set by the worker (optional): called when ``can_accept()`` may have become true other
    than through a callback above, e.g. a new pool child became ready."""

    # -- what this kind of pool can do (ask before calling the methods that raise) -----------
    supports_resize = False
    """``grow`` and ``shrink`` change the number of slots while the pool runs."""
    supports_restart = False
    """``restart`` replaces the pool's processes (to load new code)."""
    supports_autoscale = False
    """``autoscale`` keeps the size between bounds (``autoscale_tick`` adjusts it)."""
    supports_terminate_job = False
    """``terminate_job`` signals the process running one job (``revoke(terminate=True)``)."""

    blocks_loop = False
    """True when tasks run on the loop's own thread (solo): nothing else happens on the loop
    while a task runs, so the worker settles acks at once and sets ``keepalive``."""

    keepalive: Callable[[], None] | None = None
    """Set by the worker when ``blocks_loop``: the pool calls it (from another thread) while a
    task runs, so the broker's leases are renewed. Other pools never call it."""

    max_tasks: int | None = None
    """Jobs a process runs before it is replaced (``max_tasks_per_child``); None: no limit,
    or a pool without processes to replace."""

    def __init__(
        self,
        app: TaskQ,
        *,
        concurrency: int,
        hostname: str | None = None,
        on_started: StartedCallback,
        on_done: DoneCallback,
        on_lost: LostCallback,
        on_unstarted: UnstartedCallback,
        **options: Any,
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.hostname = hostname
        self.on_started = on_started
        self.on_done = on_done
        self.on_lost = on_lost
        self.on_unstarted = on_unstarted

    @abstractmethod
    def start(self, loop: Loop) -> None:
        """Start the pool's workers and register its file descriptors with the loop."""

    def worker_started(self) -> None:
        """Called once every step of the worker has started, before it says "ready": a pool
        that forks forks now, after the set-up the other steps did (so that set-up does not
        copy the pages it shares with its children). Nothing to do for most pools."""
        return None

    @abstractmethod
    def can_accept(self) -> bool:
        """True when ``apply`` may be called now (fair scheduling asks this before each job)."""

    @abstractmethod
    def apply(self, job: Job) -> None:
        """Run ``job``; the outcome arrives through the callbacks."""

    @abstractmethod
    def active(self) -> list[Job]:
        """Jobs that have started and not yet finished."""

    @abstractmethod
    def stop(self) -> None:
        """Warm stop: accept nothing more; running jobs finish (see ``is_idle``)."""

    @abstractmethod
    def terminate(self) -> None:
        """Cold stop: kill what runs now."""

    def withdraw(self, jobs: Collection[Job]) -> None:
        """Take back jobs given to the pool that have not started (their broker connection is
        lost and the broker delivers their messages again). Each comes back through
        ``on_unstarted`` once it is sure not to run; one that starts meanwhile runs as usual.
        A pool that starts every job as soon as it gets it has nothing to take back."""
        return None

    def is_idle(self) -> bool:
        return not self.active()

    def info(self) -> dict[str, Any]:
        return {"kind": self.kind, "concurrency": self.concurrency}

    def pids(self) -> list[int]:
        return []

    def size(self) -> int:
        """The number of slots the pool aims for (a resizing pool's target)."""
        return self.concurrency

    # -- optional features: each raises PoolFeatureUnsupported unless its flag is set -------
    def grow(self, n: int = 1) -> None:
        """Add ``n`` slots (``supports_resize``)."""
        raise PoolFeatureUnsupported(self.kind, "grow")

    def shrink(self, n: int = 1) -> None:
        """Take ``n`` slots away, never the last one (``supports_resize``)."""
        raise PoolFeatureUnsupported(self.kind, "shrink")

    def restart(self, modules: Sequence[str] = (), reload: bool = False) -> None:
        """Replace the pool's processes, each after its current job; with ``reload``, reload
        ``modules`` first so the new processes run the new code (``supports_restart``)."""
        raise PoolFeatureUnsupported(self.kind, "restart its processes",
                                     "use the prefork pool, or restart the worker")

    def autoscale(self, max_size: int, min_size: int) -> None:
        """Keep between ``min_size`` and ``max_size`` slots from now on
        (``supports_autoscale``)."""
        raise PoolFeatureUnsupported(self.kind, "autoscale",
                                     "use the prefork pool (option -P prefork) with "
                                     "--autoscale, or set a fixed --concurrency")

    def autoscale_tick(self, backlog: int) -> None:
        """Called about once a second by the worker with the number of jobs waiting. Neutral
        by default: a pool that does not autoscale has nothing to adjust."""
        return None

    def terminate_job(self, job: Job, signum: int) -> None:
        """Send ``signum`` to the process running ``job``, if it still runs it
        (``supports_terminate_job``)."""
        raise PoolFeatureUnsupported(self.kind, "terminate a running task",
                                     "use the prefork pool (option -P prefork) for "
                                     "revoke(terminate=True)")
