"""The prefork pool keeps time with its loop's clock: a test moves that clock forward instead
of waiting out a ready timeout or autoscale's keepalive in real time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pool_support import Harness

from taskq.pool import prefork


class JumpClock:
    """Real monotonic time plus whatever the test jumped ahead (so real timers still run)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.ahead

    def jump(self, seconds: float) -> None:
        self.ahead += seconds


def on_jump_clock(harness: Callable[..., Harness], **kwargs: Any) -> tuple[Harness, JumpClock]:
    clock = JumpClock()
    h = harness(start=False, **kwargs)
    h.loop.clock = clock  # the pool takes its clock from the loop when it starts
    return h, clock


def test_the_ready_timeout_runs_on_the_loop_clock(harness, first_child_hangs, caplog):
    h, clock = on_jump_clock(harness, concurrency=1, pool_options={"ready_timeout": 3600.0})
    h.pool.start(h.loop)
    h.run_until(lambda: len(h.pool.pids()) == 1)  # forked on the loop's first turn
    [first] = h.pool.pids()
    h.run_until(lambda: not first_child_hangs.exists())  # it hangs before it can say ready
    clock.jump(3601)
    with caplog.at_level(logging.ERROR, logger="taskq.pool.prefork"):
        h.run_until(lambda: first not in h.pool.pids() and h.ready_children() == 1)
    assert any("not ready after 3600.0 s" in r.getMessage() for r in caplog.records)


def test_autoscale_gives_a_child_back_after_keepalive_on_the_loop_clock(harness):
    h, clock = on_jump_clock(harness, concurrency=2)
    h.start()
    h.pool.autoscale(2, 1)
    h.pool.autoscale_tick(0)  # idle from now on
    clock.jump(prefork.AUTOSCALE_KEEPALIVE - 1)
    h.pool.autoscale_tick(0)
    assert h.pool.size() == 2
    clock.jump(1)
    h.pool.autoscale_tick(0)
    assert h.pool.size() == 1
    h.run_until(lambda: len(h.pool.children) == 1)
