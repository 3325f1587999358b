"""nothing-lost under acks_late: a main process told to stop (SIGQUIT) may still see its child
start a job it held a moment later; the job was never acked, so the next worker runs it again,
as the table's "main process dies" row allows (found by explore: amqp, -O fast,
max-tasks-per-child 1, a cold shutdown while a task was being killed). The same holds for a
connection cut a moment before the start."""

from __future__ import annotations

from pathlib import Path

from chaos import FaultRecord
from stress.ledger import Book, Entry
from stress.oracles import Evidence, nothing_lost
from stress.suites import Suite, parse_cell


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _passes(acks: str, fault_at: float, kind: str = "cold-shutdown") -> bool:
    book = Book()
    book.add([_e("published", "t", 1, 9.0, kind="sleep", expect="ok"),
              _e("started", "t", 7, 10.31),
              _e("started", "t", 8, 15.5), _e("finished", "t", 8, 16.1, outcome="ok")])
    fault = FaultRecord(mono=fault_at, wall=fault_at, kind=kind, target="worker main",
                        outcome="ok", detail={"pids": [5]})
    ev = Evidence(suite=Suite("t", "", Path("t.toml")), cell=parse_cell(f"acks={acks}"),
                  book=book, faults=[fault], deadlock=False, deadlock_pending=0,
                  stall_bound=10.0, baseline=None, health=None, worker_starts=2,
                  is_taskq=True, publish_errors=0, directory=Path("."))
    return nothing_lost(ev).passed


def test_an_acks_late_job_started_just_after_sigquit_may_run_again() -> None:
    assert _passes("late", fault_at=10.30)


def test_an_acks_late_job_a_child_started_just_after_a_connection_cut_may_run_again() -> None:
    """Seen in kill-connections (seed 3): the job was written to its child before the cut and
    started 1.7 ms after it; its ack could not be sent and the broker delivered it again."""
    assert _passes("late", fault_at=10.308, kind="proxy-cut")


def test_a_stop_long_before_the_start_is_no_excuse() -> None:
    assert not _passes("late", fault_at=5.0)


def test_early_acks_get_no_such_window() -> None:
    assert not _passes("early", fault_at=10.30)
