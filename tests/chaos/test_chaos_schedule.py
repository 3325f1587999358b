"""Schedules are pure: list their offsets, never sleep."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chaos.errors import ScheduleError
from chaos.schedule import at, burst, every, parse_duration, parse_schedule, poisson, rate


def test_every_fires_one_period_in_then_each_period() -> None:
    assert every(2).first(4) == [2.0, 4.0, 6.0, 8.0]
    assert every(2, first=0).first(3) == [0.0, 2.0, 4.0]


def test_rate_until_fires_rate_times_duration() -> None:
    assert len(list(rate(1000).until(1))) == 1000
    assert len(list(rate(3).until(10))) == 30


def test_start_delay_and_stop_time_compose() -> None:
    assert list(every(1).after(5).until(9)) == [6.0, 7.0, 8.0, 9.0]
    assert list(every(1).until(3).after(10)) == [11.0, 12.0, 13.0]


def test_at_sorts_and_keeps_duplicates() -> None:
    assert list(at([3, 1, 1])) == [1.0, 1.0, 3.0]


def test_burst_once_and_periodic() -> None:
    assert list(burst(3, spacing=0.5)) == [0.0, 0.5, 1.0]
    assert list(burst(2, every=10, spacing=1).until(25)) == [10.0, 11.0, 20.0, 21.0]


def test_merge_interleaves_in_order() -> None:
    assert list(at([1.5]) | every(1).until(3)) == [1.0, 1.5, 2.0, 3.0]


def test_take_limits_count() -> None:
    assert list(every(1).take(3)) == [1.0, 2.0, 3.0]


def test_poisson_same_seed_same_times_other_seed_other_times() -> None:
    a = poisson(50, seed=7).until(10)
    assert list(a) == list(poisson(50, seed=7).until(10))
    assert list(a) != list(poisson(50, seed=8).until(10))
    # about rate * duration events (500 +- 5 sigma)
    assert 390 < len(list(a)) < 610


def test_schedules_are_reiterable_values() -> None:
    schedule = poisson(5, seed=1).until(3)
    assert list(schedule) == list(schedule)
    assert schedule == poisson(5, seed=1).until(3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: every(0), "every(seconds) must be a positive"),
        (lambda: rate(-1), "rate(per_second) must be a positive"),
        (lambda: poisson(1, seed="x"), "integer seed"),  # type: ignore[arg-type]
        (lambda: at([-1]), "must be >= 0"),
        (lambda: burst(0), "count >= 1"),
        (lambda: burst(5, every=1, spacing=0.5), "does not fit"),
        (lambda: every(1).take(-1), "count >= 0"),
    ],
)
def test_bad_arguments_say_what_is_wrong(call: object, message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("every 1s", [1.0, 2.0, 3.0]),
        ("every 500ms", [0.5, 1.0, 1.5]),
        ("rate 4/s", [0.25, 0.5, 0.75]),
        ("rate 120/m", [0.5, 1.0, 1.5]),
        ("at 1,2.5,10", [1.0, 2.5, 10.0]),
        ("burst 2 every 5s spacing 100ms", [5.0, 5.1, 10.0]),
        ("every 1s after 5s until 7s", [6.0, 7.0]),
        ("every 1s until 2 after 1", [2.0]),
    ],
)
def test_parse_schedule(spec: str, expected: list[float]) -> None:
    assert parse_schedule(spec).first(3) == pytest.approx(expected)


def test_parse_poisson_uses_the_seed() -> None:
    assert parse_schedule("poisson 5/s", seed=3).first(5) == poisson(5, seed=3).first(5)


@pytest.mark.parametrize("spec", ["", "sometimes", "every", "every soon", "rate fast", "burst x"])
def test_parse_schedule_rejects_nonsense_with_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ScheduleError, match=r"every|not a|burst"):
        parse_schedule(spec)


def test_parse_duration_units() -> None:
    assert parse_duration("250ms") == 0.25
    assert parse_duration("2m") == 120
    assert parse_duration("1.5") == 1.5
    with pytest.raises(ScheduleError, match="not a duration"):
        parse_duration("1 fortnight")


@given(
    interval=st.floats(0.001, 100),
    delay=st.floats(0, 100),
    stop=st.floats(0, 1000),
    count=st.integers(0, 50),
)
def test_offsets_are_non_decreasing_and_bounded(
    interval: float, delay: float, stop: float, count: int
) -> None:
    offsets = list(every(interval).after(delay).until(stop).take(count))
    assert offsets == sorted(offsets)
    assert all(delay <= t <= stop + 1e-6 for t in offsets)
    assert len(offsets) <= count


@given(rate_=st.floats(0.1, 1000), seed=st.integers(0, 2**32), n=st.integers(1, 50))
def test_poisson_is_deterministic_and_increasing(rate_: float, seed: int, n: int) -> None:
    first = poisson(rate_, seed).first(n)
    assert first == poisson(rate_, seed).first(n)
    assert all(b > a for a, b in itertools.pairwise(first))
