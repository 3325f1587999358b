"""The prefork pool: one child process per slot, one pipe pair per child, driven by the loop.

- Jobs go down each child's own job pipe with non-blocking writes (``add_writer`` while a
  frame does not fit); events (``ready``, ``started``, ``done``, ``exiting``) come back on
  its event pipe and are read in batches. A job counts as started only once its ``started``
  was read: until then it can go back to the worker (``on_unstarted``) and run elsewhere.
- Each child's pidfd is a reader in the loop, so a death is seen at once (without pidfds:
  EOF on the event pipe, plus a periodic ``waitpid`` sweep in case a process the task forked
  holds the pipe open). The event pipe is read until EAGAIN first, never to EOF (its last
  ``started``/``done`` may be there); the child is reaped; the job it had started fails
  (``WorkerLostError`` naming the signal or exit code, ``TimeLimitExceeded`` after a hard
  limit); jobs it held but never started go back; a replacement is forked.
- ``-O fair`` writes only to idle children; ``-O fast`` lets each child hold
  ``worker_fast_queue_depth`` jobs besides the one it runs.
- Recycling (``max_tasks_per_child``, ``max_memory_per_child``) is the child's decision:
  it sends ``done`` then ``exiting`` and reads nothing more, so all it holds goes back.
  Retiring a child from here (warm stop, shrink) closes its job pipe: it runs the jobs
  already written whole, then exits at EOF; frames not wholly written go back.
- Time limits start when ``started`` is read: soft = SIGUSR1 (``SoftTimeLimitExceeded`` in
  the task), hard = SIGKILL. Children are signalled through their pidfd.
- Children that die before ``ready`` on their own (or killed by the pool for not getting
  ready in time; a SIGKILL from outside does not count) make a restart storm: after a few in
  a row, restarts back off exponentially (logged), never a busy loop. So do ready children
  that die that way before their first ``started``; and the job such a child was reading is
  given up (reported lost, unstarted) after ``task_max_redeliveries`` + 1 of them.
- A child that dies after ``stored`` (its outcome is in the backend) has its job reported
  ``done`` with that state, never lost; one that dies between ``storing`` and ``stored`` is
  settled by reading the backend from a thread (done if the store got through). Either way,
  unless it had said ``followed``, the result says ``follow_up``: the worker counts its chord
  part and sends what follows the outcome, which the child may not have done.
- ``max_tasks_per_child``: a child is given at most that many jobs it will run; a job it
  skipped (taken back with ``withdraw``) gives its slot back. A child given its last job is
  *spent*: its successor is forked at once, so it starts while the last job runs, not after
  the exit (recycling costs no fork on the path from one task to the next). Still at most
  ``target`` children hold jobs: the successor gets work once a spent child has none.
- Each child's lifecycle (starting, ready, broken, retiring, dead) is one ``ChildState`` with
  checked moves (``taskq.pool.child_state``). Time comes from the loop's clock.
- ``worker_threads`` (``--threads N``): each process runs N *slots*, one thread each
  (``taskq.pool.child_threads``), and every slot is a ``Child`` here with its own pipe pair
  and pidfd, scheduled and judged per job as above; ``target`` counts slots. The process's
  exit is handled for all its slots at once (``_on_group_dead``): every slot's last events
  are read before any is judged, and one replacement process is forked. A soft limit is the
  slot's own real-time signal; a slot that recycles retires its siblings.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import importlib
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from taskq import states
from taskq.errors import ConfigurationError, TimeLimitExceeded, WorkerLostError
from taskq.pool.base import Job, JobResult, Pool
from taskq.pool.child import child_main, log_fds
from taskq.pool.child_state import Child, ChildGroup, ChildState
from taskq.pool.child_threads import MAX_THREADS, soft_limit_signal
from taskq.pool.ipc import encode

if TYPE_CHECKING:
    from kombu.asynchronous import Hub
    from kombu.asynchronous.timer import Entry

    from taskq.worker.loop import Clock, Loop

logger = logging.getLogger("taskq.pool.prefork")

READY_TIMEOUT = 10.0      # a child not ready by then is killed and replaced
RETIRE_TIMEOUT = 10.0     # an idle child told to exit that is still there by then is killed
HOUSEKEEPING = 0.5        # how often ready/retire timeouts and the no-pidfd sweep run
STORM_FREE = 2            # children dying before ready, in a row, that restart at once
STORM_BASE_DELAY = 0.25
STORM_MAX_DELAY = 10.0
REAP_POLL_MAX = 0.5
TERMINATE_GRACE = 1.0     # idle retiring children get this long to exit on their own
TERMINATE_TIMEOUT = 3.0
AUTOSCALE_KEEPALIVE = 30.0  # idle seconds before autoscale gives a child back

HAS_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


def describe_exit(status: int | None) -> str:
    """``signal 9 (SIGKILL)``, ``exitcode 3``: how a waitpid status reads in errors."""
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            return f"signal {signum} ({signal.Signals(signum).name})"
        except ValueError:
            return f"signal {signum}"
    if os.WIFEXITED(status):
        return f"exitcode {os.WEXITSTATUS(status)}"
    return f"status {status}"


def _killed_from_outside(child: Child, status: int | None) -> bool:
    """SIGKILLed, and not by the pool (which kills children that are not ready in time)."""
    return (status is not None and os.WIFSIGNALED(status)
            and os.WTERMSIG(status) == signal.SIGKILL and not child.killed)


def _call_all(calls: Iterable[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    """Make every call even when one raises (each job must reach the worker); then raise."""
    error: Exception | None = None
    for fn, args in calls:
        try:
            fn(*args)
        except Exception as exc:
            if error is None:
                error = exc
    if error is not None:
        raise error


class PreforkPool(Pool):
    kind = "prefork"
    supports_resize = supports_restart = supports_autoscale = supports_terminate_job = True

    def __init__(
        self,
        app: Any,
        *,
        optimization: str | None = None,
        queue_depth: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        ready_timeout: float = READY_TIMEOUT,
        use_pidfd: bool = True,
        keep_fds: Iterable[int] = (),
        threads: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        conf = self.app.conf
        self.threads = int(threads if threads is not None else conf.worker_threads)
        if not 1 <= self.threads <= MAX_THREADS:
            raise ConfigurationError(f"worker_threads {self.threads}: a prefork child runs 1 "
                                     f"to {MAX_THREADS} threads (option --threads)")
        if self.threads > 1:
            # Slots come and go a whole process at a time: one slot more or less has no
            # meaning (control commands that would resize the pool answer so).
            self.supports_resize = self.supports_autoscale = False
        self.optimization = optimization or conf.worker_optimization
        if self.optimization not in ("fair", "fast"):
            raise ConfigurationError(f"pool optimization {self.optimization!r}: use 'fair' or "
                                     "'fast' (setting worker_optimization, option -O)")
        self.depth = max(1, int(queue_depth if queue_depth is not None
                                else conf.worker_fast_queue_depth))
        self.max_tasks = (max_tasks_per_child if max_tasks_per_child is not None
                          else conf.worker_max_tasks_per_child)
        self.max_memory = (max_memory_per_child if max_memory_per_child is not None
                           else conf.worker_max_memory_per_child)
        self.ready_timeout = ready_timeout
        self.use_pidfd = use_pidfd and HAS_PIDFD   # read at each fork: may be changed
        self.keep_fds = frozenset(keep_fds)
        self.children: dict[int | tuple[int, int], Child] = {}  # by Child.key
        self.autoscale_bounds: tuple[int, int] | None = None
        self._idle_since: float | None = None
        self.target = self.concurrency * self.threads  # slots: one job each at a time
        self.stopping = False
        self.terminated = False
        self.stats: collections.Counter[str] = collections.Counter()
        self.parent_pid = os.getpid()
        self._seq = itertools.count()
        self._early_deaths = 0      # children that died before ``ready``, in a row
        self._unstarted_deaths = 0  # ready children that died before their first ``started``
        self._start_failures: dict[str, int] = {}  # job id -> children it died in, unstarted
        self._settling: set[Job] = set()  # lost while storing: is the outcome stored?
        self._spawn_timer: Entry | None = None
        self._housekeeping: Entry | None = None
        self._log_fds: frozenset[int] = frozenset()
        self._started = False
        self._forked = False  # the first children forked, so started too (see start())
        self.clock: Clock = time.monotonic  # the loop's, from start(): tests can drive it

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: Loop) -> None:
        self.loop = loop
        self.hub: Hub = loop.hub
        self.clock = loop.clock
        self.parent_pid = os.getpid()
        # What a child needs to run a task, imported once here: a child that imported it
        # itself spent 12-16 ms of its start on it (page faults on a forked heap).
        import taskq.trace  # noqa: F401
        self._log_fds = frozenset(log_fds())
        self._housekeeping = self.hub.call_repeatedly(HOUSEKEEPING, self._housekeep)
        self._started = True
        # The first children fork once the other steps have set up (connections, consumers):
        # what the parent allocates after a fork lands in pages it shares with its children
        # and copies them (forking before that set-up cost ~6 MiB of PSS per idle worker,
        # measured with `bench all --row pss`). The worker says when (worker_started); a
        # pool driven without a worker forks on the loop's first turn.
        loop.call_soon(self._first_fork)

    def worker_started(self) -> None:
        self._first_fork()

    def _first_fork(self) -> None:
        if self._forked or not self._started:
            return
        self._forked = True
        if self.stopping:
            return
        # What exists now (modules, the app, its settings) lives as long as the worker: the
        # parent's gc stops visiting it, so its full collections do not write into pages the
        # children share. A child freezes what it inherits itself (child_main). An
        # application that froze objects itself keeps them frozen.
        if gc.get_freeze_count() == 0:
            gc.freeze()
        self._maintain()

    def _spent(self, child: Child) -> bool:
        """Given its last job under ``max_tasks_per_child``: it leaves after what it holds."""
        max_tasks = self.max_tasks
        return max_tasks is not None and 0 < max_tasks <= child.taken

    def _active(self) -> int:
        """Children that will take more jobs: not retiring, not spent."""
        return sum(1 for c in self.children.values() if not c.retiring and not self._spent(c))

    def _holding(self) -> int:
        """Ready children that hold a job (running or queued), spent ones included, and the
        slots of a recycled threaded process that still run theirs."""
        return sum(1 for c in self.children.values()
                   if (c.state is ChildState.READY or (c.group is not None and c.retiring))
                   and (c.current is not None or c.queued))

    def _storm_delay(self) -> float:
        over = self._early_deaths + self._unstarted_deaths - STORM_FREE
        return 0.0 if over <= 0 else min(STORM_MAX_DELAY, STORM_BASE_DELAY * 2 ** (over - 1))

    def _maintain(self, *, now: bool = False) -> None:
        """Fork children until ``target`` are alive (and not retiring), unless throttled."""
        if self.stopping or not self._forked or self._spawn_timer is not None:
            return  # (before the first fork: it forks ``target`` children, resized or not)
        while self._active() < self.target:
            delay = 0.0 if now else self._storm_delay()
            now = False  # after a wait, one child starts: if it dies early, the wait doubles
            if delay:
                logger.error("pool children keep dying before they are ready or start their "
                             "first job (%d in a row): next start in %.2f s",
                             self._early_deaths + self._unstarted_deaths, delay)
                self._spawn_timer = self.hub.call_later(delay, self._spawn_later)
                return
            if not self._spawn():
                self._early_deaths += 1
                delay = max(0.1, self._storm_delay())
                self._spawn_timer = self.hub.call_later(delay, self._spawn_later)
                return

    def _spawn_later(self) -> None:
        self._spawn_timer = None
        self._maintain(now=True)

    def _pipes(self) -> list[tuple[int, int, int, int]] | None:
        """A job pipe and an event pipe per slot of the next child: (job_r, job_w, event_r,
        event_w) each; None (and nothing left open) when the system refuses one."""
        made: list[int] = []
        try:
            for _ in range(2 * self.threads):
                made.extend(os.pipe2(os.O_CLOEXEC))
        except OSError as exc:
            logger.error("cannot start a pool child: %s", exc)
            for fd in made:
                os.close(fd)
            return None
        return [(made[i], made[i + 1], made[i + 2], made[i + 3])
                for i in range(0, len(made), 4)]

    def _spawn(self) -> bool:
        pipes = self._pipes()
        if pipes is None:
            return False
        job_r, job_w, event_r, event_w = pipes[0]
        with contextlib.suppress(Exception):  # or the child would print the parent's buffer
            sys.stdout.flush()
            sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            logger.error("cannot fork a pool child: %s", exc)
            for fds in pipes:
                for fd in fds:
                    os.close(fd)
            return False
        if pid == 0:
            child_main(self.app, self.parent_pid, job_r, event_w, hostname=self.hostname,
                       max_tasks=self.max_tasks, max_memory_kib=self.max_memory,
                       keep_fds=self._log_fds | self.keep_fds,
                       slots=[(p[0], p[3]) for p in pipes] if self.threads > 1 else ())
        group = ChildGroup(pid) if self.threads > 1 else None
        for slot, (job_r, job_w, event_r, event_w) in enumerate(pipes):
            os.close(job_r)
            os.close(event_w)
            os.set_blocking(job_w, False)
            os.set_blocking(event_r, False)
            pidfd = -1
            if self.use_pidfd:  # one per slot: each is a reader of its own in the loop
                try:
                    pidfd = os.pidfd_open(pid)
                except OSError as exc:  # works for an unreaped child; a kernel limit
                    logger.warning("pidfd_open(%d) failed (%s): watching it by pipe EOF", pid,
                                   exc)
            child = Child(pid, pidfd, job_w, event_r, self.clock(), group=group, slot=slot,
                          soft_signal=signal.SIGUSR1 if group is None
                          else soft_limit_signal(slot))
            if group is not None:
                group.slots.append(child)
            self.children[child.key] = child
            self.hub.add_reader(event_r, self._on_events, child)
            if pidfd >= 0:
                self.hub.add_reader(pidfd, self._on_pidfd, child)
        self.stats["spawned"] += 1
        return True

    def _signal(self, child: Child, signum: int) -> None:
        if child.reaped or (child.group is not None and child.group.reaped):
            return
        with contextlib.suppress(ProcessLookupError):
            if child.pidfd >= 0:
                signal.pidfd_send_signal(child.pidfd, signum)
            else:  # still our unreaped child, so its pid cannot have been reused
                os.kill(child.pid, signum)

    def _kill(self, child: Child) -> None:
        child.killed = True
        self._signal(child, signal.SIGKILL)

    def _housekeep(self) -> None:
        now = self.clock()
        for child in list(self.children.values()):
            if child.reaped:
                continue
            if not child.ready and not child.killed and now - child.spawned_at > \
                    self.ready_timeout:
                logger.error("pool child %d not ready after %.1f s: killing it", child.pid,
                             self.ready_timeout)
                self._kill(child)
            elif not child.killed and self._overdue_exit(child, now):
                logger.warning("pool child %s still there %.0f s after it was told to exit: "
                               "killing it", child.label, RETIRE_TIMEOUT)
                self._kill(child)
            if child.pidfd < 0 and not child.reap_scheduled:
                self._poll_exit(child)  # a process it forked may hold its event pipe open

    @staticmethod
    def _overdue_exit(child: Child, now: float) -> bool:
        """Told to exit more than ``RETIRE_TIMEOUT`` ago and holding nothing. A slot of a
        threaded child is judged with its process: killing it kills every slot, so not while
        any of them still runs or holds a job."""
        slots = child.group.slots if child.group is not None else (child,)
        return all(s.dead or (s.retiring and s.current is None and not s.queued
                              and now - s.retired_at > RETIRE_TIMEOUT) for s in slots)

    # -- scheduling ---------------------------------------------------------------------------
    def _pick(self) -> Child | None:
        """An idle child first; with ``fast``, else the least loaded one with fewer than
        ``depth`` jobs waiting (besides the one it runs)."""
        if self.stopping:
            return None
        fair = self.optimization == "fair"
        depth, max_tasks = self.depth, self.max_tasks
        # With recycling, a spent child's successor may be ready while it still runs its
        # last job: an idle child takes work only while fewer than ``target`` hold some.
        idle_ok = not max_tasks or self._holding() < self.target
        best: Child | None = None
        best_load = 1 << 30
        idle_slot: Child | None = None  # threaded children: an idle slot of the least busy
        idle_busy = 1 << 30
        for child in self.children.values():
            if child.state is not ChildState.READY:
                continue
            if max_tasks and child.taken >= max_tasks:  # spent (inline: the hot path)
                continue  # it leaves after the jobs it has: what we give it would come back
            waiting = len(child.queued)
            load = waiting + (child.current is not None)
            if load == 0:
                if not idle_ok:
                    continue
                if child.group is None:
                    return child
                # Spread over processes first: threads of one process share its GIL.
                busy = sum(1 for s in child.group.slots if s.current is not None or s.queued)
                if busy == 0:
                    return child
                if busy < idle_busy:
                    idle_slot, idle_busy = child, busy
                continue
            if fair or waiting >= depth:
                continue
            if load < best_load:
                best, best_load = child, load
        return idle_slot if idle_slot is not None else best

    def can_accept(self) -> bool:
        return self._pick() is not None

    def apply(self, job: Job) -> None:
        child = self._pick()
        if child is None:  # the worker asks can_accept() first; never drop a job anyway
            self.on_unstarted(job)
            return
        seq = next(self._seq)
        # The hard limit goes along: the child stops the task itself a grace after it, in
        # case this process is too stalled to (child.HARD_LIMIT_GRACE).
        frame = encode(("job", seq, job.msg, dict(job.delivery_info), job.time_limit,
                        job.run_id))
        child.queued.append((seq, job))
        child.taken += 1
        child.pending.append(seq, frame)
        self._flush(child)
        if self._spent(child):
            self._maintain()  # spent: fork its successor now, while it runs what it holds

    def withdraw(self, jobs: Collection[Job]) -> None:
        # A cancel frame after the jobs: the child reads ahead before each job it starts and
        # answers ``skipped`` for those it will not run.
        wanted = set(jobs)
        for child in self.children.values():
            if child.state is not ChildState.READY:
                continue  # its death (or exit) gives back what it holds
            seqs = [seq for seq, job in child.queued if job in wanted]
            if seqs:
                child.pending.append(None, encode(("cancel", seqs)))
                self.stats["withdrawn"] += len(seqs)
                self._flush(child)

    def _flush(self, child: Child) -> None:
        try:
            empty = child.pending.write(child.job_fd)
        except OSError:  # EPIPE: the child is going; its death gives back what it holds
            child.move(ChildState.BROKEN)
            empty = True
        if not empty and not child.writing:
            child.writing = True
            self.hub.add_writer(child.job_fd, self._flush, child)
        elif empty and child.writing:
            child.writing = False
            self._unwatch(child.job_fd)

    def _unwatch(self, fd: int) -> None:
        if fd >= 0:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.hub.remove(fd)

    # -- events from children -----------------------------------------------------------------
    def _on_events(self, child: Child) -> None:
        child.reader.read_available()
        self._handle_frames(child)
        if child.reader.eof and not child.event_eof and not child.reaped:
            child.event_eof = True
            self._unwatch(child.event_fd)  # EOF stays readable: do not spin on it
            if child.pidfd < 0:
                self._try_reap(child)      # the fallback's death notice

    def _handle_frames(self, child: Child) -> None:
        reader = child.reader
        while True:
            try:
                ok, frame = reader.next()
            except Exception as exc:  # garbage on the pipe: the child cannot be trusted
                logger.error("pool child %d sent an unreadable event (%r): killing it",
                             child.pid, exc)
                reader.eof = True
                self._kill(child)
                return
            if not ok:
                return
            self._handle(child, frame)

    def _handle(self, child: Child, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "started":
            job = self._take_queued(child, frame[1])
            if job is None:
                return
            child.current = job
            child.current_seq = frame[1]
            child.storing, child.stored = False, None
            child.followed, child.claim, child.sent, child.fired = False, None, 0, False
            job.pid = child.pid
            self._early_deaths = self._unstarted_deaths = 0  # children can run jobs
            if self._start_failures:
                self._start_failures.pop(job.id, None)
            if job.time_limit or job.soft_time_limit:
                self._start_limits(child, job)
            self.on_started(job, child.pid)
        elif kind == "done":
            job = child.current
            if job is None or child.current_seq != frame[1]:
                logger.error("pool child %d reported done for a job it was not running",
                             child.pid)
                return
            child.current = None
            child.soft_at = child.hard_at = 0.0
            child.storing, child.stored = False, None
            child.followed, child.claim, child.sent, child.fired = False, None, 0, False
            child.tasks += 1
            result: JobResult = frame[2]
            self.on_done(job, result)
        elif kind == "storing":
            if child.current is not None and child.current_seq == frame[1]:
                child.storing = True
        elif kind == "stored":
            if child.current is not None and child.current_seq == frame[1]:
                child.stored = frame[2]
        elif kind == "claimed":
            if child.current is not None and child.current_seq == frame[1]:
                child.claim, child.fired = (frame[2], frame[3]), bool(frame[4])
        elif kind == "sent":
            if child.current is not None and child.current_seq == frame[1]:
                child.sent = frame[2]
        elif kind == "followed":
            if child.current is not None and child.current_seq == frame[1]:
                child.followed = True
        elif kind == "skipped":  # withdrawn before it started
            job = self._take_queued(child, frame[1])
            if job is not None:
                # It will not run there: its slot counts toward max_tasks_per_child no more
                # (or a child holding only withdrawn jobs never reaches its limit, never
                # exits, and is never given work again; issue 13 #1).
                child.taken -= 1
                self.on_unstarted(job)
        elif kind == "ready":
            child.said_ready()
            self._early_deaths = 0
            self.stats["ready"] += 1
            if self._active() < self.target:
                self._maintain()
            if not child.retiring and self.on_capacity is not None:
                self.on_capacity()
        elif kind == "exiting":
            # Recycled: it reads nothing more, so everything it holds goes back.
            self.stats[f"recycled_{frame[1]}"] += 1
            logger.debug("pool child %s recycled (%s)", child.label, frame[1])
            given = self._retire(child, everything=True)
            if child.group is not None:  # the process goes: its other slots finish and go
                for sibling in child.group.slots:
                    if sibling is not child and not sibling.retiring and not sibling.dead:
                        given += self._retire(sibling)
            try:
                self._maintain()
            finally:
                _call_all((self.on_unstarted, (job,)) for job in given)

    def _take_queued(self, child: Child, seq: int) -> Job | None:
        queued = child.queued
        if queued and queued[0][0] == seq:
            return queued.popleft()[1]
        for item in queued:  # not expected: children run jobs in the order written
            if item[0] == seq:
                queued.remove(item)
                return item[1]
        logger.error("pool child %d started a job it was not given", child.pid)
        return None

    # -- time limits --------------------------------------------------------------------------
    # One armed timer per child at a time, re-armed when it fires, instead of a timer per job
    # cancelled at ``done``: cancelled kombu timers stay queued until their time comes.
    def _start_limits(self, child: Child, job: Job) -> None:
        now = self.clock()
        child.soft_at = now + job.soft_time_limit if job.soft_time_limit else 0.0
        child.hard_at = now + job.time_limit if job.time_limit else 0.0
        self._arm(child)

    def _arm(self, child: Child) -> None:
        due = min(t for t in (child.soft_at, child.hard_at) if t)
        if child.alarm_at and child.alarm_at <= due:
            return  # an earlier alarm is armed; it re-arms for this one
        child.alarm_at = due
        # A delay, not call_at(due): the hub's timers run on time.monotonic, ``due`` on the
        # pool's clock.
        self.hub.call_later(max(0.0, due - self.clock()), self._on_alarm, child)

    def _on_alarm(self, child: Child) -> None:
        now = self.clock() + 0.001
        if child.alarm_at and child.alarm_at <= now:
            child.alarm_at = 0.0
        job = child.current
        if child.reaped or job is None:
            return
        if child.soft_at and child.soft_at <= now:
            child.soft_at = 0.0
            # It may have ended just in time, and be running its next job already (``fast``):
            # a signal sent now would interrupt that one.
            child.reader.read_available()
            self._handle_frames(child)
            if child.current is not job or child.reaped:
                return
            logger.warning("soft time limit (%ss) exceeded for %s[%s]", job.soft_time_limit,
                           job.name, job.id)
            self._signal(child, child.soft_signal)
        if child.hard_at and child.hard_at <= now:
            child.reader.read_available()  # it may have finished just in time
            self._handle_frames(child)
            if child.current is job and not child.reaped:
                child.hard_at = 0.0
                logger.error("hard time limit (%ss) exceeded for %s[%s]: killing pool child %d",
                             job.time_limit, job.name, job.id, child.pid)
                child.kill_reason = TimeLimitExceeded(job.time_limit)
                self._kill(child)
            return
        if child.soft_at or child.hard_at:
            self._arm(child)

    # -- a child died -------------------------------------------------------------------------
    def _on_pidfd(self, child: Child) -> None:
        self._unwatch(child.pidfd)  # readable for good from now on
        self._try_reap(child)

    def _poll_exit(self, child: Child) -> bool:
        """Reap it if it has exited; True when it had."""
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else: the status is lost
            pid, status = child.pid, -1
        if pid == 0:
            return False
        if child.group is not None:
            self._on_group_dead(child.group, None if status == -1 else status)
        else:
            self._on_dead(child, None if status == -1 else status)
        return True

    def _on_group_dead(self, group: ChildGroup, status: int | None) -> None:
        """A threaded child exited: every slot of it is dead. Their last events are read
        before any is judged (a job one slot started makes the death its doing, not that of
        jobs the others were only reading), and they leave ``children`` together, so one
        replacement is forked for them all."""
        group.reaped, group.status = True, status
        slots = [s for s in group.slots if not s.reaped]
        for slot in slots:
            self.children.pop(slot.key, None)
        for slot in slots:
            if not slot.reader.eof:
                slot.reader.read_available()
            self._handle_frames(slot)
        ran = any(s.current is not None for s in slots)
        for n, slot in enumerate(slots):
            self._on_dead(slot, status, siblings_ran=ran, counts=n == 0)

    def _try_reap(self, child: Child) -> None:
        if child.reaped or self._poll_exit(child):
            return
        # EOF (or even the pidfd) can come a moment before the exit status: poll, backing off.
        child.reap_delay = min(REAP_POLL_MAX, max(0.001, child.reap_delay * 2))
        if not child.reap_scheduled:
            child.reap_scheduled = True
            self.hub.call_later(child.reap_delay, self._reap_poll, child)

    def _reap_poll(self, child: Child) -> None:
        child.reap_scheduled = False
        self._try_reap(child)

    def _on_dead(self, child: Child, status: int | None, *, cold: bool = False,
                 siblings_ran: bool = False, counts: bool = True) -> None:
        """Handle a child's exit. For a slot of a threaded child: ``siblings_ran``, one of its
        slots had started a job (the likely cause: no job another slot was reading is
        suspected), ``counts``, this slot's death counts toward the restart storm (the
        first slot of the process does, the others do not)."""
        if child.reaped:
            return
        child.reaped = True  # never signalled again (its pid may be reused)
        self.children.pop(child.key, None)  # no new job while its events are read
        try:
            # Its last started/done may be in the pipe: read until EAGAIN (never wait for
            # EOF: a process the task forked may hold the write end). These last events
            # still move its state (``ready``, ``exiting``): it is DEAD only after them.
            if not child.reader.eof:
                child.reader.read_available()
            self._handle_frames(child)
        finally:
            self._close_fds(child)
            ready, retiring = child.ready, child.retiring
            child.move(ChildState.DEAD)
        job, child.current = child.current, None
        unwritten = set(child.pending.take())
        # The job it was reading (written whole, first in line) when it died on its own:
        # a poison message, or a child that cannot run jobs at all (issue 13 #4).
        suspect = (child.queued[0][1] if child.queued and job is None and not cold
                   and ready and not siblings_ran and child.queued[0][0] not in unwritten
                   and not _killed_from_outside(child, status)
                   and not (retiring and status == 0) else None)
        unstarted = [queued for _, queued in child.queued]
        child.queued.clear()
        how = describe_exit(status)
        calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        if job is not None and not cold:
            calls.append(self._lost_running(child, job, status, how))
        elif cold:
            pass
        elif not ready and _killed_from_outside(child, status):
            # The OOM killer, an operator or a chaos run: not a child that cannot start, so
            # no reason to hold back its replacement (each death is one fork, never a loop).
            if counts:
                logger.warning("pool child %d was killed before it was ready (%s)", child.pid,
                               how)
        elif not ready:
            if counts:
                self._early_deaths += 1
                logger.error("pool child %d exited before it was ready (%s)", child.pid, how)
        elif suspect is not None:
            if child.current_seq < 0 and counts:  # it never started a job: restarts back off
                self._unstarted_deaths += 1
            if self._failed_start(child, suspect, how):
                unstarted.remove(suspect)
                calls.append((self.on_lost, (suspect, WorkerLostError(
                    f"Worker exited prematurely: {how} Job: {suspect.id}; pool children died "
                    f"{suspect.start_failures} times reading this job before it started "
                    f"(task_max_redeliveries={self.app.conf.task_max_redeliveries}): given "
                    "up"))))
        elif counts and (not retiring or (status is not None and status != 0)):
            logger.warning("pool child %d exited (%s)", child.pid, how)
        calls.extend((self.on_unstarted, (queued,)) for queued in unstarted)
        try:
            _call_all(calls)
        finally:
            if not cold:
                self._maintain()

    def _lost_running(self, child: Child, job: Job, status: int | None, how: str
                      ) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """What to report for the job a dead child had started."""
        exc = child.kill_reason
        if exc is None and job.time_limit and status is not None and os.WIFSIGNALED(status) \
                and os.WTERMSIG(status) == signal.SIGALRM:
            # The child's own backstop: this process did not kill it at the hard limit.
            logger.error("pool child %d stopped %s[%s] itself, past its hard time limit "
                         "(%ss): this process did not in time", child.pid, job.name, job.id,
                         job.time_limit)
            exc = TimeLimitExceeded(job.time_limit)
        if exc is None:
            exc = WorkerLostError(f"Worker exited prematurely: {how} Job: {job.id}.")
        if child.stored is not None:
            # Its outcome was stored before it died (sending callbacks, say): that is the
            # end. Failing it now would overwrite the stored result; requeueing it would run
            # it (and its chain) twice (issue 13 #9).
            # Before it said ``followed``: what follows the outcome (its chord part, the next
            # chain step, callbacks) may not have been sent; the worker sends it (issue 15).
            logger.warning("pool child %d died (%s) after %s[%s] stored %s: kept%s", child.pid,
                           how, job.name, job.id, child.stored,
                           "" if child.followed else "; the worker sends what follows it")
            return self.on_done, (job, JobResult(child.stored,
                                                 summary=f"stored; then its process: {exc}",
                                                 follow_up=not child.followed,
                                                 claim=child.claim, sent=child.sent,
                                                 fired=child.fired))
        self.stats["lost"] += 1
        logger.debug("pool child %d died (%s) running %s[%s]", child.pid, how, job.name,
                     job.id)
        if child.storing:
            return self._settle_after_store, (job, exc)
        return self.on_lost, (job, exc)

    def _settle_after_store(self, job: Job, exc: BaseException) -> None:
        """The child died while it stored the outcome: done if the store got through, lost
        if not. The backend is asked from a thread (the loop never waits on a backend)."""
        backend = self.app.backend
        from taskq.backends.rpc import RPCBackend

        if not backend.persistent or isinstance(backend, RPCBackend):
            self.on_lost(job, exc)  # nothing to look up: replies are messages
            return
        self._settling.add(job)

        def look_up() -> None:
            state: str | None = None
            try:
                state = backend.get_task_meta(job.id)["status"]
            except Exception as err:
                logger.warning("could not read the stored state of %s[%s]: %s", job.name,
                               job.id, err)
            self.loop.post(self._settled, job, exc, state)

        threading.Thread(target=look_up, name="taskq-pool-settle", daemon=True).start()

    def _settled(self, job: Job, exc: BaseException, state: str | None) -> None:
        if job not in self._settling:
            return  # terminated meanwhile
        self._settling.discard(job)
        if state in states.READY_STATES:
            logger.warning("%s[%s] stored %s before its pool child died: kept", job.name,
                           job.id, state)
            self.on_done(job, JobResult(state, summary=f"stored; then its process: {exc}",
                                        follow_up=True))
        else:
            self.on_lost(job, exc)

    def _failed_start(self, child: Child, job: Job, how: str) -> bool:
        """Count a death of a child that held ``job``, unstarted; True: give the job up."""
        failures = self._start_failures.pop(job.id, 0) + 1
        job.start_failures = failures
        limit = self.app.conf.task_max_redeliveries
        logger.error("pool child %d died (%s) reading %s[%s], before it started it (%d of "
                     "%d times allowed)", child.pid, how, job.name, job.id, failures, limit + 1)
        if failures > limit:
            self.stats["unstartable"] += 1
            return True
        if len(self._start_failures) >= 10_000:  # jobs that never came back: forget the oldest
            del self._start_failures[next(iter(self._start_failures))]
        self._start_failures[job.id] = failures
        return False

    def _close_fds(self, child: Child) -> None:
        for fd in (child.event_fd, child.pidfd, child.job_fd):
            if fd >= 0:
                self._unwatch(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        child.event_fd = child.pidfd = child.job_fd = -1
        child.writing = False
        child.reader.eof = True  # its fd number may be reused now: never read it again

    # -- retiring -----------------------------------------------------------------------------
    def _retire(self, child: Child, *, everything: bool = False) -> list[Job]:
        """Close its job pipe (it exits at EOF, after the jobs written to it whole) and return
        the jobs it will never read: those not wholly written, or all when ``everything``."""
        child.retire()
        child.retired_at = self.clock()
        unwritten = set(child.pending.take())
        if everything:
            given = [job for _, job in child.queued]
            child.queued.clear()
        else:
            given = [job for seq, job in child.queued if seq in unwritten]
            if given:
                child.queued = collections.deque(
                    item for item in child.queued if item[0] not in unwritten)
        if child.job_fd >= 0:
            if child.writing:
                child.writing = False
                self._unwatch(child.job_fd)
            with contextlib.suppress(OSError):
                os.close(child.job_fd)
            child.job_fd = -1
        return given

    def stop(self) -> None:
        """Warm: no new jobs; children finish what was written to them, then exit."""
        if self.stopping:
            return
        self.stopping = True
        if self._spawn_timer is not None:
            self._spawn_timer.cancel()
            self._spawn_timer = None
        given: list[Job] = []
        for child in list(self.children.values()):
            given += self._retire(child)
        _call_all((self.on_unstarted, (job,)) for job in given)

    def is_idle(self) -> bool:
        return not self._settling and not any(c.current is not None or c.queued
                                              for c in self.children.values())

    def terminate(self) -> None:
        """Cold: SIGKILL the children (idle retiring ones get a moment to exit on their own),
        reap them; jobs they had not started go back, started ones are not reported lost."""
        if self.terminated:
            return
        self.terminated = self.stopping = True
        for entry in (self._spawn_timer, self._housekeeping):
            if entry is not None:
                entry.cancel()
        self._spawn_timer = self._housekeeping = None
        self._settling.clear()  # like the started jobs below: not reported
        children = list(self.children.values())
        given: list[Job] = []
        for child in children:
            given += self._retire(child)
            if child.current is not None or child.queued:
                self._kill(child)
        statuses: dict[int, int | None] = {}
        start = time.monotonic()  # a wait on real processes, in real time
        waiting = {c.pid: c for c in children}
        while waiting:
            for pid in list(waiting):
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done, status = pid, -1
                if done:
                    statuses[pid] = None if status == -1 else status
                    del waiting[pid]
            elapsed = time.monotonic() - start
            if not waiting or elapsed > TERMINATE_TIMEOUT:
                break
            if elapsed > TERMINATE_GRACE:
                for child in waiting.values():
                    if not child.killed:
                        self._kill(child)
            time.sleep(0.001)
        for pid in waiting:
            logger.warning("pool child %d did not exit after SIGKILL; leaving it", pid)
        calls = [(self.on_unstarted, (job,)) for job in given]
        for child in children:
            try:
                self._on_dead(child, statuses.get(child.pid), cold=True)
            except Exception:
                logger.exception("while cleaning up pool child %d", child.pid)
        _call_all(calls)

    def terminate_job(self, job: Job, signum: int) -> None:
        """revoke(terminate=True): signal the child running ``job`` (if it still is)."""
        for child in self.children.values():
            if child.current is job:
                self._signal(child, signum)
                return

    # -- introspection and control ------------------------------------------------------------
    def active(self) -> list[Job]:
        return [c.current for c in self.children.values() if c.current is not None]

    def pids(self) -> list[int]:
        return sorted({c.pid for c in self.children.values()})

    def size(self) -> int:
        return self.target

    def grow(self, n: int = 1) -> None:
        if n < 1:
            return
        self.target += n
        self.concurrency = self.target
        self._maintain()

    def shrink(self, n: int = 1) -> None:
        """Retire ``n`` children (never the last one): starting or idle ones first."""
        n = min(n, self.target - 1)
        if n < 1:
            return
        self.target -= n
        self.concurrency = self.target
        active = [c for c in self.children.values() if not c.retiring and not self._spent(c)]
        active.sort(key=lambda c: (c.ready, c.load()))
        given: list[Job] = []
        for child in active[:max(0, len(active) - self.target)]:
            given += self._retire(child)
        _call_all((self.on_unstarted, (job,)) for job in given)

    def restart(self, modules: Sequence[str] = (), reload: bool = False) -> None:
        """Replace every child, each after its current job; with ``reload``, reload
        ``modules`` in this process first so the new children fork with the new code."""
        for name in modules:
            module = sys.modules.get(name) or importlib.import_module(name)
            if reload:
                importlib.reload(module)
        given: list[Job] = []
        for child in list(self.children.values()):
            if not child.retiring:
                given += self._retire(child)
        _call_all((self.on_unstarted, (job,)) for job in given)
        self._maintain()

    def autoscale(self, max_size: int, min_size: int) -> None:
        """Keep between ``min_size`` and ``max_size`` children; ``autoscale_tick`` adjusts."""
        if not 1 <= min_size <= max_size:
            raise ValueError(f"autoscale needs 1 <= min <= max, got max={max_size} "
                             f"min={min_size}")
        self.autoscale_bounds = (min_size, max_size)
        if self.target < min_size:
            self.grow(min_size - self.target)
        elif self.target > max_size:
            self.shrink(self.target - max_size)

    def autoscale_tick(self, backlog: int) -> None:
        """Called about once a second by the worker with the number of jobs waiting."""
        if self.autoscale_bounds is None or self.stopping:
            return
        low, high = self.autoscale_bounds
        busy = sum(1 for c in self.children.values() if c.current is not None)
        if backlog and self.target < high:
            self.grow(min(backlog, high - self.target))
            self._idle_since = None
        elif not backlog and busy < self.target and self.target > low:
            now = self.clock()
            if self._idle_since is None:
                self._idle_since = now
            elif now - self._idle_since >= AUTOSCALE_KEEPALIVE:
                self.shrink(1)
                self._idle_since = now
        else:
            self._idle_since = None

    def info(self) -> dict[str, Any]:
        children = list(self.children.values())
        return {
            "kind": self.kind,
            "optimization": self.optimization,
            "target": self.target,
            "processes": self.pids(),
            "threads": self.threads,
            "max_tasks_per_child": self.max_tasks,
            "max_memory_per_child": self.max_memory,
            "queued": sum(len(c.queued) for c in children),
            "writes_pending": sum(len(c.pending) for c in children),
            "children": {
                c.label: {"ready": c.ready, "retiring": c.retiring, "tasks": c.tasks,
                             "queued": len(c.queued),
                             "running": c.current.id if c.current is not None else None}
                for c in children
            },
            **self.stats,
        }
