"""nothing-lost under acks_late + reject_on_worker_lost when a main process dies between
publishing a lost task's counted copy and acking the original: both come back, each lineage
is requeued on its own, and consecutive starts belong to different lineages (mixed seed 1,
amqp, -O fast: an exit task ran 8 times, the last two 0.08 s apart, each after its own
requeue). Every rerun must still have a cause of its own."""

from __future__ import annotations

from pathlib import Path

from chaos import FaultRecord
from stress.ledger import Book, Entry
from stress.oracles import Evidence, nothing_lost
from stress.suites import Suite, parse_cell

# (start, lost, requeued) of the exit task in mixed seed 1, cell 2 (seconds, rounded)
RUNS = [(62.88, 62.885, True), (63.80, 63.804, True), (69.89, 69.894, True),
        (70.90, 70.908, True), (82.96, 82.967, True), (84.64, 84.640, True),
        (86.80, 86.799, False), (86.88, 86.885, False)]


def _e(event: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, "x", pid, mono, mono, dict(extra))


def _passes(runs: list[tuple[float, float, bool]], main_kills: list[float],
            acks: str = "late-reject", cuts: tuple[float, ...] = ()) -> bool:
    book = Book()
    entries = [_e("published", 1, 60.0, kind="exit", expect="lost")]
    for n, (start, lost, requeued) in enumerate(runs):
        entries += [_e("started", 100 + n, start, kind="exit"),
                    _e("lost", 2, lost, name="stress.exit", error="WorkerLostError",
                       requeued=requeued)]
    book.add(entries)
    faults = [FaultRecord(mono=at, wall=at, kind="kill-main", target="worker main",
                          outcome="ok", detail={"pids": [2]}) for at in main_kills]
    faults += [FaultRecord(mono=at, wall=at, kind="proxy-cut", target="proxy", outcome="ok",
                           detail={"closed": 2}) for at in cuts]
    ev = Evidence(suite=Suite("t", "", Path("t.toml")), cell=parse_cell(f"acks={acks}"),
                  book=book, faults=faults, deadlock=False, deadlock_pending=0,
                  stall_bound=10.0, baseline=None, health=None, worker_starts=2,
                  is_taskq=True, publish_errors=0, directory=Path("."))
    return nothing_lost(ev).passed


def test_two_lineages_after_a_main_process_died_mid_republish_are_allowed() -> None:
    assert _passes(RUNS, main_kills=[62.906])


def test_a_run_with_no_cause_of_its_own_is_still_forbidden() -> None:
    # without the main-process kill one of the eight runs has no cause
    assert not _passes(RUNS, main_kills=[])
    # a kill long before the task was about is no cause
    assert not _passes(RUNS, main_kills=[20.0])
    # nor is it under plain acks_late (nothing is republished there)
    assert not _passes(RUNS, main_kills=[62.906], acks="late")


def test_a_cut_between_republishing_a_lost_task_and_acking_it_is_a_cause() -> None:
    """canvas seed 1, amqp, acks_late + reject_on_worker_lost: a child was killed, the worker
    republished its counted copy and the connection was cut before the original's ack went
    out, so the broker redelivered the original too: the copy and the original each ran."""
    # (the copy waited 1.9 s for a child: its start is no longer near the cut)
    runs = [(10.0, 10.1, True), (12.0, 12.2, False), (14.0, 14.2, False)]
    assert not _passes(runs, main_kills=[])
    assert _passes(runs, main_kills=[], cuts=(10.15,))
    # a cut after the last start explains nothing
    assert not _passes(runs, main_kills=[], cuts=(15.0,))
