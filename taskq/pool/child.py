"""The pool child: read a job, say ``started``, run it, say ``done``; leave at EOF on its job
pipe (the parent's way to say "finish what you have, then exit") or when recycled (max tasks,
max memory: ``exiting`` follows ``done`` and no further job is read).

Between ``started`` and ``done`` it says ``storing`` just before it stores the outcome and
``stored`` right after (callbacks are sent after that): a child that dies after ``stored``
has finished its job, whatever the parent reads next (issue 13 #9). It says ``followed`` once
its chord part is counted and what follows the outcome is sent (``claimed`` first if the part
completed its chord; ``sent`` after each callback or chain step): one that dies between
``stored`` and ``followed`` leaves the rest to the parent (issue 15). The soft-limit signal
is blocked from ``storing`` on, so it cannot cut the store short. A job with a hard limit
arms ``ITIMER_REAL`` for the limit plus ``HARD_LIMIT_GRACE``: if the parent, which kills the
child at the limit, is stalled, SIGALRM ends the child anyway (SIGALRM is the pool's in a
child: a task must not rely on ``signal.alarm``).

It starts as a fork of the worker's main process and cleans up what it inherited, in this
order: die with the parent (PR_SET_PDEATHSIG, then a ``getppid()`` check, since the parent may
have died before the prctl), reset the parent's signal handling, release every inherited fd
but its own pipe pair, stdio and log files, forget multiprocessing's finalizers. It never
runs the parent's cleanup: the parent's client objects stay referenced and their sockets are
replaced by /dev/null (not closed), so even a stray finalizer can close nothing of the
child's own; it leaves with ``os._exit`` after the ``worker_process_shutdown`` hooks.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from taskq import states
from taskq.errors import SoftTimeLimitExceeded
from taskq.pool.base import Job, JobResult, run_job
from taskq.pool.ipc import JobInbox, write_frames

if TYPE_CHECKING:
    from taskq.app import TaskQ

logger = logging.getLogger("taskq.pool.child")

PR_SET_PDEATHSIG = 1
# Loaded in the parent at import, so that a child does not pay for a dlopen.
try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - no libc to speak of
    _LIBC = None

_KEEPALIVE: list[Any] = []  # the parent's clients: referenced forever, never finalized here


HARD_LIMIT_GRACE = 3.0
"""Seconds past its hard time limit after which a child stops its task itself (SIGALRM, whose
default action ends the process), in case the parent, which normally kills it at the limit,
is stalled: a stalled parent cannot leave a task running forever."""


class _JobState:
    """The job this (one-job) child runs, as its soft-limit handler sees it."""

    def __init__(self) -> None:
        self.in_task = False
        self.stored: str | None = None  # the state its outcome was stored as (final)


_State = _JobState()


def _die_with_parent(parent_pid: int) -> None:
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)


def _reset_signals() -> None:
    signal.set_wakeup_fd(-1)  # the parent's loop pipe: not ours to write to
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C reaches the whole group; the parent decides
    for signum in (signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD,
                   signal.SIGALRM):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, _on_soft_limit)
    # The stress oracles dump every process's stacks on SIGUSR2.
    with contextlib.suppress(AttributeError, OSError, ValueError, RuntimeError):
        faulthandler.register(signal.SIGUSR2, all_threads=True, chain=False)


def _on_soft_limit(signum: int, frame: object) -> None:
    # Only inside a task: between tasks (a late signal) there is nothing to interrupt.
    if _State.in_task:
        raise SoftTimeLimitExceeded()


def log_fds() -> set[int]:
    """File descriptors the logging handlers write to (kept open in children)."""
    fds: set[int] = set()
    loggers: list[Any] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values()
                if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for handler in lg.handlers:
            stream = getattr(handler, "stream", None)
            fileno = getattr(stream, "fileno", None)
            if fileno is not None:
                with contextlib.suppress(OSError, ValueError):
                    fds.add(fileno())
    return fds


def _release_inherited_fds(keep: set[int]) -> None:
    """Release every inherited fd not in ``keep`` by putting /dev/null in its place.

    Not ``close()``: an object of the parent's (a socket, an epoll) that some finalizer
    closes later would then close a number reused by one of the child's own new fds.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024))
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in fds:
            if fd in keep or fd == devnull:
                continue
            with contextlib.suppress(OSError):
                os.fstat(fd)  # the listing's own directory fd is gone by now: skip it
                os.dup2(devnull, fd, inheritable=False)
    finally:
        os.close(devnull)


