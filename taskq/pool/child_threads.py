"""A pool child that runs several jobs at once, one per thread (``--threads N``).

Each thread is a *slot* with its own pipe pair, and speaks to the parent exactly as a
one-job child does (``ready``, ``started``, ``storing``, ``stored``, ``followed``, ``done``,
``exiting``): the parent sees N children that share one process, and its lost-process
detection, deadlines and bookkeeping stay per job. What differs is what a thread cannot do:

- A soft time limit cannot be a signal caught in the task's own thread (Python runs signal
  handlers in the main thread). The parent sends slot k the real-time signal
  ``SIGRTMIN + k``; its handler, in the main thread, raises ``SoftTimeLimitExceeded`` in
  slot k's thread (``PyThreadState_SetAsyncExc``), unless that slot is storing its outcome.
  It lands at the task's next Python instruction: a task blocked in one long C call (a
  ``time.sleep(60)``, a socket read without timeout) sees it only when that call returns.
- The hard limit's backstop (the child stopping a task itself when the parent is too
  stalled to kill it) is a watchdog in the main thread, not ``ITIMER_REAL``.
- A slot that fails (its thread raises outside a task) ends the whole process: the parent
  then sees every slot die and reports each one's job, never a slot that silently stopped.
- Recycling: a slot that reaches ``max_tasks_per_child`` (counted per slot) or finds the
  process over ``max_memory_per_child`` says ``exiting``; the parent retires its sibling
  slots, which finish the jobs written to them, and the process exits when all are done.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from taskq.errors import SoftTimeLimitExceeded
from taskq.pool.base import Job
from taskq.pool.ipc import JobInbox, write_frames

if TYPE_CHECKING:
    from taskq.app import TaskQ

logger = logging.getLogger("taskq.pool.child")

MAX_THREADS = min(30, int(signal.SIGRTMAX - signal.SIGRTMIN) + 1)
"""Slots one child can have: one real-time signal each (SIGRTMIN + slot) for soft limits."""

_SET_ASYNC_EXC = ctypes.pythonapi.PyThreadState_SetAsyncExc
_SET_ASYNC_EXC.argtypes = (ctypes.c_ulong, ctypes.py_object)


def soft_limit_signal(slot: int) -> int:
    """The signal the parent sends slot ``slot`` of a threaded child for a soft limit."""
    return int(signal.SIGRTMIN) + slot


class Slot:
    """One thread's job, as its soft-limit handler and the watchdog see it."""

    def __init__(self, index: int, job_fd: int, event_fd: int) -> None:
        self.index = index
        self.job_fd = job_fd
        self.event_fd = event_fd
        self.lock = threading.Lock()
        self.thread_id = 0
        self.in_task = False            # inside run_reporting's try: a soft limit is raised
        self.begun = False              # ``started`` sent, the task's try not yet entered
        self.deferred = False           # a soft limit came while begun: raised on entering
        self.storing = False            # from ``storing`` on, a soft limit is not raised
        self.stored: str | None = None  # the state its outcome was stored as (final)
        self.backstop_at = 0.0          # monotonic time past which the task is stopped

    def _clear_pending(self) -> None:
        # NULL as the exception clears one set but not yet raised.
        _SET_ASYNC_EXC(ctypes.c_ulong(self.thread_id), ctypes.py_object())

    def begin(self, hard: float | None) -> None:
        with self.lock:
            self._clear_pending()  # a soft limit meant for the previous job
            self.begun, self.deferred, self.storing, self.stored = True, False, False, None
            self.backstop_at = time.monotonic() + hard + _grace() if hard else 0.0

    def enter(self) -> None:
        """In the task's thread, inside ``run_reporting``'s try (``before_run``): from here an
        asynchronous exception ends the task, not the thread (which would end the process)."""
        with self.lock:
            self.in_task, self.begun = True, False
            deferred, self.deferred = self.deferred, False
        if deferred:
            raise SoftTimeLimitExceeded()

    def end(self) -> None:
        with self.lock:
            self.in_task = self.begun = self.deferred = False
            self.backstop_at = 0.0
            self._clear_pending()

    def mark_storing(self) -> None:
        with self.lock:
            self.storing = True
            self._clear_pending()

    def soft_limit(self) -> None:
        """In the main thread (a signal handler): raise the limit in this slot's task."""
        with self.lock:
            if self.begun:
                self.deferred = True
            elif self.in_task and not self.storing and self.thread_id:
                _SET_ASYNC_EXC(ctypes.c_ulong(self.thread_id),
                               ctypes.py_object(SoftTimeLimitExceeded))


def _grace() -> float:
    from taskq.pool.child import HARD_LIMIT_GRACE

    return HARD_LIMIT_GRACE


def _serve(app: TaskQ, slot: Slot, hostname: str | None, max_tasks: int | None,
           max_memory_kib: int | None) -> None:
    """One slot's loop: the one-job child's, in a thread. Any failure ends the process."""
    from taskq.pool.child import recycle_reason, run_reporting

    try:
        slot.thread_id = threading.get_ident()
        write_frames(slot.event_fd, ("ready", os.getpid()))
        done = 0
        inbox = JobInbox(slot.job_fd)
        while True:
            frame = inbox.next()
            if frame is None:
                return  # the parent closed this slot's job pipe: finish cleanly
            _kind, seq, msg, delivery_info, hard, run_id = frame
            if inbox.cancelled(seq):
                write_frames(slot.event_fd, ("skipped", seq))
                continue
            slot.begin(hard)
            write_frames(slot.event_fd, ("started", seq))
            try:
                result = run_reporting(
                    app, Job(msg=msg, delivery_info=delivery_info, time_limit=hard,
                             run_id=run_id), hostname, seq, slot.event_fd, slot,
                    before_run=slot.enter, before_store=slot.mark_storing)
            finally:
                slot.end()
            done += 1
            reason = recycle_reason(done, max_tasks, max_memory_kib)
            if reason is None:
                write_frames(slot.event_fd, ("done", seq, result))
                continue
            write_frames(slot.event_fd, ("done", seq, result), ("exiting", reason))
            return
    except BrokenPipeError:
        os._exit(1)  # the parent is gone (or closed our events pipe): nobody to tell
    except BaseException:
        with contextlib.suppress(BaseException):
            logger.exception("pool child %d: thread of slot %d failed", os.getpid(),
                             slot.index)
        os._exit(1)


def _soft_limit_handler(slot: Slot) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        slot.soft_limit()

    return handler


def serve_threads(app: TaskQ, pipes: Sequence[tuple[int, int]], *, hostname: str | None,
                  max_tasks: int | None, max_memory_kib: int | None) -> None:
    """Run one thread per ``(job_fd, event_fd)`` pair until every one has finished; the
    main thread handles soft-limit signals and watches the hard limits' backstops."""
    slots = [Slot(k, job_fd, event_fd) for k, (job_fd, event_fd) in enumerate(pipes)]
    for slot in slots:
        signal.signal(soft_limit_signal(slot.index), _soft_limit_handler(slot))
    threads = [threading.Thread(target=_serve, name=f"taskq-slot-{slot.index}", daemon=True,
                                args=(app, slot, hostname, max_tasks, max_memory_kib))
               for slot in slots]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            due = [s.backstop_at for s in slots if s.backstop_at]
            now = time.monotonic()
            if due and min(due) <= now:
                # A task past its hard limit plus the grace: the parent, which kills us at
                # the limit, is stalled. Stop as a one-job child does (SIGALRM's default).
                signal.signal(signal.SIGALRM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGALRM)
            thread.join(min(0.5, min(due) - now) if due else 0.5)
