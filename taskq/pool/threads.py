"""The threads pool: tasks run in a fixed set of threads of the main process.

Results reach the event loop through ``Loop.post`` (a FIFO wakeup), so ``started`` is always
handled before ``done`` for a job. Time limits are not enforced here (threads cannot be
interrupted safely); use the prefork pool for them.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

from taskq.pool.base import Job, JobResult, Pool, run_job

if TYPE_CHECKING:
    from taskq.worker.loop import Loop

_STOP = None


class ThreadPool(Pool):
    kind = "threads"

    def start(self, loop: Loop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._busy: dict[int, Job] = {}   # thread ident -> job (written in the loop thread)
        self._queued = 0
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, name=f"taskq-pool-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def can_accept(self) -> bool:
        return not self._stopped and self._queued + len(self._busy) < self.concurrency

    def apply(self, job: Job) -> None:
        self._queued += 1
        self._jobs.put(job)

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            self._loop.post(self._started, job, ident)
            try:
                result = run_job(self.app, job, self.hostname)
            except BaseException as exc:  # the task's own errors are in the result already
                self._loop.post(self._lost, job, ident, exc)
                continue
            self._loop.post(self._done, job, ident, result)

    def _started(self, job: Job, ident: int) -> None:
        self._queued -= 1
        self._busy[ident] = job
        job.pid = ident
        self.on_started(job, ident)

    def _done(self, job: Job, ident: int, result: JobResult) -> None:
        self._busy.pop(ident, None)
        self.on_done(job, result)

    def _lost(self, job: Job, ident: int, exc: BaseException) -> None:
        self._busy.pop(ident, None)
        self.on_lost(job, exc)

    def active(self) -> list[Job]:
        return list(self._busy.values())

    def is_idle(self) -> bool:
        return not self._busy and self._queued == 0

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for _ in self._threads:
            self._jobs.put(_STOP)

    def terminate(self) -> None:
        self.stop()  # threads cannot be killed; they are daemons and die with the process
