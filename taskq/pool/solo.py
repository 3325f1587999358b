"""The solo pool: tasks run in the main process, one at a time, blocking the loop meanwhile.

For debugging and for platforms without fork. Time limits are not enforced here.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from taskq.pool.base import Job, Pool, run_job

if TYPE_CHECKING:
    from taskq.worker.loop import Loop


class SoloPool(Pool):
    kind = "solo"

    def start(self, loop: Loop) -> None:
        self._loop = loop
        self._running: Job | None = None
        self._stopped = False

    def can_accept(self) -> bool:
        return not self._stopped and self._running is None

    def apply(self, job: Job) -> None:
        # Run from a fresh loop iteration, never inside the consumer's message callback:
        # the broker connection must not be re-entered while a task runs.
        self._running = job
        self._loop.call_soon(self._run, job)

    def _run(self, job: Job) -> None:
        job.pid = os.getpid()
        self.on_started(job, job.pid)
        try:
            result = run_job(self.app, job, self.hostname)
        finally:
            self._running = None
        self.on_done(job, result)

    def active(self) -> list[Job]:
        return [self._running] if self._running is not None else []

    def stop(self) -> None:
        self._stopped = True

    def terminate(self) -> None:
        self._stopped = True

    def pids(self) -> list[int]:
        return [os.getpid()]
