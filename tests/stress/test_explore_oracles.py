"""Explore's oracles on hand-made histories: pool capacity, loop lag, resources settle."""

from __future__ import annotations

from pathlib import Path

from chaos import FaultRecord
from stress.ledger import Book, Entry
from stress.oracles import Evidence, loop_lag, pool_capacity, resources_settle
from stress.suites import Suite, parse_cell
from stress.workerproc import Health


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _ev(entries: list[Entry], faults: list[FaultRecord] | None = None, *,
        directory: Path = Path("."), **oracles: object) -> Evidence:
    book = Book()
    book.add(entries)
    suite = Suite("t", "", Path("t.toml"), oracles=dict(oracles))
    return Evidence(suite=suite, cell=parse_cell("concurrency=2"), book=book,
                    faults=faults or [], deadlock=False, deadlock_pending=0, stall_bound=10.0,
                    baseline=Health(1, 2, 0, 20, 1000), health=Health(1, 2, 0, 21, 1000),
                    worker_starts=1, is_taskq=True, publish_errors=0, directory=directory)


def _one_child_stuck() -> list[Entry]:
    """Two children; from t=10 only pid 8 runs tasks while three more wait (issue 13 #1)."""
    entries = []
    for n in range(3):
        entries += [_e("published", f"w{n}", 1, 10.0, kind="sleep", expect="ok")]
    t = 10.0
    for task in ["w0", "w1", "w2"]:
        entries += [_e("started", task, 8, t), _e("finished", task, 8, t + 8.0, outcome="ok")]
        t += 8.0
    entries += [_e("published", "x", 1, 0.0, kind="noop", expect="ok"),
                _e("started", "x", 7, 0.1), _e("finished", "x", 7, 0.2, outcome="ok")]
    return entries


def test_tasks_waiting_while_a_child_idles_fail_pool_capacity() -> None:
    verdict = pool_capacity(_ev(_one_child_stuck(), pool_capacity_after=10.0, capacity=2))
    assert not verdict.passed
    assert verdict.figures["longest_idle_wait_s"] == 16.0


def test_a_busy_pool_or_a_fault_nearby_is_not_a_capacity_loss() -> None:
    assert pool_capacity(_ev(_one_child_stuck(), pool_capacity_after=10.0, capacity=1)).passed
    cut = FaultRecord(mono=9.0, wall=9.0, kind="proxy-cut", target="proxy", outcome="ok")
    assert pool_capacity(_ev(_one_child_stuck(), [cut], pool_capacity_after=10.0,
                             capacity=2, fault_grace=20.0)).passed


def test_the_worker_s_lag_warnings_are_judged(tmp_path: Path) -> None:
    (tmp_path / "worker-1.log").write_text(
        "[WARNING] event loop lagged 0.700 s behind its timers; something in the main process "
        "blocked\n[WARNING] event loop lagged 6.250 s behind its timers; something ...\n")
    verdict = loop_lag(_ev([], directory=tmp_path, max_loop_lag=5.0))
    assert not verdict.passed and verdict.figures["max_lag_s"] == 6.25
    assert loop_lag(_ev([], directory=tmp_path, max_loop_lag=10.0)).passed


def test_children_and_fds_must_come_back_to_their_start_values() -> None:
    ev = _ev([], settle_fds=4)
    assert resources_settle(ev).passed
    ev.health = Health(1, 1, 0, 21, 1000)
    assert "1 children at the end" in resources_settle(ev).message
    ev.health = Health(1, 2, 0, 40, 1000)
    assert "40 open fds" in resources_settle(ev).message
