"""nothing-lost on a hard-limit task whose child an injected kill hit inside the limit: the
table says WorkerLostError ("running; its child dies"), not TimeLimitExceeded."""

from __future__ import annotations

from pathlib import Path

from chaos import FaultRecord
from stress.ledger import Book, Entry
from stress.oracles import Evidence, nothing_lost
from stress.suites import Suite, parse_cell


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _ev(entries: list[Entry], faults: list[FaultRecord]) -> Evidence:
    book = Book()
    book.add(entries)
    return Evidence(suite=Suite("t", "", Path("t.toml")), cell=parse_cell("concurrency=2"),
                    book=book, faults=faults, deadlock=False, deadlock_pending=0,
                    stall_bound=10.0, baseline=None, health=None, worker_starts=1,
                    is_taskq=True, publish_errors=0, directory=Path("."))


def _hard_limit_task_lost(error: str) -> list[Entry]:
    return [_e("published", "h", 1, 1.0, kind="hard_limit", expect="timeout"),
            _e("started", "h", 7, 1.1, kind="hard_limit"),
            _e("lost", "h", 2, 1.25, name="stress.hard_limit", error=error, requeued=False)]


def _kill(pid: int, at: float) -> FaultRecord:
    return FaultRecord(mono=at, wall=at, kind="kill-child", target="worker children",
                       outcome="ok", detail={"pids": [pid]})


def test_a_hard_limit_task_whose_child_an_injected_kill_hit_may_end_worker_lost() -> None:
    verdict = nothing_lost(_ev(_hard_limit_task_lost("WorkerLostError"), [_kill(7, 1.2)]))
    assert verdict.passed, verdict.message
    assert verdict.figures["wrong_outcome"] == 0


def test_a_hard_limit_task_lost_without_a_kill_of_its_child_still_fails() -> None:
    assert not nothing_lost(_ev(_hard_limit_task_lost("WorkerLostError"), [])).passed
    # a kill of another child does not excuse it
    assert not nothing_lost(_ev(_hard_limit_task_lost("WorkerLostError"),
                                [_kill(9, 1.2)])).passed
    # nor does any other error than the one a killed child gives
    assert not nothing_lost(_ev(_hard_limit_task_lost("ValueError"), [_kill(7, 1.2)])).passed


def test_a_hard_limit_task_killed_before_its_body_noted_the_start_may_end_worker_lost() -> None:
    """Mixed seed 1: the kill landed after the child took the job, before the task's body
    wrote its start; the worker reported the loss 3 ms after the kill."""
    entries = [_e("published", "h", 1, 1.0, kind="hard_limit", expect="timeout"),
               _e("lost", "h", 2, 1.253, name="stress.hard_limit", error="WorkerLostError",
                  requeued=False)]
    verdict = nothing_lost(_ev(entries, [_kill(7, 1.25)]))
    assert verdict.passed, verdict.message
    # with no kill near the loss it is still a wrong outcome
    assert not nothing_lost(_ev(entries, [_kill(7, -5.0)])).passed


def test_a_kill_recorded_just_after_the_worker_reported_the_loss_still_counts() -> None:
    """Mixed seed 1: the worker logged the death 5-7 ms before the kill's record was written
    (the record follows the signal)."""
    verdict = nothing_lost(_ev(_hard_limit_task_lost("WorkerLostError"), [_kill(7, 1.257)]))
    assert verdict.passed, verdict.message
    assert not nothing_lost(_ev(_hard_limit_task_lost("WorkerLostError"),
                                [_kill(7, 9.0)])).passed
