"""The canvas oracle: chains, groups and chords judged from the ledger's ``canvas`` entries.

Each canvas entry names its tasks and what each waits for (:mod:`stress.canvas`). A task
*succeeded* when a run of it finished ``ok``; its success is *final* when the worker did not
lose that run afterwards (a ``lost`` entry after the finish: the child died before the outcome
was stored, so the task ends FAILURE ``WorkerLostError`` or is requeued, as the delivery table
says), nor any other run of it for good. Against the table, for every task of every canvas:

- **order**: it starts only after every task in its ``after`` succeeded: a chain's steps run
  in order, a chord's body never before the last part of its header finished, and never when
  a part failed (the body is FAILURE ``ChordError`` then);
- **nothing lost**: once every task in its ``after`` succeeded for good, it runs and reaches
  an end (no group member, chain step or chord body is lost), except where the table lets a
  task be lost (early ack, the main process killed);
- **once**: it runs again only where the table allows a re-run of its own, or because a task
  in ``resent_by`` succeeded more than once (and sent it again), or, under ``acks_late``,
  had its child killed after it succeeded (the worker then sends what follows on the child's
  behalf: what the child sent but had not reported goes out twice, and under early acks the
  second copy is dropped by its run-once key, docs/design.md). A chord's body is sent by
  the part that completes the count, never because a part ran again: under early acks it runs
  exactly once, under ``acks_late`` at least once;
- **outcome**: the tasks the worker sent end as their kind expects (the tasks the publisher
  sent are judged so by ``nothing-lost``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from chaos import FaultRecord
from stress.ledger import Book, History
from stress.oracles import (
    MAIN_FAULTS,
    OK_OUTCOMES,
    ORPHAN_WINDOW,
    Evidence,
    Verdict,
    _ended,
    _every_rerun_has_a_cause,
    _ok,
    _rerun_allowed,
)
from stress.suites import Cell

__all__ = ["canvas", "owed"]


def _successes(history: History) -> list[float]:
    """When runs of the task finished ``ok`` (its success may still be undone by a loss)."""
    return sorted(e.mono for e in history.finishes if e.extra.get("outcome") in OK_OUTCOMES)


def _final_success(history: History) -> float | None:
    """When a run finished ``ok`` with no loss after it (before the task's next start): its
    outcome was stored, so what follows it is owed. None also when any run of it was lost
    for good (not requeued): two runs at once (a message redelivered after a cut) may end
    one SUCCESS and one FAILURE ``WorkerLostError``, and the failure, if it counts first,
    fails the chord's body or the rest of the chain, as the table allows."""
    if any(not loss.extra.get("requeued") for loss in history.losses):
        return None
    starts = [s.mono for s in history.starts]
    for at in _successes(history):
        until = min((s for s in starts if s > at), default=math.inf)
        if not any(at <= loss.mono < until for loss in history.losses):
            return at
    return None


def _killed_after_success(book: Book, task_id: str, faults: Sequence[FaultRecord]) -> int:
    """Runs of ``task_id`` that finished ``ok`` and whose child was then killed before it
    started anything else: the worker sends what follows them on the dead child's behalf,
    and what the child had sent but not yet reported goes out twice (docs/design.md: at
    least once, the table's "may run twice", rather than a lost chain step or body)."""
    kills = [(r.mono, int(pid)) for r in _ok(faults, {"kill-child"})
             for pid in r.detail.get("pids", [])]
    if not kills:
        return 0
    found = 0
    for finish in _history(book, task_id).finishes:
        if finish.extra.get("outcome") not in OK_OUTCOMES:
            continue
        next_start = min((s.mono for h in book.by_id.values() for s in h.starts
                          if s.pid == finish.pid and s.mono > finish.mono), default=math.inf)
        found += any(pid == finish.pid and finish.mono <= at < next_start
                     for at, pid in kills)
    return found


def _history(book: Book, task_id: str) -> History:
    return book.by_id.get(task_id) or History(task_id)


def _owed_since(book: Book, node: dict[str, Any]) -> float | None:
    """When every task the node waits for had succeeded for good (None: not all did)."""
    times = [_final_success(_history(book, p)) for p in node["after"]]
    if any(t is None for t in times):
        return None
    return max((t for t in times if t is not None), default=None)


def _may_be_lost(since: float, faults: Sequence[FaultRecord], cell: Cell) -> bool:
    """Early ack, and a main process died after the task was sent: the table's "lost"."""
    return cell["acks"] == "early" and any(r.mono >= since - ORPHAN_WINDOW
                                           for r in _ok(faults, MAIN_FAULTS))


def owed(book: Book, faults: Sequence[FaultRecord], cell: Cell) -> list[History]:
    """Tasks the worker was to send (every task before them succeeded) that have not ended:
    the drain waits for them as for published tasks."""
    found = []
    for entry in list(book.canvases.values()):
        for node in entry.get("nodes", []):
            if node.get("client"):
                continue
            since = _owed_since(book, node)
            history = _history(book, node["id"])
            if since is not None and not _ended(history) and not _may_be_lost(since, faults,
                                                                                cell):
                found.append(history)
    return found


def _describe(node: dict[str, Any], shape: str) -> str:
    return f"{node['id']} ({node['kind']}, {shape} {node['role']})"


def _judge_node(book: Book, node: dict[str, Any], shape: str, ev: Evidence,
                counts: dict[str, int], problems: list[str]) -> None:
    h = _history(book, node["id"])
    what = _describe(node, shape)
    if h.starts:
        first = h.starts[0].mono
        for p in node["after"]:
            ok = _successes(_history(book, p))
            if not ok:
                counts["out_of_order"] += 1
                problems.append(f"{what} ran though {p} before it never succeeded")
            elif ok[0] > first:
                counts["out_of_order"] += 1
                problems.append(f"{what} started {ok[0] - first:.3f}s before {p}, which it "
                                "waits for, finished")
    if node.get("client"):
        return  # nothing-lost judges what the publisher sent: ends, re-runs, outcome
    since = _owed_since(book, node)
    if since is not None and not _ended(h) and not _may_be_lost(since, ev.faults, ev.cell):
        counts["lost"] += 1
        problems.append(f"{what} was owed (every task before it succeeded) and "
                        + ("never started" if not h.starts else
                           f"started {len(h.starts)} time(s) and never ended"))
    # A predecessor whose child died right after it succeeded: the worker sends what
    # follows on its behalf, and what the child had sent but not yet reported goes out
    # twice. Under early acks the second copy is dropped (its run-once key is taken,
    # docs/design.md); under acks_late it may run: at least once.
    late = ev.cell["acks"] != "early"
    resends = 0 if len(h.starts) < 2 else sum(
        max(0, len(_successes(_history(book, p))) - 1)
        + (_killed_after_success(book, p, ev.faults) if late else 0)
        for p in node["resent_by"])
    if len(h.starts) >= 2 and late and node["role"].endswith("body"):
        resends += sum(_killed_after_success(book, p, ev.faults) for p in node["after"])
    for index, (previous, nxt) in enumerate(zip(h.starts, h.starts[1:], strict=False), 1):
        counts["duplicates"] += 1
        if _rerun_allowed(h, previous, ev.faults, ev.cell, nxt.mono) or _every_rerun_has_a_cause(
                h, index, ev.faults, ev.cell):
            continue
        if resends > 0:
            resends -= 1
            continue
        counts["forbidden_duplicates"] += 1
        problems.append(f"{what} ran again at +{nxt.mono - previous.mono:.2f}s where the "
                        "table forbids it" + (" (a chord body runs once, however often its "
                                              "parts run)" if node["role"].endswith("body")
                                              else ""))
    finished = [e for e in h.finishes if e.extra.get("outcome") != "retry"]
    if finished:
        outcome = str(finished[-1].extra.get("outcome"))
        if (node["expect"] == "ok") != (outcome in OK_OUTCOMES):
            counts["wrong_outcome"] += 1
            problems.append(f"{what} finished {outcome!r}; expected {node['expect']!r}")


def canvas(ev: Evidence) -> Verdict:
    book = ev.book
    counts = {"canvases": len(book.canvases), "tasks": 0, "sent_by_worker": 0, "chords": 0,
              "bodies_run": 0, "bodies_skipped": 0, "out_of_order": 0, "lost": 0,
              "duplicates": 0, "forbidden_duplicates": 0, "wrong_outcome": 0}
    problems: list[str] = []
    for entry in book.canvases.values():
        shape = str(entry.get("shape", "?"))
        for node in entry.get("nodes", []):
            counts["tasks"] += 1
            counts["sent_by_worker"] += not node.get("client")
            if node["role"].endswith("body"):
                counts["chords"] += 1
                ran = bool(_history(book, node["id"]).starts)
                counts["bodies_run"] += ran
                counts["bodies_skipped"] += not ran and _owed_since(book, node) is None
            _judge_node(book, node, shape, ev, counts, problems)
    chords = any(ev.suite.canvas.get(shape) for shape in ("chord", "chord-in-chain"))
    need = ev.scaled(int(ev.suite.oracles.get("min_chord_bodies", 1 if chords else 0)))
    if not problems and counts["bodies_run"] < need:
        problems.append(f"vacuous: {counts['bodies_run']} chord bodies ran; at least {need} "
                        "needed")
    if problems:
        return Verdict("canvas", False, f"{len(problems)} violation(s): "
                       + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""),
                       counts)
    return Verdict("canvas", True, f"{counts['canvases']} canvases: every chain in order, every "
                   f"chord body after its whole header ({counts['bodies_run']} ran, "
                   f"{counts['bodies_skipped']} after a failed part did not), nothing lost",
                   counts)
