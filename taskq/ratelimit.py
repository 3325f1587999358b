"""Task rate limits, as Celery's worker applies them: one token bucket per task name.

A task's ``rate_limit`` (``"10/s"``, ``"100/m"``, ``"1000/h"``, or a number per second; the
``task_default_rate_limit`` setting otherwise) caps how often this worker *starts* it. A
request that finds no token is held (reserved, not acked) until its token is due; tokens are
reserved in arrival order, so each held request has one timer and wakes exactly once.
``worker_disable_rate_limits`` turns all of it off. The ``rate_limit`` remote command changes a
task's limit at run time (``taskq.worker.inspect``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskq.config import Config
    from taskq.task import Task

Clock = Callable[[], float]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: Any) -> float:
    """Tasks per second for ``"10/s"``, ``"100/m"``, ``"5/h"`` or a number; 0 means no limit."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        rate = float(value)
    elif isinstance(value, str):
        count, _, unit = value.strip().partition("/")
        try:
            rate = float(count) / _UNITS[unit.strip() or "s"]
        except (KeyError, ValueError):
            raise ValueError(f"rate limit {value!r}: expected a number per second or a rate "
                             "such as '10/s', '100/m' or '1000/h'") from None
    else:
        raise ValueError(f"rate limit {value!r}: expected a string such as '10/s' or a number")
    if rate < 0:
        raise ValueError(f"rate limit {value!r}: must not be negative")
    return rate


class TokenBucket:
    """``rate`` tokens a second, holding at most ``capacity`` (Celery's default: 1)."""

    def __init__(self, rate: float, clock: Clock, capacity: float = 1.0) -> None:
        self.rate = rate
        self.capacity = capacity
        self.clock = clock
        self.tokens = capacity
        self.stamp = clock()

    def reserve(self) -> float:
        """Take a token; the seconds until it is really there (0: now). A token taken ahead
        of time puts the next caller behind it."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class RateLimits:
    """The worker's buckets, keyed by task name; a changed limit gets a fresh bucket."""

    def __init__(self, conf: Config, clock: Clock) -> None:
        self.conf = conf
        self.clock = clock
        self._buckets: dict[str, tuple[Any, TokenBucket]] = {}

    @property
    def disabled(self) -> bool:
        return bool(self.conf.worker_disable_rate_limits)

    def reserve(self, task: Task) -> float:
        """Seconds the next start of ``task`` must wait (0: it may start now)."""
        if self.disabled:
            return 0.0
        spec = task.rate_limit
        if not spec:
            return 0.0
        known = self._buckets.get(task.name)
        if known is None or known[0] != spec:
            rate = parse_rate(spec)
            if rate <= 0:
                return 0.0
            known = self._buckets[task.name] = (spec, TokenBucket(rate, self.clock))
        return known[1].reserve()
