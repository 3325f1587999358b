"""nothing-lost under early acks: a task that started while a black hole was on could not get
its ack out (the broker never heard it), so its redelivery is the "ack never left" case the
oracle allows right after a start; found by explore (every early-ack case with a black hole
failed on any worker)."""

from __future__ import annotations

from pathlib import Path

from chaos import FaultRecord
from stress.ledger import Book, Entry
from stress.oracles import Evidence, nothing_lost
from stress.suites import Suite, parse_cell


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _verdict(faults: list[FaultRecord]) -> bool:
    book = Book()
    book.add([_e("published", "t", 1, 9.0, kind="sleep", expect="ok"),
              _e("started", "t", 7, 10.31), _e("finished", "t", 7, 10.89, outcome="ok"),
              _e("started", "t", 8, 15.5), _e("finished", "t", 8, 16.1, outcome="ok")])
    ev = Evidence(suite=Suite("t", "", Path("t.toml")), cell=parse_cell("acks=early"),
                  book=book, faults=faults, deadlock=False, deadlock_pending=0,
                  stall_bound=10.0, baseline=None, health=None, worker_starts=1,
                  is_taskq=True, publish_errors=0, directory=Path("."))
    return nothing_lost(ev).passed


def _blackhole(at: float, duration: float) -> FaultRecord:
    return FaultRecord(mono=at, wall=at, kind="proxy-blackhole", target="proxy", outcome="ok",
                       params={"duration": duration})


def test_a_rerun_of_a_task_started_inside_a_black_hole_is_allowed_under_early_acks() -> None:
    assert _verdict([_blackhole(10.0, 4.2)])


def test_a_rerun_with_no_fault_or_a_black_hole_long_over_is_still_forbidden() -> None:
    assert not _verdict([])
    assert not _verdict([_blackhole(2.0, 4.2)])


def test_a_task_started_just_after_a_main_process_kill_still_may_not_run_again() -> None:
    """Issue 13 #7: a one-shot fault before the start is no excuse (the window is after it)."""
    kill = FaultRecord(mono=10.3, wall=10.3, kind="kill-main", target="worker main",
                       outcome="ok", detail={"pids": [5]})
    assert not _verdict([kill])


def test_a_task_that_ended_just_before_a_black_hole_began_may_run_again_under_early_acks(
        ) -> None:
    """An early ack written a moment before the hole (a no-op that started and ended just
    then) may still sit in the proxy when the hole swallows it; explore met it on RabbitMQ
    (the hole 5 ms after the start). A hole long after the start is no excuse."""
    assert _verdict([_blackhole(10.95, 4.0)])  # 0.64 s after the start, after the end
    assert not _verdict([_blackhole(11.5, 4.0)])  # 1.19 s after the start
