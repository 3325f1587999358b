"""The canvas oracle on hand-made ledgers: what a chord, a chain and a group may and may not
do under the delivery table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaos import FaultRecord
from stress.canvas_oracle import canvas, owed
from stress.ledger import Book, Entry
from stress.oracles import Evidence, nothing_lost, unresolved
from stress.suites import Suite, load_suite, parse_cell

SUITE = Suite("t", "", Path("t.toml"), canvas={"chord": 1, "chain": 1, "group": 1},
              oracles={"min_chord_bodies": 0})


def _e(event: str, task_id: str, pid: int, mono: float, **extra: Any) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _node(task_id: str, role: str, after: tuple[str, ...] = (),
          resent_by: tuple[str, ...] = (), client: bool = False) -> dict[str, Any]:
    return {"id": task_id, "kind": "noop", "expect": "ok", "role": role, "after": list(after),
            "resent_by": list(resent_by), "client": client}


def _canvas(canvas_id: str, shape: str, *nodes: dict[str, Any]) -> list[Entry]:
    """The publisher's entries for a canvas: ``canvas``, then ``published`` for what it sent."""
    entries = [_e("canvas", canvas_id, 1, 0.0, shape=shape, nodes=list(nodes))]
    entries += [_e("published", n["id"], 1, 0.0, kind="noop", expect="ok")
                for n in nodes if n["client"]]
    return entries


def _run(task_id: str, pid: int, start: float, end: float) -> list[Entry]:
    return [_e("started", task_id, pid, start), _e("finished", task_id, pid, end, outcome="ok")]


def _evidence(entries: list[Entry], faults: list[FaultRecord] | None = None,
              acks: str = "early", suite: Suite = SUITE) -> Evidence:
    book = Book()
    book.add(entries)
    return Evidence(suite=suite, cell=parse_cell(f"acks={acks}"), book=book,
                    faults=faults or [], deadlock=False, deadlock_pending=0, stall_bound=10.0,
                    baseline=None, health=None, worker_starts=1, is_taskq=True,
                    publish_errors=0, directory=Path("."))


def _chord(body_runs: list[tuple[int, float, float]],
           parts: tuple[tuple[float, float], ...] = ((1.0, 1.1), (1.0, 1.5))) -> list[Entry]:
    """A chord of ``len(parts)`` header tasks (each run once, from start to end) and its body
    run as ``body_runs`` says (pid, start, end)."""
    ids = tuple(f"h{n}" for n in range(len(parts)))
    entries = _canvas("c1", "chord",
                      *(_node(i, f"header {n + 1}/{len(ids)}", client=True)
                        for n, i in enumerate(ids)),
                      _node("body", "body", after=ids))
    for n, (start, end) in enumerate(parts):
        entries += _run(ids[n], 10 + n, start, end)
    for pid, start, end in body_runs:
        entries += _run("body", pid, start, end)
    return entries


def _chain(steps: dict[str, tuple[float, float]]) -> list[Entry]:
    entries = _canvas("c2", "chain", _node("s1", "step 1/3", client=True),
                      _node("s2", "step 2/3", after=("s1",), resent_by=("s1",)),
                      _node("s3", "step 3/3", after=("s2",), resent_by=("s2",)))
    for n, (task_id, (start, end)) in enumerate(steps.items()):
        entries += _run(task_id, 20 + n, start, end)
    return entries


def _cut(at: float) -> FaultRecord:
    return FaultRecord(mono=at, wall=at, kind="proxy-cut", target="proxy", outcome="ok",
                       detail={"closed": 3})


def test_a_good_ledger_of_a_chord_a_chain_and_a_group_passes() -> None:
    entries = _chord([(30, 1.6, 1.7)])
    entries += _chain({"s1": (2.0, 2.1), "s2": (2.2, 2.3), "s3": (2.4, 2.5)})
    entries += _canvas("c3", "group", _node("g1", "member 1/2", client=True),
                       _node("g2", "member 2/2", client=True))
    entries += _run("g1", 40, 3.0, 3.1) + _run("g2", 41, 3.0, 3.2)
    ev = _evidence(entries)
    verdict = canvas(ev)
    assert verdict.passed, verdict.message
    assert verdict.figures["canvases"] == 3 and verdict.figures["bodies_run"] == 1
    assert nothing_lost(ev).passed
    assert unresolved(ev.book, [], ev.cell) == []


