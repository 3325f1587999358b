"""The shrinker on synthetic failure predicates: it reaches the known minimum (no brokers)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import replace

from stress.explore import SPACE, Case, FaultEvent, Generator, smaller
from stress.shrink import reproduces, shrink


def _mtpc_deadlock(case: Case) -> bool:
    """Fails like issue 13 #1: -O fast, max-tasks-per-child set, a connection cut."""
    return (case.config["strategy"] == "fast" and case.config["max_tasks_per_child"] > 0
            and any(f.kind == "cut-connections" for f in case.faults) and case.tasks >= 3)


def _big_case() -> Case:
    config = {k: axis.default for k, axis in SPACE.items()}
    config.update(transport="amqp", concurrency=4, strategy="fast", max_tasks_per_child=5,
                  acks="late-reject", prefetch=8, lease=10.0, heartbeat=2.0, time_limit=30)
    faults = (FaultEvent("kill-children", 1.0), FaultEvent("cut-connections", 2.0),
              FaultEvent("blackhole", 3.0, 4.0), FaultEvent("latency", 4.0, 3.0, 200.0),
              FaultEvent("kill-main", 5.0))
    return Case(config, {"noop": 1.0, "sleep": 2.0, "cpu": 1.0, "crash": 1.0}, (0.01, 0.2),
                faults, 12.0, 20.0, seed=1)


def test_shrinking_reaches_the_known_minimum() -> None:
    start = _big_case()
    assert _mtpc_deadlock(start)
    result = shrink(start, smaller, _mtpc_deadlock, key=Case.key)
    minimal = result.case
    assert result.complete
    assert [f.kind for f in minimal.faults] == ["cut-connections"]
    off = {k: v for k, v in minimal.config.items() if v != SPACE[k].default}
    assert off == {"strategy": "fast", "max_tasks_per_child": 1}
    assert len(minimal.workload) == 1
    assert 3 <= minimal.tasks <= 5
    assert minimal.duration < start.duration
    assert result.steps[-1] is minimal and result.tried > len(result.steps)


def test_the_minimum_is_local_no_candidate_of_it_fails() -> None:
    minimal = shrink(_big_case(), smaller, _mtpc_deadlock, key=Case.key).case
    assert not any(_mtpc_deadlock(c) for c in smaller(minimal))


def test_drawn_cases_shrink_to_the_same_minimum() -> None:
    gen = Generator(9)
    found = 0
    for case in (gen.draw() for _ in range(3000)):
        if not _mtpc_deadlock(case):
            continue
        found += 1
        minimal = shrink(case, smaller, _mtpc_deadlock, key=Case.key).case
        assert [f.kind for f in minimal.faults] == ["cut-connections"]
        assert {k for k, v in minimal.config.items() if v != SPACE[k].default} <= {
            "strategy", "max_tasks_per_child", "transport"}
        assert minimal.config["max_tasks_per_child"] == 1
    assert found >= 10


def test_a_budget_stops_shrinking_with_the_smallest_failure_so_far() -> None:
    ticks = itertools.count()
    result = shrink(_big_case(), smaller, _mtpc_deadlock, key=Case.key, budget=5,
                    clock=lambda: float(next(ticks)))
    assert not result.complete
    assert _mtpc_deadlock(result.case)
    assert result.case.size() < _big_case().size()


def test_a_candidate_counts_as_failing_only_in_two_of_n_runs() -> None:
    def runs(*outcomes: bool | None) -> tuple[bool, int]:
        seq = iter(outcomes)
        calls = []

        def once() -> bool | None:
            calls.append(1)
            return next(seq)

        return reproduces(once, runs=3, need=2), len(calls)

    assert runs(True, True) == (True, 2)
    assert runs(True, False, True) == (True, 3)
    assert runs(True, False, False) == (False, 3)
    assert runs(False, False) == (False, 2)
    assert runs(None, True, None) == (False, 3)  # runs that could not be carried out: neither


def test_a_flaky_failure_shrinks_only_along_reproducing_candidates() -> None:
    # fails every time with a cut, once in three runs without one: the cut must stay
    count = itertools.count()

    def noisy(case: Case) -> bool:
        def once() -> bool:
            if any(f.kind == "cut-connections" for f in case.faults):
                return True
            return next(count) % 3 == 0

        return reproduces(once, runs=3, need=2)

    minimal = shrink(replace(_big_case()), smaller, noisy, key=Case.key).case
    assert [f.kind for f in minimal.faults] == ["cut-connections"]


def test_a_reduction_that_did_not_reproduce_waits_until_the_others_are_tried() -> None:
    """A stress run costs seconds: a reduction that failed to reproduce (here: dropping the
    cut) is tried again only once every other reduction of the current case was, not first
    after every accepted step (a 30-minute search spent its shrink budget re-trying "no
    faults" after each step). The minimum is the same."""
    from stress.explore import reduction

    def shrunk(move: Callable[[Case, Case], Hashable] | None = None) -> tuple[Case, int]:
        tried: list[Case] = []

        def fails(case: Case) -> bool:
            tried.append(case)
            return _mtpc_deadlock(case)

        result = shrink(_big_case(), smaller, fails, key=Case.key, move=move)
        no_cut = sum(not any(f.kind == "cut-connections" for f in c.faults) for c in tried)
        return result.case, no_cut

    plain, plain_no_cut = shrunk()
    ordered, ordered_no_cut = shrunk(move=reduction)
    assert ordered.key() == plain.key()
    assert ordered_no_cut <= 3 < plain_no_cut
