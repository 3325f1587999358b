"""The main process's loop (taskq.worker.loop): the posted FIFO and which timer errors reach
the worker."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from taskq.worker.loop import Loop


class Gone(Exception):
    """Stands for a transport's connection error."""


@pytest.fixture
def loop() -> Iterator[Loop]:
    loop = Loop()
    yield loop
    loop.close()


def _run(iterations: Iterator[None], until: object, deadline: float = 5.0) -> None:
    end = time.monotonic() + deadline
    while not until():  # type: ignore[operator]
        assert time.monotonic() < end, "the loop did not get there in time"
        next(iterations)


def test_a_posted_callback_that_raises_does_not_stall_the_ones_after_it(loop: Loop) -> None:
    """Given three posted callbacks of which the first raises, when the loop runs, then the
    error reaches the loop's error handler and the other two still run, in order; later
    posts run too (the FIFO is not left marked as scheduled)."""
    ran: list[str] = []
    errors: list[BaseException] = []

    def boom() -> None:
        raise RuntimeError("a bug in a posted callback")

    def handled(exc: BaseException) -> bool:
        errors.append(exc)
        return True

    loop.post(boom)
    loop.post(ran.append, "second")
    loop.post(ran.append, "third")
    iterations = loop.iterate_handling(handled)
    _run(iterations, lambda: len(ran) == 2)
    assert ran == ["second", "third"]
    assert [str(e) for e in errors] == ["a bug in a posted callback"]

    loop.post(ran.append, "later")
    _run(iterations, lambda: len(ran) == 3)
    assert ran[-1] == "later"


def test_timer_errors_propagate_per_the_set_in_force_now_not_at_loop_start(
        loop: Loop) -> None:
    """kombu's create_loop reads hub.propagate_errors once. Given a loop started while the set
    was empty (a worker started with the broker down; or after a teardown), when a
    connection sets it later, then a timer raising one of those errors reaches the error
    handler (not only kombu's "Error in timer" log)."""
    errors: list[BaseException] = []

    def handled(exc: BaseException) -> bool:
        errors.append(exc)
        return True

    loop.hub.propagate_errors = ()
    iterations = loop.iterate_handling(handled)
    next(iterations)
    loop.hub.propagate_errors = (Gone,)  # connected

    def fail() -> None:
        raise Gone("heartbeat missed")

    loop.hub.call_later(0.0, fail)
    _run(iterations, lambda: errors)
    assert isinstance(errors[0], Gone)

    # torn down and connected again: the same holds for the loop after that
    loop.hub.propagate_errors = ()
    next(iterations)
    loop.hub.propagate_errors = (Gone,)
    loop.hub.call_later(0.0, fail)
    _run(iterations, lambda: len(errors) == 2)
