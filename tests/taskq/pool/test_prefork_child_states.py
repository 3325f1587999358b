"""The states real children go through in the prefork pool (the table itself is in
test_child_state.py): each move the pool makes is one the table allows."""

from __future__ import annotations

import logging
import time

import pytest
from pool_support import app

from taskq.pool.child_state import Child, ChildState

S = ChildState


@pytest.fixture
def moves(monkeypatch: pytest.MonkeyPatch) -> dict[int, list[ChildState]]:
    seen: dict[int, list[ChildState]] = {}
    move = Child.move

    def recording(child: Child, new: ChildState) -> None:
        move(child, new)
        seen.setdefault(child.pid, [S.STARTING]).append(new)

    monkeypatch.setattr(Child, "move", recording)
    return seen


def test_children_stopped_before_ready_leave_without_counting_as_early_deaths(
        harness, moves, caplog, tmp_path):
    hold = tmp_path / "hold"  # the children wait in their init hook until it is gone
    hold.write_text("")

    def held() -> None:
        while hold.exists():
            time.sleep(0.01)

    app.hooks.worker_process_init.append(held)  # the harness fixture takes it out again
    h = harness(start=False, concurrency=2)
    h.pool.start(h.loop)
    h.run_until(lambda: len(h.pool.pids()) == 2)
    pids = h.pool.pids()
    assert not any(c.ready for c in h.pool.children.values())
    h.pool.stop()  # neither child has been read saying ready
    hold.unlink()
    with caplog.at_level(logging.WARNING, logger="taskq.pool.prefork"):
        h.run_until(lambda: not h.pool.children)
    assert {pid: moves[pid] for pid in pids} == {
        pid: [S.STARTING, S.RETIRING_UNREADY, S.RETIRING, S.DEAD] for pid in pids}
    assert h.pool._early_deaths == 0 and not caplog.records


def test_a_child_recycled_after_its_tasks_retires_then_dies_quietly(harness, moves, caplog):
    h = harness(concurrency=1, worker_max_tasks_per_child=1)
    [first] = h.pool.pids()
    with caplog.at_level(logging.WARNING, logger="taskq.pool.prefork"):
        h.submit("sleep", 0)
        h.run_until(lambda: len(h.done) == 1 and first not in h.pool.pids()
                    and h.ready_children() == 1)
    assert moves[first] == [S.STARTING, S.READY, S.RETIRING, S.DEAD]
    assert not caplog.records
