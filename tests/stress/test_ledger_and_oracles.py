"""The ledger and the oracles on hand-made histories: what each table cell allows."""

from __future__ import annotations

import os
from pathlib import Path

from chaos import FaultRecord
from stress.ledger import Book, Entry, LedgerReader, LedgerWriter
from stress.oracles import (
    Evidence,
    deadlock,
    head_of_line,
    lost_process,
    not_vacuous,
    nothing_lost,
)
from stress.suites import Suite, parse_cell


def test_the_reader_skips_a_torn_last_line_and_reads_it_once_whole(tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path, "task")
    writer.write("started", "a")
    path = tmp_path / f"task-{os.getpid()}.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"ev":"finished","id":"a"')  # a process killed mid-line
    reader = LedgerReader(tmp_path)
    assert [e.event for e in reader.poll()] == ["started"]
    with open(path, "ab") as fh:
        fh.write(b',"pid":1,"mono":2.0,"wall":3.0}\n')
    assert [(e.event, e.task_id) for e in reader.poll()] == [("finished", "a")]
    assert reader.poll() == []


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _evidence(entries: list[Entry], faults: list[FaultRecord], acks: str = "early",
              suite: Suite | None = None) -> Evidence:
    book = Book()
    book.add(entries)
    return Evidence(suite=suite or Suite("t", "", Path("t.toml")),
                    cell=parse_cell(f"acks={acks}"), book=book, faults=faults,
                    deadlock=False, deadlock_pending=0, stall_bound=10.0, baseline=None,
                    health=None, worker_starts=1, is_taskq=True, publish_errors=0,
                    directory=Path("."))


def _kill(at: float, pid: int) -> FaultRecord:
    return FaultRecord(mono=at, wall=at, kind="kill-child", target="children", outcome="ok",
                       detail={"pids": [pid]})


def _main_kill(at: float) -> FaultRecord:
    return FaultRecord(mono=at, wall=at, kind="kill-main", target="main", outcome="ok")


def test_a_killed_child_fails_its_task_once_and_the_latency_is_measured() -> None:
    entries = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"),
               _e("started", "a", 7, 1.0), _e("lost", "a", 2, 2.004, requeued=False)]
    ev = _evidence(entries, [_kill(2.0, 7)])
    assert nothing_lost(ev).passed
    verdict = lost_process(ev)
    assert verdict.passed and verdict.figures["p50_ms"] == 4.0


def test_a_task_that_started_and_never_ended_is_lost() -> None:
    entries = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"), _e("started", "a", 7, 1)]
    verdict = nothing_lost(_evidence(entries, []))
    assert not verdict.passed and "never ended" in verdict.message
    assert verdict.figures["lost"] == 1


def test_a_child_killed_after_its_main_process_is_no_missed_detection() -> None:
    """Mixed seed 2 (Redis, acks_late): a child running a task was killed 0.8 ms after its
    main process; nobody could notice it, and the next worker ran the task again (the
    table's main-process row). A child killed while its main process lives still counts."""
    entries = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"),
               _e("started", "a", 7, 1.0),
               _e("started", "a", 9, 6.0), _e("finished", "a", 9, 6.2, outcome="ok")]
    verdict = lost_process(_evidence(entries, [_main_kill(2.0), _kill(2.001, 7)], acks="late"))
    assert verdict.passed, verdict.message
    verdict = lost_process(_evidence(entries, [_kill(2.0, 7), _main_kill(2.5)], acks="late"))
    assert not verdict.passed and "never reached an end" in verdict.message


def test_a_killed_task_that_is_never_reported_fails_lost_process() -> None:
    entries = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"), _e("started", "a", 7, 1)]
    verdict = lost_process(_evidence(entries, [_kill(2.0, 7)]))
    assert not verdict.passed and "never reached an end" in verdict.message


def test_early_acks_lose_a_running_task_only_when_the_main_process_dies() -> None:
    entries = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"), _e("started", "a", 7, 1)]
    assert nothing_lost(_evidence(entries, [_main_kill(3.0)])).figures["lost_allowed"] == 1
    assert not nothing_lost(_evidence(entries, [_main_kill(3.0)], acks="late")).passed


