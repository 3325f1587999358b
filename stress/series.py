"""What a cell's run looked like over time: the series report.html draws.

Read back from what a cell leaves in its directory (the ledger, the fault journal, the
worker's log), so ``taskq-stress report`` can rebuild them for a run whose report.json holds
none. Times are seconds from the cell's first published task (the ledger's and the journal's
``CLOCK_MONOTONIC``):

- ``finished`` / ``failed``: task bodies that returned or raised, and tasks the worker ended
  itself (``lost``: its child died), per second;
- ``faults``: each injected fault's time, by journal kind (injections that did not take
  effect are left out);
- ``latencies_ms``: kill of a child running a task → the worker noticing it, as the
  ``lost-process`` oracle pairs them;
- ``waiting`` / ``running``: tasks published and not yet started for the first time (the
  backlog; a redelivered task is not counted again), and runs under way: the highest value
  in each ``step`` seconds;
- ``loop_lag``: ``[time, seconds]`` of each ``event loop lagged`` warning in the worker's
  log. taskq warns only over 0.5 s and records no finer figure; a ``--worker-cmd`` worker
  records none (``None``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from chaos import read_journal
from stress.ledger import Book, LedgerReader
from stress.oracles import Evidence, detection_latencies
from stress.suites import Cell, Suite

__all__ = ["collect", "series_of"]

MAX_POINTS = 400  # per sampled series: a long run is drawn at a coarser step
_LAG = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):.*event loop lagged ([0-9.]+) s")


def collect(directory: Path, suite: Suite, cell: Cell, *, is_taskq: bool) -> dict[str, Any]:
    """The series of the cell whose artifacts are in ``directory`` (empty when it has no
    ledger: the cell could not start). A ``--worker-cmd`` cell's failures read from the
    result backend during the run are not in its ledger: its report.json holds them."""
    ledger = directory / "ledger"
    if not ledger.is_dir():
        return {}
    book = Book()
    book.add(LedgerReader(ledger).poll())
    journal = directory / "faults.jsonl"
    faults = read_journal(journal) if journal.exists() else []
    return series_of(Evidence(suite=suite, cell=cell, book=book, faults=faults, deadlock=False,
                              deadlock_pending=0, stall_bound=0.0, baseline=None, health=None,
                              worker_starts=1, is_taskq=is_taskq, publish_errors=0,
                              directory=directory))


def series_of(ev: Evidence) -> dict[str, Any]:
    """The series of a judged cell, from the same evidence the oracles judged."""
    book, faults = ev.book, ev.faults
    published = book.published()
    if not published:
        return {}
    t0 = min(h.published for h in published if h.published is not None)
    offset = _wall_minus_mono(book)
    ends = [e.mono for h in published for e in (*h.starts, *h.finishes, *h.losses)]
    ends += [r.mono for r in faults]
    span = max(max(ends, default=t0) - t0, 1.0)
    finished = [e.mono - t0 for h in published for e in h.finishes]
    failed = [e.mono - t0 for h in published for e in h.losses if not e.extra.get("requeued")]
    by_kind: dict[str, list[float]] = {}
    for r in faults:
        if r.outcome == "ok":
            by_kind.setdefault(r.kind, []).append(round(r.mono - t0, 3))
    step = max(0.25, span / MAX_POINTS)
    waiting, running = _levels(book, t0, span, step)
    return {
        "t0_wall": round(t0 + offset, 3) if offset is not None else None,
        "seconds": round(span, 3),
        "finished": _per_second(finished, span),
        "failed": _per_second(failed, span),
        "faults": by_kind,
        "latencies_ms": sorted(round(s * 1000, 3) for s in detection_latencies(ev)),
        "step": step,
        "waiting": waiting,
        "running": running,
        "loop_lag": (_loop_lag(ev.directory, t0, offset)
                     if ev.is_taskq and offset is not None else None),
    }


def _per_second(times: Iterable[float], span: float) -> list[int]:
    counts = [0] * (math.floor(span) + 1)
    for t in times:
        counts[min(len(counts) - 1, max(0, math.floor(t)))] += 1
    return counts


def _levels(book: Book, t0: float, span: float, step: float) -> tuple[list[int], list[int]]:
    """The highest number of waiting and of running tasks in each ``step``."""
    changes: list[tuple[float, int, int]] = []  # (time, waiting delta, running delta)
    for h in book.published():
        assert h.published is not None
        if h.starts:
            changes += [(h.published, 1, 0), (h.starts[0].mono, -1, 0)]
        else:
            changes.append((h.published, 1, 0))
        for n, s in enumerate(h.starts):
            end = _run_end(h.finishes, h.losses, s.mono, s.pid)
            if end is None and n + 1 < len(h.starts):
                end = h.starts[n + 1].mono  # ended unseen (its child killed): rerun later
            if end is not None:
                changes += [(s.mono, 0, 1), (end, 0, -1)]
    changes.sort()
    bins = math.floor(span / step) + 1
    waiting, running = [0] * bins, [0] * bins
    level_w = level_r = 0
    at = 0
    for b in range(bins):
        high_w, high_r = level_w, level_r
        until = t0 + (b + 1) * step
        while at < len(changes) and changes[at][0] < until:
            level_w += changes[at][1]
            level_r += changes[at][2]
            high_w, high_r = max(high_w, level_w), max(high_r, level_r)
            at += 1
        waiting[b], running[b] = high_w, high_r
    return waiting, running


def _run_end(finishes: Sequence[Any], losses: Sequence[Any], start: float,
             pid: int) -> float | None:
    ends = [e.mono for e in finishes if e.mono >= start and e.pid == pid]
    ends += [e.mono for e in losses if e.mono >= start]
    return min(ends) if ends else None


def _wall_minus_mono(book: Book) -> float | None:
    """Wall clock minus monotonic clock, from one ledger entry (the worker's log is stamped
    with wall time)."""
    for h in book.published():
        for e in (*h.starts, *h.finishes):
            return e.wall - e.mono
    return None


def _loop_lag(directory: Path, t0: float, offset: float) -> list[list[float]]:
    found: list[list[float]] = []
    for log in sorted(directory.glob("worker-*.log")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            match = _LAG.match(line)
            if match is None:
                continue
            stamp = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            found.append([round(stamp - offset - t0, 3), float(match[2])])
    return sorted(found)
