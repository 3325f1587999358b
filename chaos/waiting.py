"""Wait for a condition with a deadline, never for a fixed time.

Tests (and brokers waiting to be ready) poll a predicate with a short, growing interval
until it is truthy or the deadline passes, then fail with a message that says what was
awaited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from chaos.clock import Clock, SystemClock
from chaos.errors import WaitTimeout

__all__ = ["wait_until"]

T = TypeVar("T")

_SYSTEM_CLOCK = SystemClock()


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.005,
    max_interval: float = 0.1,
    what: str | None = None,
    clock: Clock | None = None,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that value.

    The poll interval starts at ``interval`` and doubles up to ``max_interval``.
    Exceptions of the types in ``ignore`` count as "not yet". Raises
    :class:`~chaos.errors.WaitTimeout` naming ``what`` (or the predicate) and the last
    value or exception seen if ``timeout`` seconds pass first.
    """
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout!r}")
    clk = clock or _SYSTEM_CLOCK
    deadline = clk.monotonic() + timeout
    delay = interval
    last: object = None
    while True:
        try:
            value = predicate()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        now = clk.monotonic()
        if now >= deadline:
            name = what or getattr(predicate, "__qualname__", repr(predicate))
            raise WaitTimeout(
                f"timed out after {timeout:g} s waiting for {name} (last result: {last!r})"
            )
        clk.sleep(min(delay, deadline - now))
        delay = min(delay * 2, max_interval)
