"""Shrinking: from a failing case to the smallest one that still fails, greedily.

Generic over the case type: the caller gives the candidate reductions of a case (biggest
first) and a predicate. :func:`shrink` takes the first candidate that fails, starts over from
it, and stops when no candidate of the current case fails (a local minimum, as hypothesis'
shrinker), when the budget is spent, or after ``max_steps`` candidates. Candidates already
tried are not run again (``key``).

Stress runs are noisy, so a candidate counts as failing only when it fails in at least
``need`` of ``runs`` runs (:func:`reproduces`; it stops as soon as the answer is known).
And they are slow: with ``move`` (what a candidate changes, e.g. "drop the cut"), a
reduction that did not reproduce is tried on later cases only after every other candidate
(it still is, so the minimum stays local).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["ShrinkResult", "reproduces", "shrink"]

T = TypeVar("T")


def reproduces(run_once: Callable[[], bool | None], runs: int = 3, need: int = 2) -> bool:
    """Run up to ``runs`` times; true once ``need`` runs failed (``run_once`` returns True for
    a failure, False for a pass, None for a run that could not be carried out: neither)."""
    need = max(1, min(need, runs))
    failed = passed = 0
    for _ in range(runs):
        outcome = run_once()
        if outcome:
            failed += 1
        elif outcome is not None:
            passed += 1
        if failed >= need:
            return True
        if passed > runs - need:
            return False
    return False


@dataclass
class ShrinkResult(Generic[T]):
    case: T
    steps: list[T] = field(default_factory=list)  # every accepted reduction, in order
    tried: int = 0
    seconds: float = 0.0
    complete: bool = True  # False: stopped by the budget or max_steps, not at a minimum


def shrink(start: T, candidates: Callable[[T], Iterable[T]], fails: Callable[[T], bool], *,
           key: Callable[[T], Hashable] = id, budget: float | None = None,
           max_steps: int | None = None, clock: Callable[[], float] = time.monotonic,
           on_step: Callable[[T, bool], None] | None = None,
           move: Callable[[T, T], Hashable] | None = None) -> ShrinkResult[T]:
    """The smallest case reachable from ``start`` by accepted reductions that still fails.

    ``start`` is taken as failing (the caller confirmed it). ``on_step(candidate, failed)`` is
    called after each candidate is judged. ``move(case, candidate)`` names the reduction, so
    one that did not reproduce waits behind the others next time.
    """
    began = clock()
    result = ShrinkResult(start)
    seen: set[Hashable] = {key(start)}
    rejected: set[Hashable] = set()
    current = start

    def ordered(case: T) -> Iterable[T]:
        listed = list(candidates(case))
        if move is None:
            return listed
        return ([c for c in listed if move(case, c) not in rejected]
                + [c for c in listed if move(case, c) in rejected])

    while True:
        for candidate in ordered(current):
            k = key(candidate)
            if k in seen:
                continue
            if (budget is not None and clock() - began >= budget) or (
                    max_steps is not None and result.tried >= max_steps):
                result.complete = False
                result.case, result.seconds = current, clock() - began
                return result
            seen.add(k)
            result.tried += 1
            failed = fails(candidate)
            if on_step is not None:
                on_step(candidate, failed)
            if failed:
                current = candidate
                result.steps.append(candidate)
                break
            if move is not None:
                rejected.add(move(current, candidate))
        else:
            result.case, result.seconds = current, clock() - began
            return result