def _forget_multiprocessing() -> None:
    # As billiard does: the parent's after-fork callbacks and finalizers are not ours.
    for name in ("multiprocessing.util", "billiard.util"):
        module = sys.modules.get(name)
        for attr in ("_afterfork_registry", "_finalizer_registry"):
            registry = getattr(module, attr, None)
            if registry is not None:
                registry.clear()


def _forget_imports_in_progress() -> None:
    """Drop the imports another thread of the parent was in the middle of when it forked.

    Such a thread (an offload lane creating the result backend's engine, say) holds that
    module's import lock, and the fork copies the lock held by a thread the child does not
    have: the child's own import of the module would wait on it forever, with its job
    started. The child forgets the lock and the half-run module, and imports it afresh."""
    import importlib._bootstrap as bootstrap  # the per-module import locks live here

    locks = getattr(bootstrap, "_module_locks", None)
    if not isinstance(locks, dict):
        return
    me = threading.get_ident()
    for name, ref in list(locks.items()):
        lock = ref() if callable(ref) else None
        owner = getattr(lock, "owner", None)
        if owner in (None, me):
            continue
        locks.pop(name, None)
        module = sys.modules.get(name)
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            del sys.modules[name]


def _rss_kib() -> int:
    """Current resident memory (not ``ru_maxrss``: a child inherits its parent's peak)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def recycle_reason(done: int, max_tasks: int | None, max_memory_kib: int | None
                   ) -> str | None:
    """Why a child that has run ``done`` jobs leaves now (None: it stays)."""
    if max_tasks and done >= max_tasks:
        return "max_tasks_per_child"
    if max_memory_kib and _rss_kib() > max_memory_kib:
        return "max_memory_per_child"
    return None


_SOFT = {signal.SIGUSR1}


def _discard_late_soft_limit() -> None:
    """Drop a soft-limit signal left pending by the previous job (it landed while that job's
    result was stored, when the signal is blocked): it is not this job's."""
    if signal.SIGUSR1 in signal.sigpending():
        signal.sigtimedwait(_SOFT, 0)


def _arm_backstop(hard: float | None) -> None:
    if hard:
        if signal.getsignal(signal.SIGALRM) is not signal.SIG_DFL:  # a task may have set one
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, hard + HARD_LIMIT_GRACE)


class _Outcome(Protocol):
    stored: str | None  # the state the job's outcome was stored as (final), once stored


def run_reporting(app: TaskQ, job: Job, hostname: str | None, seq: int, event_fd: int,
                  outcome: _Outcome, *, before_run: Callable[[], object],
                  before_store: Callable[[], object]) -> JobResult:
    """Run ``job`` and tell the parent, frame by frame, how far its outcome got (``storing``,
    ``stored``, ``claimed``, ``sent``, ``followed``). ``before_run`` and ``before_store``
    open and close the window in which a soft limit may interrupt the task.

    The caller's ``done`` says all of it again; so when nothing happens between them but
    the ``done``, ``stored`` and ``followed`` are not written: the backend was not written,
    nothing follows the outcome, and the job has no hard time limit (this pool would kill it
    at a moment of its choosing, which must not undo an outcome the task reached). ``storing``
    is written only before a backend write. A noop task costs the parent two frames, not
    five."""
    outcome.stored = None
    quiet: list[tuple[Any, ...]] = []  # frames the done supersedes, written if any follows
    urgent = bool(job.time_limit)  # something runs after the store, or a hard limit

    def send(*frames: tuple[Any, ...]) -> None:
        write_frames(event_fd, *quiet, *frames)
        quiet.clear()

    def storing(writes: bool) -> None:
        before_store()
        if writes:
            send(("storing", seq))

    def stored(state: str, follows: bool) -> None:
        nonlocal urgent
        outcome.stored = state
        urgent = urgent or follows
        if urgent:
            send(("stored", seq, state))
        else:
            quiet.append(("stored", seq, state))

    def claimed(group_id: str, token: str, fired: bool) -> None:
        send(("claimed", seq, group_id, token, fired))

    def followed() -> None:
        if urgent:  # what followed was sent: a death now must not send it again
            send(("followed", seq))
        else:
            quiet.append(("followed", seq))

    def sent(count: int) -> None:
        send(("sent", seq, count))

    try:
        before_run()
        return run_job(app, job, hostname, on_storing=storing, on_stored=stored,
                       on_claimed=claimed, on_followed=followed, on_sent=sent)
    except BaseException as exc:  # outside the task's own try (a late soft limit, exit())
        summary = f"{type(exc).__name__}: {exc}"[:200]
        if outcome.stored is not None:  # after the store: what was stored is the outcome
            return JobResult(outcome.stored, summary=summary)
        with contextlib.suppress(Exception):
            storing(True)
            app.backend.mark_as_failure(job.id, exc, request=job.msg)
            stored(states.FAILURE, True)
        return JobResult(states.FAILURE, summary=summary)


