"""The runner fires injectors at schedule offsets on an injected clock, and stops promptly."""

from __future__ import annotations

import threading
import time

import pytest

from chaos.clock import FakeClock, SystemClock
from chaos.errors import ChaosError
from chaos.injector import Injector, Outcome
from chaos.journal import Journal
from chaos.runner import Runner
from chaos.schedule import at, every
from chaos.waiting import wait_until


class Probe(Injector):
    """Records the clock time of each injection."""

    kind = "probe"

    def __init__(self, clock: FakeClock | SystemClock, journal: Journal | None = None) -> None:
        super().__init__(journal=journal)
        self.clock = clock
        self.times: list[float] = []
        self.closed = False

    def apply(self) -> Outcome:
        self.times.append(self.clock.monotonic())
        return Outcome("ok", "probe")

    def close(self) -> None:
        self.closed = True


class Exploding(Injector):
    kind = "boom"

    def apply(self) -> Outcome:
        raise RuntimeError("target table corrupted")


def test_fires_at_each_offset_on_a_fake_clock_without_sleeping() -> None:
    clock = FakeClock(start=100.0)
    probe = Probe(clock)
    fired = Runner(every(10).until(3600), probe, clock=clock).run()
    assert fired == 360
    assert probe.times[:3] == [110.0, 120.0, 130.0]
    assert probe.times[-1] == 3700.0
    assert [r.offset for r in probe.journal.records[:2]] == [10.0, 20.0]


def test_fires_every_injector_at_each_offset_in_order() -> None:
    clock = FakeClock()
    journal = Journal(clock=clock)
    a, b = Probe(clock, journal), Probe(clock, journal)
    Runner(at([1, 2]), [a, b], clock=clock).run()
    assert a.times == b.times == [1.0, 2.0]
    assert [r.offset for r in journal.records] == [1.0, 1.0, 2.0, 2.0]


def test_overdue_offsets_fire_at_once_none_skipped() -> None:
    clock = FakeClock()
    probe = Probe(clock)
    clock_sleeps_before = len(clock.sleeps)
    # Offsets in the past relative to the start fire immediately, in order.
    Runner(at([0, 0, 0]), probe, clock=clock).run()
    assert probe.times == [0.0, 0.0, 0.0]
    assert len(clock.sleeps) == clock_sleeps_before


def test_an_injector_error_is_journaled_not_raised() -> None:
    clock = FakeClock()
    injector = Exploding()
    assert Runner(at([1, 2]), injector, clock=clock).run() == 2
    records = injector.journal.records
    assert [r.outcome for r in records] == ["error", "error"]
    assert "target table corrupted" in records[0].detail["error"]


def test_background_runner_stops_promptly_even_with_an_hour_to_wait() -> None:
    probe = Probe(SystemClock())
    runner = Runner(at([0, 3600]), probe, clock=SystemClock()).start()
    wait_until(lambda: probe.times, 5, what="the first injection")
    started = time.monotonic()
    runner.stop()
    assert time.monotonic() - started < 60  # not the hour it would have waited
    assert runner.done and runner.fired == 1
    assert probe.closed, "stop() closes the injectors (thaw, switch faults off)"


def test_context_manager_starts_and_stops() -> None:
    probe = Probe(SystemClock())
    with Runner(every(0.01), probe) as runner:
        wait_until(lambda: len(probe.times) >= 3, 5, what="three injections")
    assert runner.done
    count = len(probe.times)
    assert count >= 3
    assert not any(t.name == "chaos-runner" and t.is_alive() for t in threading.enumerate())


def test_finite_schedule_ends_the_background_run() -> None:
    clock = FakeClock()
    probe = Probe(clock)
    runner = Runner(at([1, 2, 3]), probe, clock=clock).start()
    assert runner.join(timeout=5)
    runner.stop()
    assert probe.times == [1.0, 2.0, 3.0]


def test_a_runner_needs_an_injector_and_starts_once() -> None:
    with pytest.raises(ChaosError, match="at least one injector"):
        Runner(at([1]), [])
    runner = Runner(at([1]), Probe(FakeClock()), clock=FakeClock()).start()
    with pytest.raises(ChaosError, match="already started"):
        runner.start()
    runner.stop()
