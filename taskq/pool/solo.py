"""The solo pool: tasks run in the main process, one at a time, blocking the loop meanwhile.

For debugging and for platforms without fork. Time limits are not enforced here.

Nothing else happens on the loop while a task runs: no timer fires, no ack is flushed on a
tick. So the worker settles acks at once with this pool (``blocks_loop``), and ``keepalive``
(the consumer's lease renewal, set by the worker) is called from a thread while a task runs:
a task longer than the broker's lease keeps it (DESIGN.md, Known traps).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskq.pool.base import Job, Pool, run_job

if TYPE_CHECKING:
    from taskq.worker.loop import Loop


logger = logging.getLogger("taskq.pool")

KEEPALIVE_INTERVAL = 0.2  # how often keepalive is offered; it renews only when renewal is due


class SoloPool(Pool):
    kind = "solo"
    blocks_loop = True  # the worker sets ``keepalive`` for it

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
        stop = threading.Event()
        keeper = None
        if self.keepalive is not None:
            keeper = threading.Thread(target=self._keep_alive, args=(self.keepalive, stop),
                                      name="taskq-solo-keepalive", daemon=True)
            keeper.start()
        try:
            result = run_job(self.app, job, self.hostname)
        finally:
            stop.set()
            if keeper is not None:
                keeper.join()  # the loop's thread owns the connection again from here
            self._running = None
        self.on_done(job, result)

    @staticmethod
    def _keep_alive(keepalive: Callable[[], None], stop: threading.Event) -> None:
        while not stop.wait(KEEPALIVE_INTERVAL):
            try:
                keepalive()
            except Exception:  # never let the keeper die while the task runs
                logger.exception("keeping the broker's leases alive during a task failed")

    def active(self) -> list[Job]:
        return [self._running] if self._running is not None else []

    def stop(self) -> None:
        self._stopped = True

    def terminate(self) -> None:
        self._stopped = True

    def pids(self) -> list[int]:
        return [os.getpid()]