def test_a_chord_body_that_starts_before_the_last_part_finished_fails() -> None:
    verdict = canvas(_evidence(_chord([(30, 1.2, 1.3)])))  # the second part ends at 1.5
    assert not verdict.passed
    assert "body" in verdict.message and "before h1" in verdict.message
    assert verdict.figures["out_of_order"] == 1


def test_a_chord_body_that_runs_after_a_failed_part_fails() -> None:
    entries = _chord([(30, 1.6, 1.7)], parts=((1.0, 1.1),))
    entries += [_e("started", "h9", 12, 1.0), _e("lost", "h9", 2, 1.2, requeued=False)]
    entries[0].extra["nodes"][1]["after"].append("h9")
    verdict = canvas(_evidence(entries))
    assert not verdict.passed and "never succeeded" in verdict.message


def test_a_chord_body_run_twice_under_early_acks_fails() -> None:
    verdict = canvas(_evidence(_chord([(30, 1.6, 1.7), (31, 1.8, 1.9)])))
    assert not verdict.passed and "table forbids" in verdict.message
    assert verdict.figures["forbidden_duplicates"] == 1


def test_a_chord_body_run_twice_because_a_part_ran_twice_still_fails() -> None:
    # a redelivered part must not count again: its second run does not excuse a second body
    entries = _chord([(30, 1.6, 1.7), (31, 2.6, 2.7)]) + _run("h0", 12, 2.0, 2.1)
    verdict = canvas(_evidence(entries, acks="late-reject"))
    assert not verdict.passed and "a chord body runs once" in verdict.message


def test_a_chord_body_may_run_again_under_acks_late_after_a_cut() -> None:
    entries = _chord([(30, 1.6, 1.7), (31, 2.7, 2.8)])
    assert canvas(_evidence(entries, [_cut(2.65)], acks="late")).passed
    # early: acked before it ran; only an ack sent just before a cut may not have arrived
    assert not canvas(_evidence(entries, [_cut(2.65)], acks="early")).passed


def test_a_chord_body_that_never_runs_after_its_whole_header_succeeded_is_lost() -> None:
    ev = _evidence(_chord([]))
    verdict = canvas(ev)
    assert not verdict.passed and "owed" in verdict.message and "never started" in verdict.message
    assert [h.task_id for h in owed(ev.book, [], ev.cell)] == ["body"]
    assert [h.task_id for h in unresolved(ev.book, [], ev.cell)] == ["body"]  # the drain waits


def test_a_body_is_not_owed_when_a_part_was_lost_after_it_finished() -> None:
    # the child died after the body returned, before the outcome was stored: FAILURE
    entries = [*_chord([]), _e("lost", "h1", 2, 1.6, requeued=False)]
    ev = _evidence(entries)
    verdict = canvas(ev)
    assert verdict.passed, verdict.message
    assert verdict.figures["bodies_skipped"] == 1 and owed(ev.book, [], ev.cell) == []


def test_a_body_is_not_owed_when_a_second_run_of_a_part_was_lost() -> None:
    # acks_late, a cut: the part runs twice at once; one child is killed (FAILURE counted
    # first: the body fails with ChordError), the other finishes ok
    entries = [*_chord([], parts=((1.0, 1.3), (1.0, 1.1))), _e("started", "h0", 12, 1.1),
               _e("lost", "h0", 2, 1.2, requeued=False)]
    ev = _evidence(entries, [_cut(1.05)], acks="late")
    assert canvas(ev).passed and owed(ev.book, ev.faults, ev.cell) == []


def test_a_chain_step_that_runs_before_the_step_before_it_finished_fails() -> None:
    verdict = canvas(_evidence(_chain({"s1": (2.0, 2.1), "s2": (2.2, 2.6),
                                       "s3": (2.4, 2.5)})))
    assert not verdict.passed
    assert "s3" in verdict.message and "before s2" in verdict.message


def test_a_chain_step_run_twice_is_allowed_only_when_the_step_before_ran_twice() -> None:
    entries = _chain({"s1": (2.0, 2.1), "s2": (2.2, 2.3), "s3": (2.4, 2.5)})
    twice = entries + _run("s3", 50, 2.6, 2.7)
    assert not canvas(_evidence(twice)).passed
    assert not canvas(_evidence(twice + _run("s2", 51, 2.35, 2.4))).passed
    # the first step ran twice (a cause nothing-lost judges): it sent the rest twice
    assert canvas(_evidence(twice + _run("s2", 51, 2.35, 2.4) + _run("s1", 52, 2.15, 2.2))
                  ).passed


