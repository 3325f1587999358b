"""Drive injectors from a schedule against a clock, in the foreground or a thread.

::

    with Runner(every(1).until(30), Kill(ChildrenOf(worker_pid), seed=1)) as runner:
        ...                       # the workload runs; kills happen every second
    runner.fired                  # how many injections ran

At each offset the runner fires every injector, in order. An injection that falls behind
(the injector was slow) fires at once; none is skipped, so the journal's ``offset`` and
``mono`` together show the lag. With the system clock the runner waits on its stop event,
so :meth:`Runner.stop` returns promptly even when the next offset is an hour away; with any
other clock (a :class:`~chaos.clock.FakeClock` in tests) it calls ``clock.sleep()`` with the
time remaining, which a fake clock jumps at once.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable

from chaos.clock import Clock, SystemClock
from chaos.errors import ChaosError
from chaos.injector import Injector
from chaos.schedule import Schedule

__all__ = ["Runner"]


class Runner:
    """Fires ``injectors`` at each offset of ``schedule``, measured from :meth:`run`'s start."""

    def __init__(
        self,
        schedule: Schedule,
        injectors: Injector | Iterable[Injector],
        *,
        clock: Clock | None = None,
        name: str = "chaos-runner",
    ) -> None:
        self.schedule = schedule
        self.injectors = [injectors] if isinstance(injectors, Injector) else list(injectors)
        if not self.injectors:
            raise ChaosError("a Runner needs at least one injector")
        self.clock = clock or SystemClock()
        self.name = name
        self.fired = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> int:
        """Run until the schedule ends or :meth:`stop` is called; return injections fired."""
        try:
            start = self.clock.monotonic()
            for offset in self.schedule:
                if not self._wait(start + offset):
                    break
                for injector in self.injectors:
                    injector.inject(offset=offset)
                    self.fired += 1
                if self._stop.is_set():
                    break
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._done.set()
        return self.fired

    def _wait(self, due: float) -> bool:
        """Wait until ``due`` on the clock; False if stopped first."""
        real = isinstance(self.clock, SystemClock)
        while not self._stop.is_set():
            remaining = due - self.clock.monotonic()
            if remaining <= 0:
                return True
            if real:
                self._stop.wait(remaining)
            else:
                self.clock.sleep(remaining)
        return False

    def start(self) -> Runner:
        """Run in a daemon thread; returns self."""
        if self._thread is not None:
            raise ChaosError(f"runner {self.name!r} was already started")
        self._thread = threading.Thread(target=self._run_quietly, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _run_quietly(self) -> None:
        # A failure is kept in self.error and re-raised by stop() / join().
        with contextlib.suppress(BaseException):
            self.run()

    @property
    def done(self) -> bool:
        """True once the run has ended (schedule exhausted, stopped, or failed)."""
        return self._done.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for a background run to end; True if it did. Re-raises the run's error."""
        finished = self._done.wait(timeout)
        if self.error is not None:
            raise ChaosError(f"runner {self.name!r} failed: {self.error!r}") from self.error
        return finished

    def stop(self, timeout: float | None = 5.0) -> None:
        """Ask the run to stop, wait for it, and close the injectors (thaw, switch off)."""
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(timeout)
                if self._thread.is_alive():
                    raise ChaosError(
                        f"runner {self.name!r} did not stop within {timeout} s; "
                        "an injector is blocked"
                    )
            if self.error is not None:
                raise ChaosError(f"runner {self.name!r} failed: {self.error!r}") from self.error
        finally:
            for injector in self.injectors:
                injector.close()

    def __enter__(self) -> Runner:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
