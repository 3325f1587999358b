"""The prefork parent's record of one child: its lifecycle as one state with checked moves.

    STARTING ──ready──▶ READY ──write failed──▶ BROKEN
       │                  │                       │
       │ retire           │ retire                │ retire
       ▼                  ▼                       ▼
    RETIRING_UNREADY ──ready──▶ RETIRING ◀────────┘
       (every state but DEAD) ──its exit is handled──▶ DEAD

- STARTING: forked; has not said ``ready``. Takes no jobs.
- READY: takes jobs (the only state the scheduler writes to).
- BROKEN: a job write failed (EPIPE): it is dying; takes no more jobs.
- RETIRING: its job pipe is closed (warm stop, shrink, restart) or it said ``exiting``
  (recycled): it runs the jobs it read, then exits. RETIRING_UNREADY is the same for a child
  told to leave before it said ``ready``; it still counts as not ready (a death there is an
  early death) until its ``ready`` arrives.
- DEAD: reaped (or given up by a cold stop), its fds closed, its jobs reported.

Facts that are not stages stay plain attributes: ``killed`` (the pool sent SIGKILL; it can
happen in any live state and the state still matters after it), ``reaped`` (set before the
last events are read, so a death never signals a reused pid), ``storing``/``stored``,
``event_eof`` and the reap-poll bookkeeping.
"""

from __future__ import annotations

import collections
import enum
import signal
from typing import TYPE_CHECKING

from taskq.pool.ipc import FrameReader, PendingWrites

if TYPE_CHECKING:
    from taskq.pool.base import Job


class ChildState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BROKEN = "broken"
    RETIRING_UNREADY = "retiring before ready"
    RETIRING = "retiring"
    DEAD = "dead"


_S = ChildState
TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    _S.STARTING: frozenset({_S.READY, _S.RETIRING_UNREADY, _S.DEAD}),
    _S.READY: frozenset({_S.BROKEN, _S.RETIRING, _S.DEAD}),
    _S.BROKEN: frozenset({_S.RETIRING, _S.DEAD}),
    _S.RETIRING_UNREADY: frozenset({_S.RETIRING, _S.DEAD}),
    _S.RETIRING: frozenset({_S.DEAD}),
    _S.DEAD: frozenset(),
}
"""Every legal move; anything else is a bug in the pool (``ChildStateError``)."""

SAID_READY = frozenset({_S.READY, _S.BROKEN, _S.RETIRING})
RETIRING = frozenset({_S.RETIRING_UNREADY, _S.RETIRING})


class ChildStateError(AssertionError):
    """An illegal move of a child's state: the pool's bookkeeping is wrong."""

    def __init__(self, pid: int, old: ChildState, new: ChildState) -> None:
        allowed = ", ".join(s.name for s in TRANSITIONS[old]) or "nothing"
        super().__init__(f"pool child {pid}: illegal move {old.name} -> {new.name} "
                         f"(from {old.name}: {allowed})")
        self.pid = pid
        self.old = old
        self.new = new


class ChildGroup:
    """The slots of one child process that runs several jobs at once (``--threads``): they
    share the process, so one reaps it for all and the others read its status here."""

    __slots__ = ("pid", "reaped", "slots", "status")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.slots: list[Child] = []
        self.reaped = False
        self.status: int | None = None  # its exit status once reaped (None: unknown)


class Child:
    """The parent's view of one child process, or of one slot (thread) of a child process
    that runs several jobs at once (``group`` and ``slot`` set; each slot has its own pipe
    pair and pidfd and is scheduled as a child of its own)."""

    __slots__ = (
        "alarm_at", "claim", "current", "current_seq", "event_eof", "event_fd", "fired", "followed",
        "group", "hard_at", "job_fd", "key", "kill_reason", "killed", "pending", "pid", "pidfd",
        "queued", "reader", "reap_delay", "reap_scheduled", "reaped", "retired_at", "sent",
        "slot", "soft_at", "soft_signal", "spawned_at", "state", "stored", "storing", "taken",
        "tasks", "writing",
    )

    def __init__(self, pid: int, pidfd: int, job_fd: int, event_fd: int, now: float, *,
                 group: ChildGroup | None = None, slot: int = 0,
                 soft_signal: int = signal.SIGUSR1) -> None:
        self.pid = pid
        self.group = group
        self.slot = slot
        self.key: int | tuple[int, int] = pid if group is None else (pid, slot)
        self.soft_signal = soft_signal  # what the parent sends it for a soft time limit
        self.pidfd = pidfd              # -1 without pidfd
        self.job_fd = job_fd            # -1 once closed (retiring)
        self.event_fd = event_fd
        self.reader = FrameReader(event_fd)
        self.pending = PendingWrites()  # job frames not yet wholly written, tagged by seq
        self.writing = False            # job_fd is a writer in the hub
        self.spawned_at = now
        self.state = ChildState.STARTING
        self.retired_at = 0.0
        self.queued: collections.deque[tuple[int, Job]] = collections.deque()  # not started
        self.current: Job | None = None
        self.current_seq = -1
        self.taken = 0                  # jobs given to it and not given back (it runs them)
        self.tasks = 0                  # jobs it finished
        self.storing = False            # the current job's outcome is being stored
        self.stored: str | None = None  # ... and was stored, as this state: it is final
        self.followed = False           # ... and what follows it was sent (chord part counted)
        self.claim: tuple[str, str] | None = None  # its claim to fire a chord's body
        self.sent = 0                   # ... how many of what follows it were sent
        self.fired = False              # ... and whether it sent the chord's body
        self.soft_at = 0.0              # deadlines of the current job, pool clock (0: none)
        self.hard_at = 0.0
        self.alarm_at = 0.0             # when the armed timer fires (0: none armed)
        self.kill_reason: BaseException | None = None
        self.killed = False             # we sent it SIGKILL
        self.event_eof = False
        self.reaped = False             # its exit is being handled: never signal it again
        self.reap_delay = 0.0
        self.reap_scheduled = False

    def move(self, new: ChildState) -> None:
        """Go to ``new``; raise ``ChildStateError`` for a move ``TRANSITIONS`` does not list."""
        if new not in TRANSITIONS[self.state]:
            raise ChildStateError(self.pid, self.state, new)
        self.state = new

    def said_ready(self) -> None:
        """Its ``ready`` arrived (one told to retire meanwhile stays retiring)."""
        self.move(ChildState.RETIRING if self.state is ChildState.RETIRING_UNREADY
                  else ChildState.READY)

    def retire(self) -> None:
        """It takes no new job from now on (a retiring one stays as it is)."""
        if self.state not in RETIRING:
            self.move(ChildState.RETIRING if self.ready else ChildState.RETIRING_UNREADY)

    @property
    def ready(self) -> bool:
        """It said ``ready`` (whatever came after, short of death)."""
        return self.state in SAID_READY

    @property
    def retiring(self) -> bool:
        """It takes no new jobs and exits after what it holds."""
        return self.state in RETIRING

    @property
    def dead(self) -> bool:
        return self.state is ChildState.DEAD

    def load(self) -> int:
        """Jobs it holds: queued plus the one it runs."""
        return len(self.queued) + (self.current is not None)

    @property
    def label(self) -> str:
        """Its pid, and for a slot of a threaded child ``pid/slot``."""
        return str(self.pid) if self.group is None else f"{self.pid}/{self.slot}"

    def __repr__(self) -> str:
        killed = " killed" if self.killed else ""
        return f"<Child {self.label} {self.state.value}{killed} load={self.load()}>"
