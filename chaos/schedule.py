"""Schedules: *when* to inject, as pure iterators of offsets.

A schedule is an immutable value; iterating it yields non-decreasing offsets in seconds
since the runner started. Nothing here sleeps or reads a clock, so a test checks a
schedule by listing its offsets, and the same seed always gives the same offsets.

Periodic schedules fire first one period after the start (``every(10)`` → 10, 20, ...), so
``rate(r).until(d)`` fires ``r * d`` times. Compose with :meth:`Schedule.after` (start
delay), :meth:`Schedule.until` (stop time, inclusive), :meth:`Schedule.take` and ``|``
(merge)::

    every(1).after(5).until(60)      # 6, 7, ..., 60
    poisson(20, seed=7).until(10)    # about 200 random, reproducible offsets
    at([1, 2.5]) | burst(3, every=10)

:func:`parse_schedule` reads the CLI form: ``"every 1s"``, ``"rate 1000/s"``,
``"poisson 5/s"``, ``"at 1,2.5,10"``, ``"burst 10 every 5s spacing 10ms"``, each optionally
followed by ``after 5s`` and/or ``until 60s``.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from chaos.errors import ScheduleError

__all__ = [
    "Schedule",
    "at",
    "burst",
    "every",
    "parse_duration",
    "parse_schedule",
    "poisson",
    "rate",
]

# Offsets are sums of floats; a stop time compares with this much slack so that
# ``rate(1000).until(1)`` keeps its 1000th offset (0.001 * 1000 may be 1.0000000000000002).
_EPSILON = 1e-9


def _positive(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ScheduleError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _non_negative(name: str, value: float) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ScheduleError(f"{name} must be >= 0, got {value!r}")
    return float(value)


class Schedule(ABC):
    """An immutable, re-iterable sequence of non-decreasing offsets (seconds)."""

    @abstractmethod
    def offsets(self) -> Iterator[float]:
        """A fresh iterator over this schedule's offsets."""

    def __iter__(self) -> Iterator[float]:
        return self.offsets()

    def after(self, delay: float) -> Schedule:
        """The same schedule shifted later by ``delay`` seconds."""
        return _Shifted(self, _non_negative("delay", delay))

    def until(self, stop: float) -> Schedule:
        """Only the offsets at or before ``stop`` seconds."""
        return _Until(self, _non_negative("stop", stop))

    def take(self, count: int) -> Schedule:
        """Only the first ``count`` offsets."""
        if not isinstance(count, int) or count < 0:
            raise ScheduleError(f"take() needs a count >= 0, got {count!r}")
        return _Take(self, count)

    def __or__(self, other: Schedule) -> Schedule:
        if not isinstance(other, Schedule):
            return NotImplemented
        return _Merged((self, other))

    def first(self, count: int) -> list[float]:
        """The first ``count`` offsets as a list (a preview; handy in tests and the CLI)."""
        return list(itertools.islice(self.offsets(), count))


@dataclass(frozen=True)
class Every(Schedule):
    interval: float
    first_at: float

    def offsets(self) -> Iterator[float]:
        # Multiply instead of accumulating so error does not grow over long runs.
        for i in itertools.count():
            yield self.first_at + i * self.interval


@dataclass(frozen=True)
class Poisson(Schedule):
    rate: float
    seed: int

    def offsets(self) -> Iterator[float]:
        rng = random.Random(self.seed)
        t = 0.0
        while True:
            t += rng.expovariate(self.rate)
            yield t


@dataclass(frozen=True)
class At(Schedule):
    times: tuple[float, ...]

    def offsets(self) -> Iterator[float]:
        return iter(self.times)


@dataclass(frozen=True)
class Burst(Schedule):
    count: int
    period: float | None
    spacing: float
    first_at: float

    def offsets(self) -> Iterator[float]:
        starts: Iterable[float]
        if self.period is None:
            starts = (self.first_at,)
        else:
            starts = (self.first_at + i * self.period for i in itertools.count())
        for start in starts:
            for j in range(self.count):
                yield start + j * self.spacing


@dataclass(frozen=True)
class _Shifted(Schedule):
    inner: Schedule
    delay: float

    def offsets(self) -> Iterator[float]:
        return (t + self.delay for t in self.inner.offsets())


@dataclass(frozen=True)
class _Until(Schedule):
    inner: Schedule
    stop: float

    def offsets(self) -> Iterator[float]:
        return itertools.takewhile(lambda t: t <= self.stop + _EPSILON, self.inner.offsets())


@dataclass(frozen=True)
class _Take(Schedule):
    inner: Schedule
    count: int

    def offsets(self) -> Iterator[float]:
        return itertools.islice(self.inner.offsets(), self.count)


@dataclass(frozen=True)
class _Merged(Schedule):
    parts: tuple[Schedule, ...]

    def offsets(self) -> Iterator[float]:
        return heapq.merge(*(p.offsets() for p in self.parts))