def _kill(at: float, pid: int) -> FaultRecord:
    return FaultRecord(mono=at, wall=at, kind="kill-child", target="worker children",
                       outcome="ok", detail={"pids": [pid]})


def test_a_chain_step_may_run_twice_when_the_step_before_lost_its_child_after_it_succeeded(
        ) -> None:
    """The worker sends what follows a task whose child died after it stored its outcome;
    what the child had sent but not reported goes out twice (canvas suite, sqlite seed 5,
    early acks: step 2 ran again 2 ms after its first run's child was killed). Under
    acks_late the second copy may run; under early acks it must be dropped (run-once key)."""
    entries = _chain({"s1": (2.0, 2.1), "s2": (2.2, 2.3), "s3": (2.4, 2.5)})
    twice = entries + _run("s2", 51, 2.35, 2.4)
    assert not canvas(_evidence(twice, acks="late")).passed
    # s1 ran in pid 20; killed after it finished and before pid 20 started anything else
    assert canvas(_evidence(twice, faults=[_kill(2.12, 20)], acks="late")).passed
    assert not canvas(_evidence(twice, faults=[_kill(2.12, 20)], acks="early")).passed
    # killed while it ran s1, or much later while it ran something else: no such cause
    assert not canvas(_evidence(twice, faults=[_kill(2.05, 20)], acks="late")).passed
    assert not canvas(_evidence(twice + _run("other", 20, 2.5, 3.0),
                                faults=[_kill(2.9, 20)], acks="late")).passed


def test_a_lost_chain_step_fails() -> None:
    verdict = canvas(_evidence(_chain({"s1": (2.0, 2.1), "s2": (2.2, 2.3)})))
    assert not verdict.passed and "s3" in verdict.message and "never started" in verdict.message
    assert verdict.figures["lost"] == 1


def test_a_lost_group_member_fails() -> None:
    entries = _canvas("c0", "group-in-chain", _node("a", "step 1/2", client=True),
                      _node("m1", "step 2/2: member 1/2", after=("a",), resent_by=("a",)),
                      _node("m2", "step 2/2: member 2/2", after=("a",), resent_by=("a",)))
    entries += _run("a", 20, 1.0, 1.1) + _run("m1", 21, 1.2, 1.3)
    verdict = canvas(_evidence(entries))
    assert not verdict.passed and "m2" in verdict.message and "never started" in verdict.message
    # a member the client sent is judged by nothing-lost
    top = _canvas("c4", "group", _node("g1", "member 1/2", client=True),
                  _node("g2", "member 2/2", client=True)) + _run("g1", 22, 1.0, 1.1)
    lost = nothing_lost(_evidence(top))
    assert not lost.passed and "g2" in lost.message


def test_the_canvas_suite_runs_cuts_only_where_there_is_a_connection() -> None:
    suite = load_suite("canvas")
    assert suite.canvas and "chord" in suite.canvas
    kinds = {t: {f["kind"] for f in suite.faults_for(t)} for t in ("redis", "amqp", "sqlite")}
    assert kinds["redis"] == kinds["amqp"] == {"kill-children", "cut-connections"}
    assert kinds["sqlite"] == {"kill-children"}


def test_a_chord_body_sent_again_for_a_part_killed_after_success_is_allowed_under_acks_late(
        ) -> None:
    """RabbitMQ canvas seed 2 (late-reject): the last part's child was killed 5 ms after the
    part succeeded, before it reported that it had sent the body; the worker sent the body
    on its behalf, so it ran twice. At least once under acks_late; not without the kill,
    and not under early acks."""
    entries = _chord([(30, 2.0, 2.001), (30, 2.002, 2.003)])  # part h1 (pid 11) ends at 1.5
    assert canvas(_evidence(entries, [_kill(1.505, 11)], acks="late-reject")).passed
    assert not canvas(_evidence(entries, [], acks="late-reject")).passed
    assert not canvas(_evidence(entries, [_kill(1.505, 11)], acks="early")).passed
