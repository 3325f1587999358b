"""What happens to a task when something happens to it: the delivery-guarantee table as code.

Every decision about a request's fate lives here: when it is acked, given back, dropped,
requeued with a redelivery count, or stored as failed; and which faults may make it run
twice. The worker (``worker.py``) only carries the decisions out. Nothing here does I/O,
reads a clock or touches kombu: each transition takes the facts it needs (``Facts``) and
returns a ``Decision`` (the request's next ``Phase`` and the ``Action``s to take), so the
whole table can be walked in unit tests in milliseconds (``tests/taskq/worker/
test_lifecycle.py``), and ``TABLE`` below is what the docs print.

A request's life::

    RECEIVED ─┬─ eta / rate limit ─> HELD ─> RESERVED
              └────────────────────────────> RESERVED ─> DISPATCHED ─> STARTED ─> DONE
                                                 │            │           │
    connection lost, lease lost, shutdown ───────┴──> GIVEN_BACK / DROPPED / WITHDRAWN
    child died, hard time limit ─────────────────────────────────────────┴──> LOST
                                                           ─> REDELIVERED (a counted copy)

Reading the table for one case, e.g. "an ``acks_late`` task whose child dies while the
connection is down": ``child_died`` with ``acks_late=True, connection_current=False`` stores
FAILURE ``WorkerLostError`` and acks; the ack cannot reach the broker through a lost
connection unless the reconnect took its lease over, so ``Decision.rerun`` is ``MAY``: the
broker may deliver it again (the "broker connection lost" row allows a second run).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from taskq import states


class Phase(enum.Enum):
    """Where a request is. The last five are ends: the worker forgets the request."""

    RECEIVED = "received"
    HELD = "held"                  # reserved (unacked) until its eta or rate limit
    RESERVED = "reserved"          # ready for the pool, not given to it yet
    DISPATCHED = "dispatched"      # given to the pool, not started
    STARTED = "started"            # a child (thread, process) runs it
    DONE = "done"                  # an end state was reached and acked (or will be)
    LOST = "lost"                  # its child died or hit the hard limit: FAILURE stored
    WITHDRAWN = "withdrawn"        # taken back from the pool unstarted; decided again
    GIVEN_BACK = "given back"      # returned to the broker unrun (requeue, release)
    DROPPED = "dropped"            # its lease was lost: the broker already took it back
    REDELIVERED = "redelivered"    # a copy with a redelivery count was published


class Rerun(enum.Enum):
    """Whether the task may run (again) elsewhere after this decision."""

    NEVER = "never"      # an end state is reached, or (early ack) it is gone for good
    MAY = "may"          # the ack may not reach the broker: a second run is allowed
    WILL = "will"        # it goes back to the broker, on purpose, to run (again)


class Cause(enum.Enum):
    """Why a running job ended without its ``done``."""

    CHILD_DIED = "child died"
    TIME_LIMIT = "hard time limit"


# -- actions: what the worker carries out, in order ---------------------------------------------

@dataclass(frozen=True)
class Action:
    """Base of the actions a transition asks for."""


@dataclass(frozen=True)
class AckNow(Action):
    """Send the ack before the job reaches the pool (early ack)."""


@dataclass(frozen=True)
class Ack(Action):
    """Ack once the actions before it are done (a stored state first)."""


@dataclass(frozen=True)
class Reject(Action):
    requeue: bool


@dataclass(frozen=True)
class Release(Action):
    """Give the message back through the current connection: its own connection is gone
    (lease transports hand it back at once; AMQP already requeued it)."""


@dataclass(frozen=True)
class Drop(Action):
    """Forget the request without settling it: its lease is gone, another worker may hold it."""


@dataclass(frozen=True)
class Store(Action):
    """Store an end state (off the loop) before the next action."""

    state: str
    reason: str = ""       # FAILURE: the exception's text; REVOKED: Celery's reason word


@dataclass(frozen=True)
class Republish(Action):
    """Publish a copy carrying ``redelivered_count=count``, then ack the original (a failed
    publish requeues the original as it is)."""

    count: int


@dataclass(frozen=True)
class HandOn(Action):
    """Publish a copy of an already acked, unstarted request, so another worker runs it."""


@dataclass(frozen=True)
class RunHere(Action):
    """Put it back at the front of the ready queue: another child of this worker runs it."""


@dataclass(frozen=True)
class Confirm(Action):
    """Keep it until the next connection finds out whether its early ack arrived
    (``ack_confirmed``)."""


@dataclass(frozen=True)
class Withdraw(Action):
    """Ask the pool to give the unstarted job back (it comes back through ``unstarted``)."""


@dataclass(frozen=True)
class Terminate(Action):
    """Signal the child running it (revoke with terminate)."""

    signum: int


@dataclass(frozen=True)
class Emit(Action):
    """Send a task event."""

    event: str
    fields: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Warn(Action):
    message: str


@dataclass(frozen=True)
class Decision:
    phase: Phase
    actions: tuple[Action, ...] = ()
    rerun: Rerun = Rerun.NEVER


@dataclass
class Facts:
    """What a transition needs to know about a request (and the worker) right now."""

    acks_late: bool = False
    reject_on_worker_lost: bool = False
    acknowledged: bool = False        # its ack was sent (early acks: before dispatch)
    ack_in_doubt: bool = False        # its early ack went out as the connection was lost,
    #                                   unanswered (lease transports: the next one can tell)
    started: bool = False             # its child reported ``started``
    connection_current: bool = True   # it came on the connection the worker has now
    lease_lost: bool = False          # the broker took it back (lease ran out)
    redeliveries: int = 0             # its ``redelivered_count`` header
    max_redeliveries: int = 3         # task_max_redeliveries
    start_failures: int = 0           # children that died reading it before it started
    terminated: int | None = None     # the signal revoke(terminate=True) sent its child
    requeued_on_close: bool = False   # the broker requeues unacked deliveries when the
    #                                   connection closes (AMQP), so a lost one is back already
    stopping: bool = False            # the worker is shutting down
    ack_failures: bool = True         # acks_on_failure_or_timeout: False rejects (without
    #                                   requeue: dead-lettered) an acks_late failure instead
    extra: dict[str, object] = field(default_factory=dict)

    def ack_may_be_lost(self) -> bool:
        """An ack sent now may never reach the broker: its connection is gone."""
        return not self.acknowledged and not self.connection_current


# -- transitions --------------------------------------------------------------------------------

def dispatch(f: Facts) -> Decision:
    """A reserved request goes to the pool. Early acks are sent first: from then on the task
    counts as running, and a main process that dies loses it (the table's "lost" cell)."""
    if f.acks_late or f.acknowledged:
        return Decision(Phase.DISPATCHED)
    return Decision(Phase.DISPATCHED, (AckNow(),))


def done(f: Facts, state: str, *, requeue: bool = False) -> Decision:
    """The child finished the task (its state is stored by the child)."""
    if state == states.REJECTED:
        return Decision(Phase.GIVEN_BACK if requeue else Phase.DONE, (Reject(requeue),),
                        Rerun.WILL if requeue else Rerun.NEVER)
    late = Rerun.MAY if f.ack_may_be_lost() else Rerun.NEVER
    if state == states.FAILURE and f.acks_late and not f.ack_failures:
        return Decision(Phase.DONE, (Reject(requeue=False),), late)  # as Celery
    return Decision(Phase.DONE, (Ack(),), late)


def child_died(f: Facts, cause: Cause, error: str) -> Decision:
    """The job's child died, or was killed at the hard time limit. ``error`` is the text of
    the ``WorkerLostError`` / ``TimeLimitExceeded`` the pool reported."""
    if not f.started and not f.start_failures:
        return unstarted(f)
    late = Rerun.MAY if f.ack_may_be_lost() else Rerun.NEVER
    if f.terminated is not None:
        # Celery: revoke(terminate=True) ends REVOKED "terminated", acked, never requeued.
        return Decision(Phase.DONE, (
            Emit("task-revoked", (("terminated", True), ("signum", f.terminated),
                                  ("expired", False))),
            Store(states.REVOKED, "terminated"), Ack()), late)
    if (cause is Cause.CHILD_DIED and f.started and f.acks_late and f.reject_on_worker_lost):
        if not f.connection_current and f.requeued_on_close:
            # Its connection is gone and the broker put the message back when it closed: a
            # counted copy would be a second one (its original's ack can no longer be sent).
            return Decision(Phase.GIVEN_BACK, (Warn(
                "lost while its broker connection was down: the broker already requeued it, "
                "so it is not published again (its redelivery count stays)"),), Rerun.WILL)
        if f.redeliveries < f.max_redeliveries:
            return Decision(Phase.REDELIVERED, (Republish(f.redeliveries + 1),), Rerun.WILL)
        error = (f"{error}; given up after {f.redeliveries} redeliveries "
                 f"(task_max_redeliveries={f.max_redeliveries})")
    # A hard limit is a FAILURE whatever the ack policy; never started (children kept dying
    # reading it) is a poison message the pool already retried: a FAILURE too. With
    # acks_on_failure_or_timeout=False an acks_late one is rejected without requeue instead
    # of acked (dead-lettered), as Celery does; it is not rerun (Celery requeues a timed-out
    # one: the table's "hard time limit" row says FAILURE for every policy).
    settle = Reject(requeue=False) if f.acks_late and not f.ack_failures else Ack()
    return Decision(Phase.LOST, (
        Emit("task-failed", (("exception", error), ("traceback", None))),
        Store(states.FAILURE, error), settle), late)


def unstarted(f: Facts) -> Decision:
    """The pool gave back a job it never started (a withdraw, its child died holding it
    queued, or the pool stopped)."""
    if f.lease_lost:
        return Decision(Phase.DROPPED, (Drop(),), Rerun.WILL)
    if not f.connection_current and not f.acknowledged:
        return Decision(Phase.GIVEN_BACK, (Release(),), Rerun.WILL)
    if f.stopping and f.acknowledged:
        # The broker will not deliver an acked message again: a copy goes in its place.
        return Decision(Phase.REDELIVERED, (HandOn(),), Rerun.WILL)
    if f.stopping:
        return Decision(Phase.GIVEN_BACK, (Reject(requeue=True),), Rerun.WILL)
    return Decision(Phase.RESERVED, (RunHere(),))


def connection_lost(f: Facts, phase: Phase) -> Decision:
    """The connection the request came on is gone. The broker delivers its unacked messages
    again (AMQP at once; lease transports when the lease runs out, or at once when the next
    connection releases them), so none of those may start here. One whose early ack was
    sent as the connection went (no answer came) may have been acked: neither given back nor
    run until the next connection tells (``ack_confirmed``)."""
    if f.ack_in_doubt and phase is Phase.RESERVED:
        return Decision(Phase.RESERVED, (Confirm(),))
    if f.acknowledged or phase is Phase.STARTED:
        # Started: it finishes; its ack goes through the next connection if the lease is
        # taken over there (``reconnected``), else it may run twice (the table allows it).
        return Decision(phase, (), Rerun.NEVER if f.acknowledged else Rerun.MAY)
    if phase is Phase.DISPATCHED:
        return Decision(Phase.WITHDRAWN, (Withdraw(),), Rerun.WILL)
    return Decision(Phase.GIVEN_BACK, (Release(),), Rerun.WILL)


def ack_confirmed(f: Facts, *, acked: bool) -> Decision:
    """The next connection found out about an early ack in doubt (``connection_lost``):
    acked (then or now), the task runs here; its lease had expired instead, so its message is
    back in its queue for whoever takes it."""
    if acked:
        return Decision(Phase.RESERVED, (RunHere(),))
    return Decision(Phase.DROPPED, (Drop(),), Rerun.WILL)


def reconnected(f: Facts, *, lease_kept: bool) -> Decision:
    """A new connection took over (adopted) the lease of a request still in the pool."""
    if lease_kept or f.acknowledged:
        return Decision(Phase.STARTED if f.started else Phase.DISPATCHED)
    return Decision(Phase.STARTED if f.started else Phase.DISPATCHED,
                    (Warn("its lease ran out while the broker was away: the broker may "
                          "deliver it again (it may run twice)"),), Rerun.MAY)


def lease_lost(f: Facts, phase: Phase) -> Decision:
    """The broker took the delivery back while this worker held it (the lease ran out)."""
    if phase in (Phase.HELD, Phase.RESERVED):
        return Decision(Phase.DROPPED, (Drop(),), Rerun.WILL)
    if phase is Phase.DISPATCHED:
        return Decision(Phase.WITHDRAWN, (Withdraw(),), Rerun.WILL)
    if f.acknowledged:
        return Decision(phase)
    return Decision(phase, (Warn("lost its lease while running: the broker may deliver it "
                                 "again (it may run twice)"),), Rerun.MAY)


def revoked(f: Facts, phase: Phase, *, terminate: bool, signum: int,
            can_terminate: bool) -> Decision:
    """``revoke(id)`` reached this worker. Reserved and held requests are discarded as
    REVOKED; a running one is signalled only with ``terminate``."""
    if phase in (Phase.HELD, Phase.RESERVED):
        return discarded(f, "revoked")
    if not terminate:
        return Decision(phase)
    if not can_terminate:
        return Decision(phase, (Warn("revoke(terminate=True): this pool cannot terminate a "
                                     "running task"),))
    if phase is Phase.STARTED:
        return Decision(phase, (Terminate(signum),))
    # Dispatched, not started: the child is signalled as soon as it starts it.
    return Decision(phase)


def discarded(f: Facts, reason: str) -> Decision:
    """Revoked or expired (``reason``) before it started: REVOKED stored, message dropped."""
    return Decision(Phase.DONE, (
        Emit("task-revoked", (("terminated", False), ("expired", reason == "expired"))),
        Reject(requeue=False), Store(states.REVOKED, reason)))


def shutdown(f: Facts, phase: Phase, *, warm: bool) -> Decision:
    """The worker stops. Warm: reserved requests go back, running ones finish. Cold: the
    running ones are killed; ``acks_late`` ones go back unacked, early-acked ones are lost
    (at most once, as the table says for early acks)."""
    if phase in (Phase.HELD, Phase.RESERVED):
        if f.acknowledged:
            return Decision(Phase.REDELIVERED, (HandOn(),), Rerun.WILL)
        if f.ack_in_doubt:  # no connection came back to tell
            return Decision(Phase.LOST, (Warn(
                "stopped before the broker could say whether its early ack arrived: if it "
                "did, the task does not run (at most once); if not, it comes back after its "
                "lease"),), Rerun.MAY)
        return Decision(Phase.GIVEN_BACK, (Reject(requeue=True),), Rerun.WILL)
    if warm:
        return Decision(phase)
    if f.acks_late and not f.acknowledged:
        return Decision(Phase.GIVEN_BACK, (Reject(requeue=True),), Rerun.WILL)
    return Decision(Phase.LOST, (), Rerun.NEVER)


def main_process_died(f: Facts, phase: Phase) -> Decision:
    """Not a transition the worker runs (it is dead): what the broker does, for the table."""
    if f.acknowledged:
        return Decision(Phase.LOST, (), Rerun.NEVER)
    return Decision(Phase.GIVEN_BACK, (), Rerun.WILL)


# -- the table, for people --------------------------------------------------------------------

POLICIES = ("early ack (default)", "`acks_late`", "`acks_late` + `reject_on_worker_lost`")

# The rows docs/guarantees.md shows (a test checks they agree); each row's cells are what the
# transitions above decide, walked in tests/taskq/worker/test_lifecycle.py.
TABLE: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("reserved, not given to the pool (any fault)",
     ("redelivered", "redelivered", "redelivered")),
    ("reserved; its early ack was sent as the broker connection was lost, unanswered",
     ("runs here if the ack arrived, else redelivered (Redis and the embedded broker are "
      "asked on the next connection; RabbitMQ cannot be asked: runs here if the ack was "
      "written whole, so it may run twice, else redelivered)",
      "(acked only after it runs)", "same")),
    ("given to the pool, not started; its child dies",
     ("runs on another child", "runs on another child", "runs on another child")),
    ("running; its child dies",
     ("FAILURE `WorkerLostError`, not rerun", "FAILURE `WorkerLostError`, acked, not rerun",
      "requeued and rerun, at most `task_max_redeliveries` times, then FAILURE")),
    ("given to the pool, not started; the worker is stopped (warm or cold)",
     ("runs in its child (warm), or is published again for another worker (cold)",
      "given back to the broker", "given back to the broker")),
    ("running; hard time limit", ("FAILURE `TimeLimitExceeded`", "same", "same")),
    ("given to the pool or running; the main process dies",
     ("lost (it was acked; no result)", "redelivered after the lease (AMQP: at once)", "same")),
    ("running; the broker connection is lost",
     ("finishes, result stored; on RabbitMQ an ack cut off with the connection (or sent into "
      "a black hole) never arrives, so it may run twice",
      "finishes; its ack may fail, so it may run twice", "same")),
    ("finished and acked", ("never rerun", "never rerun", "never rerun")),
)


def facts_for(policy: str, **overrides: object) -> Facts:
    """``Facts`` of a request under one of ``POLICIES`` (a running early-ack request was acked
    before it was dispatched)."""
    late = policy != POLICIES[0]
    base = Facts(acks_late=late, reject_on_worker_lost=policy == POLICIES[2],
                 acknowledged=not late)
    for name, value in overrides.items():
        setattr(base, name, value)
    return base


def table_markdown() -> str:
    """``TABLE`` as a Markdown table (docs/guarantees.md shows it)."""
    lines = ["| fault while a task is… | " + " | ".join(f"{p}" for p in POLICIES) + " |",
             "|---|---|---|---|"]
    lines += [f"| {row} | " + " | ".join(cells) + " |" for row, cells in TABLE]
    return "\n".join(lines)
