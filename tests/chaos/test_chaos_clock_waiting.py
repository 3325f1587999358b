"""The fake clock jumps; wait_until polls a condition against a deadline."""

from __future__ import annotations

import threading

import pytest

from chaos.clock import Clock, FakeClock, SystemClock
from chaos.errors import ChaosError, WaitTimeout
from chaos.waiting import wait_until


def test_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SystemClock(), Clock)
    assert isinstance(FakeClock(), Clock)


def test_fake_clock_sleep_jumps_and_is_recorded() -> None:
    clock = FakeClock(5)
    clock.sleep(2.5)
    clock.advance(1)
    assert clock.monotonic() == 8.5
    assert clock.sleeps == [2.5]
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)


def test_fake_clock_is_thread_safe() -> None:
    clock = FakeClock()
    threads = [
        threading.Thread(target=lambda: [clock.sleep(1) for _ in range(1000)]) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.monotonic() == 4000


def test_wait_until_returns_the_truthy_value() -> None:
    calls = iter([None, 0, "ready"])
    assert wait_until(lambda: next(calls), 5) == "ready"


def test_wait_until_times_out_on_the_injected_clock_naming_what_it_waited_for() -> None:
    clock = FakeClock()
    with pytest.raises(WaitTimeout, match=r"after 3 s waiting for the moon \(last result: False"):
        wait_until(lambda: False, 3, what="the moon", clock=clock)
    assert clock.monotonic() == pytest.approx(3)
    # WaitTimeout is both a ChaosError and a TimeoutError
    assert issubclass(WaitTimeout, ChaosError) and issubclass(WaitTimeout, TimeoutError)


def test_wait_until_can_treat_exceptions_as_not_yet() -> None:
    state = {"n": 0}

    def flaky() -> bool:
        state["n"] += 1
        if state["n"] < 3:
            raise ConnectionError("not yet")
        return True

    assert wait_until(flaky, 5, ignore=(ConnectionError,), clock=FakeClock())

    def never() -> bool:
        raise ConnectionError("refused")

    with pytest.raises(WaitTimeout, match=r"last result: ConnectionError\('refused'\)"):
        wait_until(never, 1, ignore=(ConnectionError,), clock=FakeClock())
