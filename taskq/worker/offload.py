"""Blocking calls the main loop must not make itself, run on a small thread instead.

DESIGN.md: nothing in the main process waits on I/O without a bound, and hard time limits,
heartbeats and lease renewal all run on the loop. A result-backend write (Redis: a 10 s socket
timeout with a retry; SQLite: a 30 s busy timeout), a republish through the producer pool or a
statedb fsync can each take far longer than that, so the worker hands them to an ``Offload``:
one daemon thread working through a bounded FIFO. ``then(outcome)`` runs back on the loop
(through ``Loop.post``) once the call returned or raised, so whatever must come *after* the
call (an ack after a stored state) still comes after it, and still runs on the loop.

A full queue is said in the log and the call is refused (``submit`` returns False): the
caller degrades in a way the delivery table allows. One thread per lane keeps the calls of a
lane in order; a stalled backend does not hold up the broker lane.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskq.worker.loop import Loop

logger = logging.getLogger("taskq.worker.offload")

DEFAULT_MAXSIZE = 10_000


@dataclass(frozen=True)
class Outcome:
    """What an offloaded call did: its value, or the exception it raised."""

    value: Any = None
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


Then = Callable[[Outcome], None]


class Offload:
    """One lane: a daemon thread running submitted calls in order, results posted back."""

    def __init__(self, loop: Loop, name: str, *, maxsize: int = DEFAULT_MAXSIZE) -> None:
        self.loop = loop
        self.name = name
        self.maxsize = maxsize
        self._queue: collections.deque[tuple[str, Callable[[], Any], Then | None]] = (
            collections.deque())
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._closed = False
        self._completions: collections.deque[tuple[Then, Outcome]] = collections.deque()
        self._full_logged = 0.0
        self.refused = 0

    def __repr__(self) -> str:
        return f"<Offload {self.name}: {len(self._queue)} queued>"

    def submit(self, what: str, fn: Callable[[], Any], then: Then | None = None) -> bool:
        """Run ``fn()`` on the lane's thread, then ``then(outcome)`` on the loop. False (and
        nothing runs) when the lane is full or closed."""
        with self._cond:
            if self._closed or len(self._queue) >= self.maxsize:
                self.refused += 1
                now = time.monotonic()
                if now - self._full_logged >= 5.0:
                    self._full_logged = now
                    logger.error("%s lane full (%d calls waiting; %d refused so far): not "
                                 "%s", self.name, len(self._queue), self.refused, what)
                return False
            self._queue.append((what, fn, then))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name=f"taskq-offload-{self.name}")
                self._thread.start()
            self._cond.notify()
        return True

    def pending(self) -> int:
        """Calls queued or running whose completion has not run yet."""
        with self._cond:
            return len(self._queue) + int(self._busy) + len(self._completions)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                what, fn, then = self._queue.popleft()
                self._busy = True
            started = time.monotonic()
            try:
                outcome = Outcome(value=fn())
            except BaseException as exc:  # reported to ``then``; the lane goes on
                outcome = Outcome(error=exc)
            took = time.monotonic() - started
            if took > 2.0:
                logger.warning("%s took %.1f s (off the loop, in the %s lane)", what, took,
                               self.name)
            with self._cond:
                self._busy = False
                if then is not None:
                    self._completions.append((then, outcome))
                self._cond.notify_all()
            if then is not None:
                self.loop.post(self.run_completions)

    def run_completions(self) -> None:
        """Run the ``then`` callbacks of finished calls (on the loop; at close, directly)."""
        while True:
            with self._cond:
                if not self._completions:
                    return
                then, outcome = self._completions.popleft()
            try:
                then(outcome)
            except Exception:
                logger.exception("completing an offloaded call (%s lane) failed", self.name)

    def close(self, timeout: float) -> bool:
        """Refuse new calls, wait up to ``timeout`` s for the queued ones, and run their
        completions here (the loop has stopped). True when everything finished."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._queue or self._busy) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            left_over = len(self._queue) + int(self._busy)
        self.run_completions()
        if left_over:
            logger.warning("%d calls of the %s lane did not finish within %.0f s of shutdown",
                           left_over, self.name, timeout)
        return not left_over