def every(seconds: float, *, first: float | None = None) -> Schedule:
    """Every ``seconds`` seconds; first at ``first`` (default: one period in)."""
    interval = _positive("every(seconds)", seconds)
    start = interval if first is None else _non_negative("first", first)
    return Every(interval, start)


def rate(per_second: float) -> Schedule:
    """``per_second`` evenly spaced injections a second."""
    return every(1.0 / _positive("rate(per_second)", per_second))


def poisson(rate: float, seed: int) -> Schedule:
    """A Poisson process of ``rate`` events a second; the same seed gives the same times."""
    r = _positive("poisson(rate)", rate)
    if not isinstance(seed, int):
        raise ScheduleError(f"poisson() needs an integer seed, got {seed!r}")
    return Poisson(r, seed)


def at(times: Iterable[float]) -> Schedule:
    """Exactly at the given offsets (sorted; duplicates fire twice)."""
    values = tuple(sorted(_non_negative("at() offset", t) for t in times))
    return At(values)


def burst(
    count: int, *, every: float | None = None, spacing: float = 0.0, first: float | None = None
) -> Schedule:
    """``count`` injections ``spacing`` apart, once (at ``first``, default 0) or each period.

    With ``every``, bursts start at ``first`` (default: one period in) and repeat.
    """
    if not isinstance(count, int) or count < 1:
        raise ScheduleError(f"burst() needs a count >= 1, got {count!r}")
    gap = _non_negative("burst(spacing)", spacing)
    if every is None:
        return Burst(count, None, gap, 0.0 if first is None else _non_negative("first", first))
    period = _positive("burst(every)", every)
    if (count - 1) * gap >= period:
        raise ScheduleError(
            f"burst of {count} spaced {gap:g} s does not fit in its period of {period:g} s; "
            "lower the count or the spacing, or lengthen the period"
        )
    return Burst(count, period, gap, period if first is None else _non_negative("first", first))


# -- the CLI form -----------------------------------------------------------------------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|)\s*$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*(ms|s|m|h))?\s*$")


def parse_duration(text: str) -> float:
    """``"500ms"``, ``"1.5s"``, ``"2m"``, ``"1h"`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ScheduleError(f"not a duration: {text!r} (write e.g. 500ms, 1.5s, 2m or 10)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _parse_rate(text: str) -> float:
    match = _RATE.match(text)
    if not match:
        raise ScheduleError(f"not a rate: {text!r} (write e.g. 1000/s, 5/m or 20)")
    return float(match.group(1)) / _UNITS[match.group(2) or "s"]


def parse_schedule(spec: str, *, seed: int = 0) -> Schedule:
    """Build a schedule from its CLI form (see the module docstring)."""
    text = spec.strip()
    modifiers: dict[str, float] = {}
    # Trailing "after X" / "until X" in any order.
    while True:
        match = re.search(r"\s+(after|until)\s+(\S+)\s*$", text)
        if not match:
            break
        if match.group(1) in modifiers:
            raise ScheduleError(f"{match.group(1)!r} given twice in schedule {spec!r}")
        modifiers[match.group(1)] = parse_duration(match.group(2))
        text = text[: match.start()]
    head, _, rest = text.partition(" ")
    rest = rest.strip()
    schedule: Schedule
    if head == "every" and rest:
        schedule = every(parse_duration(rest))
    elif head == "rate" and rest:
        schedule = rate(_parse_rate(rest))
    elif head == "poisson" and rest:
        schedule = poisson(_parse_rate(rest), seed)
    elif head == "at" and rest:
        schedule = at(parse_duration(t) for t in rest.split(",") if t.strip())
    elif head == "burst" and rest:
        schedule = _parse_burst(rest, spec)
    else:
        raise ScheduleError(
            f"cannot read schedule {spec!r}; use one of: 'every 1s', 'rate 1000/s', "
            "'poisson 5/s', 'at 1,2.5', 'burst 10 every 5s [spacing 10ms]', "
            "optionally followed by 'after 5s' and/or 'until 60s'"
        )
    if "after" in modifiers:
        schedule = schedule.after(modifiers["after"])
    if "until" in modifiers:
        schedule = schedule.until(modifiers["until"])
    return schedule


def _parse_burst(rest: str, spec: str) -> Schedule:
    match = re.fullmatch(r"(\d+)(?:\s+every\s+(\S+))?(?:\s+spacing\s+(\S+))?", rest)
    if not match:
        raise ScheduleError(f"cannot read burst {spec!r}; write 'burst 10 every 5s spacing 10ms'")
    period = parse_duration(match.group(2)) if match.group(2) else None
    spacing = parse_duration(match.group(3)) if match.group(3) else 0.0
    return burst(int(match.group(1)), every=period, spacing=spacing)
