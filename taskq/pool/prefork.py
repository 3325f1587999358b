"""The prefork pool: one child process per slot, one pipe pair per child, driven by the loop.

- Jobs go down each child's own job pipe with non-blocking, buffered writes; events
  (``ready``, ``started``, ``done``, ``exiting``) come back on its event pipe.
- Each child's pidfd is a reader in the loop: a death is seen at once. Its event pipe is read
  until empty first (the last ``started``/``done`` may be there), then the job it had started
  is reported lost (``WorkerLostError`` naming the signal or exit code, or
  ``TimeLimitExceeded`` after a hard limit), jobs it held but never started go back to the
  worker (``on_unstarted``), and a replacement is forked.
- ``-O fair`` writes only to idle children; ``-O fast`` lets each child hold
  ``worker_fast_queue_depth`` jobs besides the one it runs.
- Soft time limit: SIGUSR1 to the child (``SoftTimeLimitExceeded`` in the task). Hard limit:
  SIGKILL. Both timers start when ``started`` is read.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskq.errors import TimeLimitExceeded, WorkerLostError
from taskq.pool.base import Job, JobResult, Pool
from taskq.pool.child import child_main
from taskq.pool.ipc import FrameReader, FrameWriter, encode

if TYPE_CHECKING:
    from taskq.worker.loop import Loop

logger = logging.getLogger("taskq.pool.prefork")

READY_TIMEOUT = 10.0
STORM_WINDOW = 10.0     # seconds in which early deaths are counted
STORM_LIMIT = 3         # early deaths in the window before spawning slows down
STORM_MAX_DELAY = 10.0


@dataclass(eq=False)
class Child:
    pid: int
    pidfd: int
    job_fd: int
    event_fd: int
    writer: FrameWriter
    reader: FrameReader
    spawned_at: float
    ready: bool = False
    retiring: bool = False
    queued: collections.deque[Job] = field(default_factory=collections.deque)
    current: Job | None = None
    hard_limited: bool = False
    timers: list[Any] = field(default_factory=list)
    tasks: int = 0
    writing: bool = False

    def load(self) -> int:
        return len(self.queued) + (1 if self.current is not None else 0)


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"signal {signum} ({name})"
    if os.WIFEXITED(status):
        return f"exitcode {os.WEXITSTATUS(status)}"
    return f"status {status}"


class PreforkPool(Pool):
    kind = "prefork"

    def __init__(self, *args: Any, use_pidfd: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        conf = self.app.conf
        self.optimization = conf.worker_optimization
        self.depth = max(int(conf.worker_fast_queue_depth), 1)
        self.max_tasks = conf.worker_max_tasks_per_child
        self.max_memory = conf.worker_max_memory_per_child
        self.use_pidfd = use_pidfd and hasattr(os, "pidfd_open")
        self.children: dict[int, Child] = {}
        self.target = self.concurrency
        self.stopping = False
        self._early_deaths: collections.deque[float] = collections.deque()
        self._spawn_pending = 0
        self.stats: collections.Counter[str] = collections.Counter()
        self.parent_pid = os.getpid()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self, loop: Loop) -> None:
        self.loop = loop
        self.clock = loop.clock
        for _ in range(self.target):
            self._spawn()

    def _spawn(self) -> None:
        job_r, job_w = os.pipe2(os.O_CLOEXEC)
        event_r, event_w = os.pipe2(os.O_CLOEXEC)
        pid = os.fork()
        if pid == 0:  # the child
            os.close(job_w)
            os.close(event_r)
            child_main(self.app, self.parent_pid, job_r, event_w, hostname=self.hostname,
                       max_tasks=self.max_tasks, max_memory_kib=self.max_memory)
        os.close(job_r)
        os.close(event_w)
        os.set_blocking(job_w, False)
        os.set_blocking(event_r, False)
        pidfd = os.pidfd_open(pid) if self.use_pidfd else -1
        child = Child(pid=pid, pidfd=pidfd, job_fd=job_w, event_fd=event_r,
                      writer=FrameWriter(job_w), reader=FrameReader(event_r),
                      spawned_at=self.clock())
        self.children[pid] = child
        hub = self.loop.hub
        hub.add_reader(event_r, self._on_events, child)
        if pidfd >= 0:
            hub.add_reader(pidfd, self._on_exit, child)
        child.timers.append(hub.call_later(READY_TIMEOUT, self._ready_timeout, child))
        self.stats["spawned"] += 1

    def _ready_timeout(self, child: Child) -> None:
        if not child.ready and child.pid in self.children:
            logger.error("pool child %d not ready after %.0f s: killing it", child.pid,
                         READY_TIMEOUT)
            self._signal(child, signal.SIGKILL)

    def _signal(self, child: Child, signum: int) -> None:
        try:
            if child.pidfd >= 0:
                signal.pidfd_send_signal(child.pidfd, signum)
            else:
                os.kill(child.pid, signum)
        except ProcessLookupError:
            pass

    # -- scheduling ---------------------------------------------------------------------------
    def _candidates(self) -> list[Child]:
        return [c for c in self.children.values() if c.ready and not c.retiring]

    def _pick(self) -> Child | None:
        best: Child | None = None
        for child in self._candidates():
            load = child.load()
            if self.optimization == "fair":
                if load == 0:
                    return child
                continue
            if load <= self.depth and (best is None or load < best.load()):
                best = child
        return best

    def can_accept(self) -> bool:
        return not self.stopping and self._pick() is not None

    def apply(self, job: Job) -> None:
        child = self._pick()
        if child is None:  # the worker asks can_accept() first; be safe anyway
            self.on_unstarted(job)
            return
        child.queued.append(job)
        child.writer.queue(encode(("job", id(job), job.msg, dict(job.delivery_info))))
        self._flush(child)

    def _flush(self, child: Child) -> None:
        try:
            empty = child.writer.flush()
        except OSError:  # EPIPE: the child is dying; its pidfd will tell us
            return
        if not empty and not child.writing:
            child.writing = True
            self.loop.hub.add_writer(child.job_fd, self._on_writable, child)
        elif empty and child.writing:
            child.writing = False
            self.loop.hub.remove_writer(child.job_fd)

    def _on_writable(self, child: Child) -> None:
        self._flush(child)

    # -- events from children -----------------------------------------------------------------
    def _on_events(self, child: Child) -> None:
        child.reader.read_available()
        for frame in child.reader.frames():
            self._handle(child, frame)
        if child.reader.eof and not self.use_pidfd:
            self._on_exit(child)  # the fallback: EOF on the event pipe means it is gone

    def _handle(self, child: Child, frame: tuple[Any, ...]) -> None:
        kind = frame[0]
        if kind == "started":
            job = self._take_queued(child, frame[1])
            if job is None:
                return
            child.current = job
            job.pid = child.pid
            self._start_timers(child, job)
            self.on_started(job, child.pid)
        elif kind == "done":
            job = child.current
            if job is None or id(job) != frame[1]:
                return
            self._cancel_timers(child)
            child.current = None
            child.tasks += 1
            result: JobResult = frame[2]
            self.on_done(job, result)
            self._after_job(child)
        elif kind == "ready":
            child.ready = True
            self._cancel_timers(child)
            self.stats["ready"] += 1
        elif kind == "exiting":
            child.retiring = True
            logger.debug("pool child %d retiring: %s", child.pid, frame[1])
            self._give_back_queued(child)

    def _take_queued(self, child: Child, job_key: int) -> Job | None:
        for job in child.queued:
            if id(job) == job_key:
                child.queued.remove(job)
                return job
        return None

    def _after_job(self, child: Child) -> None:
        if self.stopping and child.load() == 0:
            self._retire(child)

    def _give_back_queued(self, child: Child) -> None:
        while child.queued:
            self.on_unstarted(child.queued.popleft())

    def _start_timers(self, child: Child, job: Job) -> None:
        hub = self.loop.hub
        if job.soft_time_limit:
            child.timers.append(hub.call_later(job.soft_time_limit, self._soft_limit, child, job))
        if job.time_limit:
            child.timers.append(hub.call_later(job.time_limit, self._hard_limit, child, job))

    def _cancel_timers(self, child: Child) -> None:
        for entry in child.timers:
            entry.cancel()
        child.timers.clear()

    def _soft_limit(self, child: Child, job: Job) -> None:
        if child.current is job:
            logger.warning("task %s[%s] passed its soft time limit (%.1f s)", job.name, job.id,
                           job.soft_time_limit or 0)
            self._signal(child, signal.SIGUSR1)

    def _hard_limit(self, child: Child, job: Job) -> None:
        if child.current is job:
            logger.error("task %s[%s] passed its hard time limit (%.1f s): killing child %d",
                         job.name, job.id, job.time_limit or 0, child.pid)
            child.hard_limited = True
            self._signal(child, signal.SIGKILL)

    # -- a child died -------------------------------------------------------------------------
    def _on_exit(self, child: Child) -> None:
        if self.children.pop(child.pid, None) is None:
            return
        # Its last started/done may still be in the pipe: read until empty, never to EOF.
        child.reader.read_available()
        for frame in child.reader.frames():
            self._handle(child, frame)
        status = self._reap(child)
        self._cancel_timers(child)
        hub = self.loop.hub
        for fd in (child.event_fd, child.pidfd, child.job_fd):
            if fd >= 0:
                try:
                    hub.remove(fd)
                except (KeyError, ValueError, OSError):
                    pass
                try:
                    os.close(fd)
                except OSError:
                    pass
        how = _describe_exit(status) if status is not None else "unknown status"
        job = child.current
        if job is not None:
            self.stats["lost"] += 1
            if child.hard_limited:
                exc: BaseException = TimeLimitExceeded(job.time_limit)
            else:
                exc = WorkerLostError(f"Worker exited prematurely: {how} Job: {job.id}")
            self.on_lost(job, exc)
        self._give_back_queued(child)
        if not child.ready:
            self._note_early_death(child, how)
        elif not child.retiring and job is None:
            logger.debug("pool child %d exited (%s)", child.pid, how)
        if not self.stopping and len(self.children) + self._spawn_pending < self.target:
            self._schedule_spawn()

    def _reap(self, child: Child) -> int | None:
        for _ in range(3):
            try:
                pid, status = os.waitpid(child.pid, os.WNOHANG if self.use_pidfd else 0)
            except ChildProcessError:
                return None
            if pid:
                return status
            time.sleep(0)  # the pidfd said it exited; the status is a moment away
        try:
            return os.waitpid(child.pid, 0)[1]
        except ChildProcessError:
            return None

    def _note_early_death(self, child: Child, how: str) -> None:
        now = self.clock()
        self._early_deaths.append(now)
        while self._early_deaths and self._early_deaths[0] < now - STORM_WINDOW:
            self._early_deaths.popleft()
        logger.error("pool child %d died before it was ready (%s)", child.pid, how)

    def _schedule_spawn(self) -> None:
        storm = len(self._early_deaths) >= STORM_LIMIT
        if not storm:
            self._spawn()
            return
        delay = min(STORM_MAX_DELAY, 0.5 * 2 ** (len(self._early_deaths) - STORM_LIMIT))
        logger.warning("pool children keep dying before they are ready: next start in "
                       "%.1f s", delay)
        self._spawn_pending += 1
        self.loop.hub.call_later(delay, self._delayed_spawn)

    def _delayed_spawn(self) -> None:
        self._spawn_pending -= 1
        if not self.stopping and len(self.children) + self._spawn_pending < self.target:
            self._spawn()

    # -- control ------------------------------------------------------------------------------
    def _retire(self, child: Child) -> None:
        """Close its job pipe: the child exits once it has nothing left to run."""
        child.retiring = True
        if child.writing:
            child.writing = False
            try:
                self.loop.hub.remove_writer(child.job_fd)
            except (KeyError, ValueError, OSError):
                pass
        try:
            os.close(child.job_fd)
        except OSError:
            pass
        child.job_fd = -1

    def stop(self) -> None:
        self.stopping = True
        for child in list(self.children.values()):
            self._give_back_queued(child)
            if child.current is None:
                self._retire(child)

    def is_idle(self) -> bool:
        return all(c.current is None for c in self.children.values())

    def terminate(self) -> None:
        self.stopping = True
        for child in list(self.children.values()):
            self._signal(child, signal.SIGKILL)
        for child in list(self.children.values()):
            self._give_back_queued(child)
            child.current = None  # the worker is exiting: no WorkerLostError for these
            self._on_exit(child)

    def terminate_job(self, job: Job, signum: int) -> None:
        for child in self.children.values():
            if child.current is job:
                self._signal(child, signum)

    def active(self) -> list[Job]:
        return [c.current for c in self.children.values() if c.current is not None]

    def pids(self) -> list[int]:
        return sorted(self.children)

    def size(self) -> int:
        return self.target

    def pool_grow(self, n: int = 1) -> None:
        self.target += n
        for _ in range(n):
            self._spawn()

    def pool_shrink(self, n: int = 1) -> None:
        n = min(n, self.target - 1)
        self.target -= n
        idle_first = sorted(self.children.values(), key=lambda c: c.load())
        for child in idle_first[:n]:
            self._give_back_queued(child)
            if child.current is None:
                self._retire(child)
            else:
                child.retiring = True

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "optimization": self.optimization,
            "target": self.target,
            "children": {str(c.pid): {"ready": c.ready, "tasks": c.tasks, "queued": len(c.queued),
                                      "busy": c.current is not None}
                         for c in self.children.values()},
            **{k: v for k, v in self.stats.items()},
        }