def _run(app: TaskQ, job: Job, hostname: str | None, seq: int, event_fd: int) -> JobResult:
    _State.in_task = True
    try:
        # The soft-limit signal has been blocked since before ``started`` was sent: one
        # signalled in between is delivered as the task starts, not lost. From ``storing``
        # on it is blocked again (it would cut the store short: the result lost while the
        # parent acks SUCCESS), until the next job, which drops it.
        return run_reporting(
            app, job, hostname, seq, event_fd, _State,
            before_run=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, _SOFT),
            before_store=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, _SOFT))
    finally:
        _State.in_task = False


def child_main(app: TaskQ, parent_pid: int, job_fd: int, event_fd: int, *,
               hostname: str | None, max_tasks: int | None, max_memory_kib: int | None,
               keep_fds: frozenset[int] = frozenset(),
               slots: Sequence[tuple[int, int]] = ()) -> None:
    """Runs in the forked child; never returns. With ``slots`` (``(job_fd, event_fd)`` per
    thread, ``--threads``), runs one job per slot at once (``child_threads``) instead."""
    code = 0
    try:
        # What the parent made is never collected here: no finalizer of the parent's runs in
        # a child, and this gc does not write into the pages it shares with the parent.
        gc.freeze()
        _forget_imports_in_progress()
        _die_with_parent(parent_pid)
        _reset_signals()
        _KEEPALIVE.extend([app._backend, app._publisher])
        _release_inherited_fds({0, 1, 2, job_fd, event_fd, *keep_fds,
                                *(fd for pair in slots for fd in pair)})
        _forget_multiprocessing()
        for hook in app.hooks.worker_process_init:
            hook()
        # Import what running a task needs now: a soft-limit signal that lands while Python
        # compiles an import surfaces as SystemError instead of SoftTimeLimitExceeded.
        import taskq.trace  # noqa: F401
        if slots:
            from taskq.pool.child_threads import serve_threads

            serve_threads(app, slots, hostname=hostname, max_tasks=max_tasks,
                          max_memory_kib=max_memory_kib)
            for hook in app.hooks.worker_process_shutdown:
                hook()
            return
        write_frames(event_fd, ("ready", os.getpid()))
        done = 0
        inbox = JobInbox(job_fd)
        while True:
            frame = inbox.next()
            if frame is None:
                break  # the parent closed our job pipe: finish cleanly
            _kind, seq, msg, delivery_info, hard, run_id = frame
            if inbox.cancelled(seq):
                write_frames(event_fd, ("skipped", seq))
                continue
            signal.pthread_sigmask(signal.SIG_BLOCK, _SOFT)
            _discard_late_soft_limit()
            write_frames(event_fd, ("started", seq))
            _arm_backstop(hard)
            result = _run(app, Job(msg=msg, delivery_info=delivery_info, time_limit=hard,
                                   run_id=run_id), hostname, seq, event_fd)
            if hard:
                signal.setitimer(signal.ITIMER_REAL, 0)
            done += 1
            reason = recycle_reason(done, max_tasks, max_memory_kib)
            if reason is None:
                write_frames(event_fd, ("done", seq, result))
                continue
            write_frames(event_fd, ("done", seq, result), ("exiting", reason))
            break
        for hook in app.hooks.worker_process_shutdown:
            hook()
    except BrokenPipeError:
        code = 1  # the parent is gone (or closed our events pipe): nobody to tell
    except BaseException:
        with contextlib.suppress(BaseException):
            logger.exception("pool child %d failed", os.getpid())
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