def test_early_acks_lose_a_task_the_pool_held_unstarted_only_when_the_main_process_dies(
        ) -> None:
    """The early ack goes before the job reaches the pool (issue 13 #7): a main process that
    dies before the child starts it loses the task without a start record, as many as its
    pool held (concurrency 2 here); without a main-process kill that is a lost task."""
    held = [_e("published", t, 1, 0.0, kind="sleep", expect="ok") for t in "ab"]
    verdict = nothing_lost(_evidence(held, [_main_kill(3.0)]))
    assert verdict.passed and verdict.figures["lost_unstarted"] == 2
    assert not nothing_lost(_evidence(held, [])).passed
    assert not nothing_lost(_evidence(held, [_main_kill(3.0)], acks="late")).passed
    too_many = [_e("published", t, 1, 0.0, kind="sleep", expect="ok") for t in "abc"]
    verdict = nothing_lost(_evidence(too_many, [_main_kill(3.0)]))
    assert not verdict.passed and "lost before they started" in verdict.message


def test_an_early_ack_task_a_child_starts_just_after_its_main_process_died_may_be_lost(
        ) -> None:
    """The kernel tells the children of a killed main process some ms after the kill (it
    frees the parent's memory first); a child may start a job it held meanwhile, already
    acked: the table's "lost" (explore on main: started 12 ms after the kill). A start well
    after the kill is the next worker's, and must end."""
    orphan = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"),
              _e("started", "a", 7, 3.012)]
    assert nothing_lost(_evidence(orphan, [_main_kill(3.0)])).figures["lost_allowed"] == 1
    assert deadlock(_evidence(orphan, [_main_kill(3.0)])).passed
    late = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"), _e("started", "a", 9, 4.5)]
    assert not nothing_lost(_evidence(late, [_main_kill(3.0)])).passed


def test_early_ack_tasks_a_killed_pool_held_unstarted_do_not_fail_the_drain() -> None:
    """They are the table's "lost" (nothing-lost bounds how many); found by explore: every
    kill-main case with -O fast and a backlog ended "with N task(s) unresolved" on main."""
    held = [_e("published", t, 1, 0.0, kind="sleep", expect="ok") for t in "ab"]
    assert deadlock(_evidence(held, [_main_kill(3.0)])).passed
    assert not deadlock(_evidence(held, [])).passed
    assert not deadlock(_evidence(held, [_main_kill(3.0)], acks="late")).passed


def test_early_acks_never_rerun_a_started_task_after_the_main_process_dies() -> None:
    """The early ack was sent before the child got the job, so the broker has nothing to
    deliver again: a second start is forbidden, however close to the kill."""
    twice = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"),
             _e("started", "a", 7, 1.0), _e("started", "a", 8, 9.0),
             _e("finished", "a", 8, 9.5, outcome="ok")]
    verdict = nothing_lost(_evidence(twice, [_main_kill(1.003)]))
    assert not verdict.passed and verdict.figures["forbidden_duplicates"] == 1


def test_running_twice_is_allowed_only_where_the_table_says_so() -> None:
    twice = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"),
             _e("started", "a", 7, 1.0), _e("started", "a", 8, 9.0),
             _e("finished", "a", 8, 9.5, outcome="ok")]
    # acks_late and the main process died while it ran: redelivered after the lease
    assert nothing_lost(_evidence(twice, [_main_kill(3.0)], acks="late")).passed
    # early acks and no fault: a forbidden duplicate
    verdict = nothing_lost(_evidence(twice, []))
    assert not verdict.passed and verdict.figures["forbidden_duplicates"] == 1


def test_a_task_that_fails_with_no_fault_near_it_is_a_spurious_worker_lost() -> None:
    entries = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"),
               _e("started", "a", 7, 1.0), _e("lost", "a", 2, 1.5, requeued=False,
                                              error="WorkerLostError")]
    verdict = nothing_lost(_evidence(entries, []))
    assert not verdict.passed and "although no fault hit it" in verdict.message


def test_a_cell_whose_kills_missed_every_running_task_is_vacuous() -> None:
    suite = Suite("t", "", Path("t.toml"), faults=[{"kind": "kill-children"}],
                  oracles={"min_kills_of_running": 1, "min_tasks": 1})
    entries = [_e("published", "a", 1, 0.0, kind="noop", expect="ok"),
               _e("started", "a", 7, 1.0), _e("finished", "a", 7, 1.1, outcome="ok")]
    verdict = not_vacuous(_evidence(entries, [_kill(5.0, 7)], suite=suite))
    assert not verdict.passed and "0 kills hit a running task" in verdict.message


