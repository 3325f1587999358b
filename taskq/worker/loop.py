"""The main process's single event loop: kombu's Hub, a FIFO for other threads, lag checks.

Everything in the main process runs from here: broker sockets, pool pipes and pidfds, timers,
signals (through a wakeup fd). Nothing here blocks without a bound.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kombu.asynchronous import Hub
from kombu.asynchronous.timer import Entry

from taskq.compat import propagate_errors, timer_entries

logger = logging.getLogger("taskq.worker.loop")

Clock = Callable[[], float]


@dataclass
class Registration:
    """What one registration added to the hub, so it can be taken off again exactly."""

    readers: set[int] = field(default_factory=set)
    writers: set[int] = field(default_factory=set)
    on_tick: set[Callable[[], Any]] = field(default_factory=set)
    timers: list[Entry] = field(default_factory=list)


class Loop:
    """Owns the hub. ``post`` is the only thing other threads may call."""

    def __init__(self, *, clock: Clock = time.monotonic, lag_warning: float = 0.5,
                 lag_interval: float = 1.0) -> None:
        self.hub = Hub()
        self.clock = clock
        self.lag_warning = lag_warning
        self.lag_interval = lag_interval
        self.max_lag = 0.0
        self.last_lag = 0.0
        self._posted: collections.deque[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            collections.deque()
        )
        self._post_lock = threading.Lock()
        self._post_scheduled = False
        self._signal_r: int | None = None
        self._signal_w: int | None = None
        self._signal_handlers: dict[int, Callable[[int], None]] = {}
        self._lag_expected = 0.0
        # kombu's Hub does not look at callbacks added with call_soon() from inside the loop
        # thread until its poll returns (up to a second later when no socket is busy): a
        # byte on this pipe makes the poll return at once.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.hub.add_reader(self._wake_r, self._drain_wake)

    # -- soon, from any thread ----------------------------------------------------------------
    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the next loop iteration, without waiting for the poll."""
        self.hub.call_soon(fn, *args)
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wakeup is pending
            os.write(self._wake_w, b"\0")

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self._wake_r, 4096)

    # -- cross-thread FIFO --------------------------------------------------------------------
    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the loop thread, in the order posted (thread-safe)."""
        with self._post_lock:
            self._posted.append((fn, args))
            schedule = not self._post_scheduled
            self._post_scheduled = True
        if schedule:
            self.call_soon(self._drain_posted)

    def _drain_posted(self) -> None:
        while True:
            with self._post_lock:
                if not self._posted:
                    self._post_scheduled = False
                    return
                fn, args = self._posted.popleft()
            try:
                fn(*args)
            except BaseException:
                # The error goes where any loop error goes (iterate_handling's on_error); the
                # callbacks posted after this one still run, in order, next iteration.
                # _post_scheduled stays True for that drain, so later posts do not stall.
                self.call_soon(self._drain_posted)
                raise

    # -- signals ------------------------------------------------------------------------------
    def install_signals(self, handlers: dict[int, Callable[[int], None]]) -> None:
        """Route signals into the loop: the handler runs in a loop iteration, not in the
        middle of whatever the main thread was doing (call from the main thread only)."""
        if self._signal_r is None:
            self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
            self.hub.add_reader(self._signal_r, self._on_signal_fd)
        self._signal_handlers.update(handlers)
        for signum in handlers:
            # The wakeup fd carries the signal number; the Python-level handler does nothing.
            signal.signal(signum, _noop_handler)

    def _on_signal_fd(self) -> None:
        assert self._signal_r is not None
        try:
            data = os.read(self._signal_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler(signum)

    # -- lag ----------------------------------------------------------------------------------
    def _check_lag(self) -> None:
        now = self.clock()
        if self._lag_expected:
            lag = max(0.0, now - self._lag_expected)
            self.last_lag = lag
            self.max_lag = max(self.max_lag, lag)
            if lag > self.lag_warning:
                logger.warning("event loop lagged %.3f s behind its timers; something in the "
                               "main process blocked", lag)
        self._lag_expected = now + self.lag_interval

    # -- registrations ------------------------------------------------------------------------
    def capture(self, register: Callable[[], Any]) -> Registration:
        """Run ``register()`` and record what it added to the hub."""
        hub = self.hub
        readers, writers = set(hub.readers), set(hub.writers)
        ticks, timers = set(hub.on_tick), {id(entry) for entry in timer_entries(hub)}
        register()
        return Registration(
            readers=set(hub.readers) - readers,
            writers=set(hub.writers) - writers,
            on_tick=set(hub.on_tick) - ticks,
            timers=[entry for entry in timer_entries(hub) if id(entry) not in timers],
        )

    def release(self, registration: Registration) -> None:
        hub = self.hub
        for fd in registration.readers | registration.writers:
            with contextlib.suppress(OSError, ValueError, KeyError):
                hub.remove(fd)
        for tick in registration.on_tick:
            hub.on_tick.discard(tick)
        for entry in registration.timers:
            entry.cancel()

    # -- running ------------------------------------------------------------------------------
    def iterate_handling(self, on_error: Callable[[BaseException], bool]) -> Iterator[None]:
        """Run loop iterations forever, yielding after each; an exception that escapes the
        hub (a connection error it propagates) goes to ``on_error``, which returns True when
        it was handled, and the loop goes on."""
        hub = self.hub
        hub.call_repeatedly(self.lag_interval, self._check_lag)
        # kombu's create_loop reads hub.propagate_errors once, when the generator starts: a
        # generator made while the set was different (no connection yet, or a torn down one)
        # would swallow the errors of the connection made since (a missed heartbeat, a lease
        # renewal on a dead socket: only "Error in timer" in the log). So a new generator
        # whenever the set changes; between iterations nothing is lost by that.
        propagate = propagate_errors(hub)
        loop = hub.create_loop()
        while True:
            if propagate_errors(hub) is not propagate:
                propagate = propagate_errors(hub)
                loop = hub.create_loop()
            try:
                next(loop)
            except StopIteration:
                propagate = propagate_errors(hub)
                loop = hub.create_loop()
            except Exception as exc:
                if not on_error(exc):
                    raise
                propagate = propagate_errors(hub)
                loop = hub.create_loop()
            yield None

    def close(self) -> None:
        if self._signal_r is not None:
            signal.set_wakeup_fd(-1)
            for fd in (self._signal_r, self._signal_w):
                if fd is not None:
                    os.close(fd)
            self._signal_r = self._signal_w = None
        self.hub.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _noop_handler(signum: int, frame: object) -> None:
    return None