def test_a_cut_while_tasks_wait_unfinished_hits_work_though_none_runs_then() -> None:
    """Canvas seed 2 on Redis: seven cuts, each between two millisecond tasks, while 8-22
    published tasks had not ended: a connection fault hits the messages the worker holds,
    so it is not vacuous. A kill still needs a running task."""
    suite = Suite("t", "", Path("t.toml"), faults=[{"kind": "cut-connections"}],
                  oracles={"min_tasks": 1})
    entries = [_e("published", "a", 1, 0.0, kind="noop", expect="ok"),
               _e("published", "b", 1, 0.0, kind="noop", expect="ok"),
               _e("started", "a", 7, 1.0), _e("finished", "a", 7, 1.01, outcome="ok"),
               _e("started", "b", 7, 3.0), _e("finished", "b", 7, 3.01, outcome="ok")]
    cut = FaultRecord(mono=2.0, wall=2.0, kind="proxy-cut", target="proxy", outcome="ok",
                      detail={"closed": 4})
    assert not_vacuous(_evidence(entries, [cut], suite=suite)).passed
    late = FaultRecord(mono=5.0, wall=5.0, kind="proxy-cut", target="proxy", outcome="ok",
                       detail={"closed": 4})
    verdict = not_vacuous(_evidence(entries, [late], suite=suite))
    assert not verdict.passed and "no cut-connections fault" in verdict.message


def test_a_main_kill_while_published_tasks_wait_hits_work_though_none_runs_then() -> None:
    """Mixed seed 3 (Redis, late-reject): the main process was killed at an instant when
    child kills had both children restarting and 206 published tasks had not ended; the
    messages it held went back to the queue, as the table's row says: not vacuous."""
    suite = Suite("t", "", Path("t.toml"), faults=[{"kind": "kill-main"}],
                  oracles={"min_tasks": 1})
    entries = [_e("published", "a", 1, 0.0, kind="noop", expect="ok"),
               _e("started", "a", 7, 4.0), _e("finished", "a", 7, 4.01, outcome="ok")]
    assert not_vacuous(_evidence(entries, [_main_kill(3.0)], suite=suite)).passed
    verdict = not_vacuous(_evidence(entries, [_main_kill(5.0)], suite=suite))
    assert not verdict.passed and "no kill-main fault" in verdict.message


def test_a_short_task_waiting_while_a_child_is_idle_is_head_of_line_blocking() -> None:
    suite = Suite("t", "", Path("t.toml"), oracles={"max_short_wait": 0.5})
    long_run = [_e("published", "L", 1, 0.0, kind="sleep", expect="ok"),
                _e("started", "L", 7, 0.1), _e("finished", "L", 7, 3.0, outcome="ok")]
    short = [_e("published", "s", 1, 0.2, kind="noop", expect="ok"),
             _e("started", "s", 7, 3.0), _e("finished", "s", 7, 3.01, outcome="ok")]
    # -c 2, one child busy with the long task, the other idle: the short one waited 2.8 s
    verdict = head_of_line(_evidence(long_run + short, [], suite=suite))
    assert not verdict.passed and verdict.figures["stuck"] == 1
    # both children busy with long tasks: waiting is no blocking
    other = [_e("published", "M", 1, 0.0, kind="sleep", expect="ok"),
             _e("started", "M", 8, 0.1), _e("finished", "M", 8, 3.0, outcome="ok")]
    assert head_of_line(_evidence(long_run + other + short, [], suite=suite)).passed


def test_a_shorter_run_needs_proportionally_fewer_kills_to_count() -> None:
    suite = Suite("t", "", Path("t.toml"), duration=10, faults=[{"kind": "kill-children"}],
                  oracles={"min_kills_of_running": 5, "min_tasks": 1})
    entries = [_e("published", "a", 1, 0.0, kind="sleep", expect="ok"),
               _e("started", "a", 7, 1.0), _e("lost", "a", 2, 2.01, requeued=False),
               _e("published", "b", 1, 0.0, kind="sleep", expect="ok"),
               _e("started", "b", 8, 1.0), _e("lost", "b", 2, 3.01, requeued=False)]
    ev = _evidence(entries, [_kill(2.0, 7), _kill(3.0, 8)], suite=suite)
    assert not not_vacuous(ev).passed  # 2 of 5 over the suite's 10 s
    ev.duration = 3.0
    assert not_vacuous(ev).passed  # 2 of ceil(5 * 3 / 10) = 2 over a 3 s run
