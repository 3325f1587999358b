"""The oracles: each judges one cell from the ledger, the fault journal and the pool's health.

They judge against DESIGN.md's delivery-guarantee table:

====================================  ============  ================  =======================
fault while a task is                 early ack     acks_late         late + reject_on_lost
====================================  ============  ================  =======================
reserved, not started                 redelivered   redelivered       redelivered
running; its child dies               FAILURE       FAILURE           rerun (bounded)
running; hard time limit              FAILURE       FAILURE           FAILURE
running; main process dies            may be lost   redelivered       redelivered
running; broker connection lost       finishes      may run twice     may run twice
====================================  ============  ================  =======================

Each oracle returns a :class:`Verdict` with its figures; an oracle that has nothing to judge
says so in its message and still passes only where that is not suspicious (``not-vacuous``
fails a cell whose faults did not hit running tasks).
"""

from __future__ import annotations

import bisect
import contextlib
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import FaultRecord
from stress.ledger import Book, Entry, History
from stress.leftovers import Leftovers
from stress.suites import Cell, Suite
from stress.workerproc import Health

__all__ = ["ORACLES", "Evidence", "Verdict", "detection_latencies", "judge", "leases_released",
           "maybe_lost", "unresolved"]

ORACLES = ("deadlock", "nothing-lost", "lost-process", "not-vacuous", "pool-health")
OK_OUTCOMES = {"ok", "soft-limit", "success"}
MAIN_FAULTS = {"kill-main", "terminate-worker", "cold-shutdown", "hup-worker"}
NET_FAULTS = {"proxy-cut", "proxy-reset", "proxy-blackhole", "broker-restart"}
EARLY_ACK_WINDOW = 1.0  # seconds from ``started`` within which an early ack may not have left
# A killed main process's children learn of it only after the kernel freed its memory (ms,
# more under load): a child may start a job it held in that time.
ORPHAN_WINDOW = 0.25
# A fault's record is written once the injection returned (a kill: after the signal was
# sent), so on a busy machine the worker may log a death a few ms before its kill's record.
RECORD_SKEW = 1.0


@dataclass
class Verdict:
    oracle: str
    passed: bool
    message: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evidence:
    suite: Suite
    cell: Cell
    book: Book
    faults: Sequence[FaultRecord]
    deadlock: bool
    deadlock_pending: int
    stall_bound: float
    baseline: Health | None
    health: Health | None
    worker_starts: int
    is_taskq: bool
    publish_errors: int
    directory: Path
    duration: float | None = None  # this run's publishing window (--duration), if not the suite's
    # explore: the watch stopped the run early because this oracle's failure was certain
    stopped_early: str | None = None
    observed_until: float | None = None  # when the run was last observed (a live check)
    # what the broker space held after the workers stopped (``leases_released`` suites)
    leftovers: Leftovers | None = None

    def scaled(self, minimum: int) -> int:
        """A suite's minimum count, scaled down for a run shorter than the suite's duration."""
        if not self.duration or self.duration >= self.suite.duration:
            return minimum
        return max(1, math.ceil(minimum * self.duration / self.suite.duration))


def _ok(records: Iterable[FaultRecord], kinds: set[str]) -> list[FaultRecord]:
    return [r for r in records if r.kind in kinds and r.outcome == "ok"]


def _run_end(history: History, start: Entry) -> float | None:
    """When the run that began at ``start`` ended (finished or lost), if it did."""
    ends = [e.mono for e in (*history.finishes, *history.losses)
            if e.mono >= start.mono and (e.event == "lost" or e.pid == start.pid)]
    return min(ends) if ends else None


def _allowed_lost(history: History, faults: Sequence[FaultRecord], cell: Cell, *,
                  unstarted: bool = True) -> bool:
    """Early ack, and the worker's main process died while the task ran (the one "lost" cell
    of the table). The early ack is sent before the job goes to the pool, so the task "runs"
    from then on: a main process that dies before the child starts it loses it without a
    start record (how many: ``_unstarted_losses_bound``), and one whose child starts it just
    after the main process died (``ORPHAN_WINDOW``) loses it too."""
    if cell["acks"] != "early":
        return False
    if history.starts:
        since = history.starts[-1].mono - ORPHAN_WINDOW
    elif unstarted and history.published is not None:
        since = history.published
    else:
        return False
    return any(r.mono >= since for r in _ok(faults, MAIN_FAULTS))


def _unstarted_losses_bound(faults: Sequence[FaultRecord], cell: Cell) -> int:
    """How many early-ack tasks the main-process kills may lose before they start: each kill
    at most the jobs its pool held (acked, not started): one per child, and with ``-O fast``
    the jobs each child queues."""
    per_kill = int(cell["concurrency"])
    if cell.params.get("pool") == "fast":
        from taskq.config import SETTINGS

        per_kill *= 1 + int(SETTINGS["worker_fast_queue_depth"].default)
    return per_kill * len(_ok(faults, MAIN_FAULTS))


def _ended(history: History) -> bool:
    """The ledger shows the task at its end: finished (not asking for a retry), or failed
    without being requeued."""
    return any(e.extra.get("outcome") != "retry" for e in history.finishes) or any(
        not e.extra.get("requeued") for e in history.losses)


def _resolved(history: History, faults: Sequence[FaultRecord], cell: Cell) -> bool:
    if _ended(history):
        return True
    # Not one that never started: it may still be waiting in the queue (see maybe_lost).
    return _allowed_lost(history, faults, cell, unstarted=False)


def unresolved(book: Book, faults: Sequence[FaultRecord], cell: Cell) -> list[History]:
    """Published tasks that have not reached an end the table allows (yet), and the tasks of
    canvases the worker owes (sends once the tasks before them succeeded)."""
    pending = [h for h in book.published() if not _resolved(h, faults, cell)]
    if book.canvases:
        from stress.canvas_oracle import owed  # imports this module

        pending += owed(book, faults, cell)
    return pending


def maybe_lost(pending: Sequence[History], faults: Sequence[FaultRecord], cell: Cell) -> bool:
    """Every one of these unresolved tasks never started, under early ack, after a main
    process died: the table lets them be lost (acked, handed to the pool, never started), or
    they may still come back and run. A drain that sees no progress for longer than a lease
    stops waiting for them; ``nothing_lost`` bounds how many there may be."""
    return bool(pending) and all(not h.starts and _allowed_lost(h, faults, cell)
                                 for h in pending)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p99_ms": round(p99 * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2)}


# -- nothing lost -------------------------------------------------------------------------------

def _rerun_allowed(history: History, previous: Entry, faults: Sequence[FaultRecord],
                   cell: Cell, until: float = math.inf) -> bool:
    """May the task start again (at ``until``) after the run that began at ``previous``?
    A fault after that start explains nothing."""
    end = _run_end(history, previous)
    for e in history.finishes:
        if e.pid == previous.pid and e.mono >= previous.mono and e.extra.get("outcome") == "retry":
            return True  # the task asked to be retried
    for e in history.losses:
        if e.mono >= previous.mono and e.extra.get("requeued"):
            return True  # acks_late + reject_on_worker_lost: requeued by the table
    if cell["acks"] == "late-reject" and any(
            previous.pid in r.detail.get("pids", []) and r.mono >= previous.mono
            and (end is None or r.mono <= end) for r in _ok(faults, {"kill-child"})):
        return True  # its child was killed while it ran: requeued (seen without the hooks)
    if cell["acks"] in ("late", "late-reject"):
        # Redelivered after a dead main process or a lost connection. A child may start a job
        # it already held a moment after the fault (a main process told to stop; a connection
        # cut while the job was written to the child): never acked either, so it comes back.
        return any(previous.mono - EARLY_ACK_WINDOW <= r.mono <= until
                   for r in _ok(faults, MAIN_FAULTS | NET_FAULTS))
    # Early acks are sent before the job goes to the pool (Redis and SQLite: and answered), so
    # a dying main process never leaves a started task unacked: the table's "lost", never a
    # rerun. An AMQP ack gets no answer: one written just before the connection was cut (or
    # a black hole began: it may still sit in the proxy, even if the task has ended since),
    # or into a black hole that was on when the task started, may never reach the broker,
    # which then redelivers the task; bounded here to those moments.
    return any(previous.mono <= r.mono <= previous.mono + EARLY_ACK_WINDOW
               or r.mono <= previous.mono <= r.mono + _on_for(r) + EARLY_ACK_WINDOW
               for r in _ok(faults, NET_FAULTS))


def _every_rerun_has_a_cause(history: History, index: int, faults: Sequence[FaultRecord],
                             cell: Cell) -> bool:
    """``acks_late`` + ``reject_on_worker_lost``: may run number ``index`` (0 is the first)
    start? A main process that dies between publishing a lost task's counted copy and acking
    the original leaves two lineages of it, each requeued on its own (the table's "its child
    dies" and "the main process dies" rows), so consecutive starts may belong to different
    lineages and the previous start does not explain the next. So does a connection cut
    between publishing that copy and acking the original: the ack is lost with the
    connection and the broker redelivers the original (the table's "broker connection lost"
    row). The start is allowed when every rerun up to it has its own cause: a requeue the
    worker reported, or a main-process fault or a connection fault while the task was
    about."""
    if cell["acks"] != "late-reject":
        return False
    first, start = history.starts[0], history.starts[index]
    requeues = sum(1 for e in history.losses if e.extra.get("requeued") and e.mono <= start.mono)
    faults_about = sum(1 for r in _ok(faults, MAIN_FAULTS | NET_FAULTS)
                       if first.mono - EARLY_ACK_WINDOW <= r.mono <= start.mono)
    return requeues + faults_about >= index


def _on_for(record: FaultRecord) -> float:
    """How long a timed fault stayed on (0 for a one-shot fault)."""
    params = record.params if isinstance(record.params, dict) else {}
    return float(params.get("duration", 0.0) or 0.0)


def nothing_lost(ev: Evidence) -> Verdict:
    counts = {"published": 0, "finished": 0, "failed": 0, "lost_allowed": 0,
              "lost_unstarted": 0, "lost": 0,
              "never_started": 0, "wrong_outcome": 0, "duplicates": 0,
              "forbidden_duplicates": 0}
    problems: list[str] = []
    kills = {pid: r.mono for r in _ok(ev.faults, {"kill-child"})
             for pid in r.detail.get("pids", [])}
    for h in ev.book.published():
        counts["published"] += 1
        for index, (previous, nxt) in enumerate(zip(h.starts, h.starts[1:], strict=False), 1):
            counts["duplicates"] += 1
            if not (_rerun_allowed(h, previous, ev.faults, ev.cell, nxt.mono)
                    or _every_rerun_has_a_cause(h, index, ev.faults, ev.cell)):
                counts["forbidden_duplicates"] += 1
                problems.append(f"{h.task_id} ({h.kind}) ran again at +"
                                f"{nxt.mono - previous.mono:.2f}s where the table forbids it")
        finished = [e for e in h.finishes if e.extra.get("outcome") != "retry"]
        failed = [e for e in h.losses if not e.extra.get("requeued")]
        if finished:
            counts["finished"] += 1
            outcome = str(finished[-1].extra.get("outcome"))
            if (h.expect in ("lost", "timeout") and outcome in OK_OUTCOMES) or (
                    h.expect == "ok" and outcome not in OK_OUTCOMES) or (
                    h.expect == "error" and outcome in OK_OUTCOMES):
                counts["wrong_outcome"] += 1
                problems.append(f"{h.task_id} ({h.kind}) finished {outcome!r}; expected "
                                f"{h.expect!r}")
        elif failed:
            counts["failed"] += 1
            error = failed[-1].extra.get("error")
            lost_at = failed[-1].mono + RECORD_SKEW
            hit = any(s.pid in kills for s in h.starts) or any(
                failed[-1].mono - 2.0 <= at <= lost_at for at in kills.values())
            # a hard-limit task whose own child an injected kill hit inside the limit ends
            # WorkerLostError (the table's "its child dies" row), not TimeLimitExceeded; a
            # kill that lands after the child took the job but before the body noted its
            # start leaves no start to match the pid with: a kill just before the loss then
            killed_inside = error == "WorkerLostError" and (any(
                s.pid in kills and s.mono <= kills[s.pid] <= lost_at for s in h.starts)
                or (not h.starts and hit))
            if h.expect == "timeout" and error != "TimeLimitExceeded" and not killed_inside:
                counts["wrong_outcome"] += 1
                problems.append(f"{h.task_id} ({h.kind}) failed with {error}; expected "
                                "TimeLimitExceeded")
            elif h.expect == "ok" and not hit:
                counts["wrong_outcome"] += 1
                problems.append(f"{h.task_id} ({h.kind}) failed with {error} although no "
                                "fault hit it")
        elif _allowed_lost(h, ev.faults, ev.cell):
            counts["lost_allowed"] += 1
            if not h.starts:
                counts["lost_unstarted"] += 1
        elif not ev.is_taskq and h.expect in ("lost", "timeout") and h.starts:
            counts["failed"] += 1  # a worker without taskq's hooks: its child died as meant
        elif not h.starts:
            counts["never_started"] += 1
            counts["lost"] += 1
            problems.append(f"{h.task_id} ({h.kind}) was published and never started")
        else:
            counts["lost"] += 1
            problems.append(f"{h.task_id} ({h.kind}) started {len(h.starts)} time(s) "
                            "and never ended")
    bound = _unstarted_losses_bound(ev.faults, ev.cell)
    if counts["lost_unstarted"] > bound:
        problems.append(f"{counts['lost_unstarted']} early-ack tasks lost before they started; "
                        f"the main-process kills account for {bound} at most (the jobs their "
                        "pools held)")
    passed = not problems
    message = ("every published task reached an end the table allows" if passed else
               f"{len(problems)} violation(s): " + "; ".join(problems[:5])
               + (" ..." if len(problems) > 5 else ""))
    return Verdict("nothing-lost", passed, message, counts)


# -- lost-process detection ---------------------------------------------------------------------

def _kills_of_running(ev: Evidence) -> list[tuple[float, History, Entry]]:
    """(kill time, task, its run) for every child killed while it ran a task."""
    starts_by_pid: dict[int, list[tuple[History, Entry]]] = {}
    for h in ev.book.published():
        for s in h.starts:
            starts_by_pid.setdefault(s.pid, []).append((h, s))
    hits = []
    for record in _ok(ev.faults, {"kill-child"}):
        for pid in record.detail.get("pids", []):
            for h, s in starts_by_pid.get(int(pid), []):
                end = _run_end(h, s)
                if s.mono <= record.mono and (end is None or end >= record.mono):
                    hits.append((record.mono, h, s))
    return hits


def _reported_kills(ev: Evidence, bound: float) -> dict[float, float]:
    """Kills the worker itself reported as hitting a started job (its ``lost`` entries),
    whether or not the task's body had begun: kill time -> detection latency. Each ``lost``
    entry is paired with the latest kill before it; tasks that kill their own child are
    left out (no injected kill explains their loss)."""
    kill_times = sorted(r.mono for r in _ok(ev.faults, {"kill-child"}))
    found: dict[float, float] = {}
    if not kill_times:
        return found
    for h in ev.book.published():
        if h.expect in ("lost", "timeout"):
            continue
        for loss in h.losses:
            at = bisect.bisect_right(kill_times, loss.mono) - 1
            if at >= 0 and loss.mono - kill_times[at] <= bound:
                found.setdefault(kill_times[at], loss.mono - kill_times[at])
    return found


def _detections(ev: Evidence, bound: float) -> tuple[dict[float, float], list[str], list[str]]:
    """Kill time -> detection latency for every kill of a running task that was noticed; the
    tasks whose kill never was; those noticed later than ``bound`` (with their latency)."""
    hits = _kills_of_running(ev)
    reported = _reported_kills(ev, bound)
    main_kills = [r.mono for r in _ok(ev.faults, {"kill-main"})]
    latencies: dict[float, float] = {}
    late: list[str] = []
    undetected: list[str] = []
    for killed_at, h, run in hits:
        if any(run.mono <= at <= killed_at for at in main_kills):
            # The run's main process was killed before its child was: nobody is left to
            # notice the child's death; the table's "the main process dies" row applies to
            # the task (nothing-lost judges it), not lost-process detection.
            continue
        after = [e.mono for e in h.losses if e.mono >= run.mono]
        if not after and not ev.is_taskq:
            after = [e.mono for e in h.starts if e.mono > killed_at]  # a rerun shows it
        if not after:
            if ev.is_taskq or not _resolved(h, ev.faults, ev.cell):
                undetected.append(h.task_id)
            continue
        latency = max(0.0, min(after) - killed_at)
        latencies[killed_at] = latency
        if latency > bound:
            late.append(f"{h.task_id} after {latency:.2f}s")
    for killed_at, latency in reported.items():
        latencies.setdefault(killed_at, latency)
    return latencies, undetected, late


def detection_latencies(ev: Evidence) -> list[float]:
    """Seconds from each kill of a child running a task to the worker noticing it (what
    ``lost-process`` judges; report.html draws their histogram)."""
    bound = float(ev.suite.oracles.get("detect_bound", 5.0))
    return list(_detections(ev, bound)[0].values())


def lost_process(ev: Evidence) -> Verdict:
    bound = float(ev.suite.oracles.get("detect_bound", 5.0))
    latencies, undetected, late = _detections(ev, bound)
    values = list(latencies.values())
    figures: dict[str, Any] = {"kills_of_running": len(latencies) + len(undetected),
                               "detected": len(values), **_percentiles(values)}
    problems = ([f"{len(undetected)} killed task(s) never reached an end: "
                 f"{', '.join(undetected[:5])}"] if undetected else [])
    problems += [f"detected later than {bound:g}s: {', '.join(late[:5])}"] if late else []
    if problems:
        return Verdict("lost-process", False, "; ".join(problems), figures)
    if not values:
        return Verdict("lost-process", True, "no child was killed while running a task",
                       figures)
    return Verdict("lost-process", True, f"all {len(values)} kills of running tasks detected "
                   f"(p99 {figures['p99_ms']} ms)", figures)


# -- not vacuous --------------------------------------------------------------------------------

def _in_flight(ev: Evidence, at: float, waiting: bool = False) -> bool:
    """A task ran at ``at`` (every task the ledger saw run: a canvas's steps sent by the
    worker count too); with ``waiting``, one published and not yet ended counts too: a
    connection fault or a main-process fault hits the messages a worker holds or will fetch,
    not only running ones (a workload of millisecond tasks is rarely running at the instant
    of a cut, nor while kills keep both children restarting)."""
    for h in list(ev.book.by_id.values()):
        for s in h.starts:
            end = _run_end(h, s)
            if s.mono <= at and (end is None or end >= at):
                return True
        if waiting and h.published is not None and h.published <= at:
            ends = [e.mono for e in (*h.finishes, *h.losses)]
            if not ends or min(ends) >= at:
                return True
    return False


CONNECTION_FAULTS = frozenset({"cut-connections", "blackhole", "restart-broker"})
# A dead main process's reserved messages are redelivered (the table's row): also a fault
# that hits work when no task happened to be running at that instant.
HOLDING_FAULTS = CONNECTION_FAULTS | {"kill-main", "terminate-worker"}


def not_vacuous(ev: Evidence) -> Verdict:
    kinds = {f["kind"] for f in ev.suite.faults_for(ev.cell["transport"])}
    figures: dict[str, Any] = {}
    problems = []
    published = len(ev.book.published())
    if published < ev.scaled(int(ev.suite.oracles.get("min_tasks", 20))):
        problems.append(f"only {published} tasks were published")
    if "kill-children" in kinds:
        bound = float(ev.suite.oracles.get("detect_bound", 5.0))
        running = len({at for at, _h, _run in _kills_of_running(ev)}
                      | set(_reported_kills(ev, bound)))
        figures["kills"] = sum(len(r.detail.get("pids", []))
                               for r in _ok(ev.faults, {"kill-child"}))
        figures["kills_of_running"] = running
        need = ev.scaled(int(ev.suite.oracles.get("min_kills_of_running", 3)))
        if running < need:
            problems.append(f"{running} kills hit a running task; at least {need} needed")
    for fault_kind, journal_kinds in (("kill-main", {"kill-main"}),
                                      ("terminate-worker", {"terminate-worker"}),
                                      ("cut-connections", {"proxy-cut"}),
                                      ("blackhole", {"proxy-blackhole"}),
                                      ("restart-broker", {"broker-restart"})):
        if fault_kind not in kinds:
            continue
        records = _ok(ev.faults, journal_kinds)
        if fault_kind == "cut-connections":
            records = [r for r in records if r.detail.get("closed")]
        busy = sum(_in_flight(ev, r.mono, waiting=fault_kind in HOLDING_FAULTS)
                   for r in records)
        figures[f"{fault_kind}_in_flight"] = busy
        if busy < 1:
            problems.append(f"no {fault_kind} fault happened while tasks were in flight")
    if problems:
        return Verdict("not-vacuous", False, "vacuous: " + "; ".join(problems), figures)
    return Verdict("not-vacuous", True, "the faults hit running work", figures)


# -- deadlock and pool health -------------------------------------------------------------------

def deadlock(ev: Evidence) -> Verdict:
    figures = {"stall_bound_s": ev.stall_bound, "pending": ev.deadlock_pending}
    if ev.deadlock:
        return Verdict("deadlock", False, f"no progress for {ev.stall_bound:g}s with "
                       f"{ev.deadlock_pending} task(s) pending; stacks in "
                       f"{ev.directory / 'stacks.txt'}", figures)
    # never started, early ack, a main process died: the table's "lost" (nothing-lost
    # bounds how many), not work the worker still owes
    pending = [h for h in unresolved(ev.book, ev.faults, ev.cell)
               if not maybe_lost([h], ev.faults, ev.cell)]
    if pending:
        return Verdict("deadlock", False, f"the run ended (max time) with {len(pending)} "
                       "task(s) unresolved while the worker still made progress", figures)
    return Verdict("deadlock", True, "the worker drained everything", figures)


def pool_health(ev: Evidence) -> Verdict:
    main_faults = len(_ok(ev.faults, MAIN_FAULTS))
    figures: dict[str, Any] = {"worker_starts": ev.worker_starts}
    problems = []
    if ev.worker_starts > 1 + main_faults:
        problems.append(f"the worker's main process died {ev.worker_starts - 1 - main_faults} "
                        "time(s) without a fault")
    if not ev.is_taskq:
        message = "; ".join(problems) or "pool checks skipped for a --worker-cmd worker"
        return Verdict("pool-health", not problems, message, figures)
    if ev.health is None:
        problems.append("the worker was not running at the end")
    else:
        want = ev.cell.children
        figures.update(children=ev.health.children, zombies=ev.health.zombies,
                       fds=ev.health.fds, rss_mib=round(ev.health.rss_kib / 1024, 1))
        if ev.health.children != want:
            problems.append(f"{ev.health.children} pool children, expected {want}")
        if ev.health.zombies:
            problems.append(f"{ev.health.zombies} zombie children")
        if ev.baseline is not None:
            fd_bound = int(ev.suite.oracles.get("fd_growth", 16))
            rss_bound = float(ev.suite.oracles.get("rss_growth_mib", 100))
            figures.update(fds_start=ev.baseline.fds,
                           rss_start_mib=round(ev.baseline.rss_kib / 1024, 1))
            if ev.health.fds > ev.baseline.fds + fd_bound:
                problems.append(f"open fds grew from {ev.baseline.fds} to {ev.health.fds}")
            growth = (ev.health.rss_kib - ev.baseline.rss_kib) / 1024
            if growth > rss_bound:
                problems.append(f"main process RSS grew {growth:.0f} MiB")
    if problems:
        return Verdict("pool-health", False, "; ".join(problems), figures)
    return Verdict("pool-health", True, "pool at full size, no zombies, no fd or RSS growth",
                   figures)


def _running_at(runs: list[tuple[float, float]], at: float) -> int:
    return sum(start <= at < end for start, end in runs)


def head_of_line(ev: Evidence) -> Verdict:
    """Short tasks never wait longer than ``max_short_wait`` while a child is idle
    (SCENARIOS #11: tasks stuck behind long ones despite -O fair)."""
    bound = float(ev.suite.oracles["max_short_wait"])
    short = set(ev.suite.oracles.get("short_kinds", ["noop"]))
    concurrency = int(ev.cell["concurrency"])
    runs: list[tuple[float, float]] = []
    for h in ev.book.published():
        for s in h.starts:
            end = _run_end(h, s)
            runs.append((s.mono, end if end is not None else float("inf")))
    waits, stuck = [], []
    for h in ev.book.published():
        if h.kind not in short or not h.starts or h.published is None:
            continue
        wait = h.starts[0].mono - h.published
        waits.append(wait)
        if wait > bound and _running_at(runs, h.published + bound) < concurrency:
            stuck.append(f"{h.task_id} waited {wait:.2f}s")
    figures = {"short_tasks": len(waits), "stuck": len(stuck), **_percentiles(waits)}
    if stuck:
        return Verdict("head-of-line", False, f"{len(stuck)} short task(s) waited over "
                       f"{bound:g}s while a child was idle: {', '.join(stuck[:5])}", figures)
    return Verdict("head-of-line", True, f"no short task waited over {bound:g}s while a child "
                   "was idle", figures)


def judge(ev: Evidence) -> tuple[list[Verdict], dict[str, Any]]:
    verdicts = [deadlock(ev), nothing_lost(ev), lost_process(ev), not_vacuous(ev),
                pool_health(ev)]
    if "max_short_wait" in ev.suite.oracles:
        verdicts.append(head_of_line(ev))
    if ev.suite.canvas:
        from stress.canvas_oracle import canvas  # imports this module

        verdicts.append(canvas(ev))
    verdicts = explore_verdicts(ev, verdicts)
    figures: dict[str, Any] = {"publish_errors": ev.publish_errors}
    child_kills = _ok(ev.faults, {"kill-child"})
    if child_kills:
        span = max(r.mono for r in child_kills) - min(r.mono for r in child_kills)
        figures["kills_per_s"] = round(len(child_kills) / span, 1) if span > 0 else None
    faults = [r.mono for r in ev.faults if r.outcome == "ok"]
    ends = [e.mono for h in ev.book.published() for e in (*h.finishes, *h.losses)]
    if faults and ends:  # how long the run took to drain once the faults stopped
        figures["last_end_after_last_fault_s"] = round(max(ends) - max(faults), 2)
    return verdicts, figures


# -- explore's oracles (each on when the suite's [oracles] names its bound) ----------------------

def _observed_until(ev: Evidence) -> float:
    times = [r.mono for r in ev.faults]
    for h in ev.book.published():
        times += [e.mono for e in (*h.starts, *h.finishes, *h.losses)]
        if h.published is not None:
            times.append(h.published)
    end = max(times, default=0.0)
    if ev.observed_until is not None:
        end = max(end, ev.observed_until)
    return end + (ev.stall_bound if ev.deadlock else 0.0)


def _fault_windows(ev: Evidence, grace: float) -> list[tuple[float, float]]:
    """From each fault until ``grace`` after it (after its end, for faults that stay on)."""
    windows = []
    for r in ev.faults:
        if r.outcome != "ok" or r.kind.endswith("-off") or r.kind == "thaw":
            continue
        on = float(r.params.get("duration", 0.0) or 0.0) if isinstance(r.params, dict) else 0.0
        windows.append((r.mono, r.mono + on + grace))
    return windows


def pool_capacity(ev: Evidence) -> Verdict:
    """Tasks wait while a child is idle for longer than ``pool_capacity_after`` seconds, away
    from faults: the pool lost capacity (issue 13 #1: a child that is never given work again
    after a lost connection, with max-tasks-per-child)."""
    bound = float(ev.suite.oracles["pool_capacity_after"])
    capacity = int(ev.suite.oracles.get("capacity", ev.cell["concurrency"]))
    grace = float(ev.suite.oracles.get("fault_grace", bound))
    until = _observed_until(ev)
    changes: list[tuple[float, int, int]] = []  # (time, waiting delta, running delta)
    for h in ev.book.published():
        if h.published is None:
            continue
        first = h.starts[0].mono if h.starts else until
        due = max(h.published, h.not_before or 0.0)  # a countdown task waits from when due
        changes += [(min(due, first), 1, 0), (first, -1, 0)]
        for s in h.starts:
            end = _run_end(h, s)
            changes += [(s.mono, 0, 1), (end if end is not None else until, 0, -1)]
    changes.sort()
    windows = _fault_windows(ev, grace)
    waiting = running = 0
    stall_from: float | None = None
    longest, worst_at = 0.0, 0.0
    for n, (at, dw, dr) in enumerate(changes):
        waiting += dw
        running += dr
        if n + 1 < len(changes) and changes[n + 1][0] == at:
            continue  # judge the state once every change at this instant is in
        quiet = not any(lo <= at <= hi for lo, hi in windows)
        stalled = waiting > 0 and running < capacity and quiet
        if stalled and stall_from is None:
            stall_from = at
        elif not stalled and stall_from is not None:
            if at - stall_from > longest:
                longest, worst_at = at - stall_from, stall_from
            stall_from = None
    if stall_from is not None and until - stall_from > longest:
        longest, worst_at = until - stall_from, stall_from
    start = min((h.published for h in ev.book.published() if h.published is not None),
                default=0.0)
    figures = {"longest_idle_wait_s": round(longest, 2), "capacity": capacity,
               "bound_s": bound, "at_s": round(worst_at - start, 2) if longest else None}
    if longest > bound:
        return Verdict("pool-capacity", False, f"tasks waited {longest:.1f}s while the pool "
                       f"ran fewer than {capacity} (from +{worst_at - start:.1f}s, away from "
                       "any fault): the pool lost capacity", figures)
    return Verdict("pool-capacity", True, f"no task waited over {bound:g}s while a child was "
                   "idle", figures)


_LAG = "event loop lagged "


def loop_lag(ev: Evidence) -> Verdict:
    """The worker's own loop-lag measure (its ``event loop lagged N s`` warnings) stays under
    ``max_loop_lag`` seconds."""
    bound = float(ev.suite.oracles["max_loop_lag"])
    lags: list[float] = []
    for log in sorted(ev.directory.glob("worker-*.log")):
        try:
            text = log.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            at = line.find(_LAG)
            if at >= 0:
                with contextlib.suppress(ValueError, IndexError):
                    lags.append(float(line[at + len(_LAG):].split()[0]))
    worst = max(lags, default=0.0)
    figures = {"lag_warnings": len(lags), "max_lag_s": round(worst, 3), "bound_s": bound}
    if worst > bound:
        return Verdict("loop-lag", False, f"the worker's loop lagged {worst:.2f}s (bound "
                       f"{bound:g}s; {len(lags)} warning(s) in its log)", figures)
    return Verdict("loop-lag", True, f"loop lag under {bound:g}s", figures)


def resources_settle(ev: Evidence) -> Verdict:
    """After the run, the worker's child count is back to its start value and its open fds
    within ``settle_fds`` of theirs (a worker restarted by a fault is judged on children)."""
    tolerance = int(ev.suite.oracles["settle_fds"])
    figures: dict[str, Any] = {}
    if not ev.is_taskq or ev.baseline is None or ev.health is None:
        return Verdict("settle", True, "nothing to compare (no start or end snapshot)", figures)
    figures.update(children_start=ev.baseline.children, children_end=ev.health.children,
                   fds_start=ev.baseline.fds, fds_end=ev.health.fds)
    problems = []
    if ev.health.children != ev.baseline.children:
        problems.append(f"{ev.health.children} children at the end, {ev.baseline.children} "
                        "at the start")
    if ev.health.pid == ev.baseline.pid and abs(ev.health.fds - ev.baseline.fds) > tolerance:
        problems.append(f"{ev.health.fds} open fds at the end, {ev.baseline.fds} at the start")
    if problems:
        return Verdict("settle", False, "; ".join(problems), figures)
    return Verdict("settle", True, "children and fds back to their start values", figures)


def _member(entry: Entry) -> str | None:
    found = entry.extra.get("member")
    return None if found is None else str(found)


def lease_held(ev: Evidence) -> Verdict:
    """No message is delivered to one worker of the fleet while another worker's run of it has
    started and not ended, where the table forbids a re-run (a lease is held while its task
    runs; only a fault the table names lets the message go). A run whose worker a fault killed
    ends with that fault."""
    main_faults = sorted(r.mono for r in _ok(ev.faults, MAIN_FAULTS))
    problems: list[str] = []
    overlaps = 0
    for h in ev.book.published():
        for n, a in enumerate(h.starts):
            if _member(a) is None:
                continue
            end = _run_end(h, a)
            killed = [t for t in main_faults if t >= a.mono]
            if killed and (end is None or killed[0] < end):
                end = killed[0]
            for b in h.starts[n + 1:]:
                if _member(b) in (None, _member(a)) or (end is not None and b.mono >= end):
                    continue
                overlaps += 1
                if not _rerun_allowed(h, a, ev.faults, ev.cell):
                    problems.append(
                        f"{h.task_id} ({h.kind}) started on worker {_member(b)} at +"
                        f"{b.mono - a.mono:.2f}s while worker {_member(a)} still ran it")
    figures = {"overlapping_runs": overlaps, "violations": len(problems)}
    if problems:
        return Verdict("lease-held", False, f"{len(problems)} delivery(ies) while another "
                       "worker held the lease: " + "; ".join(problems[:5]), figures)
    return Verdict("lease-held", True, "no message was delivered while another worker held "
                   "its lease", figures)


def leases_released(ev: Evidence) -> Verdict:
    """After the cell's workers stopped, no lease is left in the broker under the cell's
    names, and its queues hold no message of a task the ledger shows ended (issue 13 #5: 72
    leases still held after the worker stopped; a reconnect orphaned them)."""
    left = ev.leftovers
    if left is None or left.skipped:
        why = left.skipped if left is not None else "the runner did not read the broker"
        return Verdict("leases-released", True, f"not measured: {why}", {})
    if left.error:
        return Verdict("leases-released", False, "could not read what the broker holds after "
                       f"the workers stopped: {left.error}", {})

    def ended(task_id: str | None) -> bool:
        history = ev.book.by_id.get(task_id) if task_id is not None else None
        return history is not None and _ended(history)

    stale = [t for t in left.queued if ended(t)]
    figures = {"leases_left": len(left.leases),
               "leases_of_ended_tasks": sum(ended(t) for t in left.leases),
               "queued_left": len(left.queued), "queued_ended": len(stale)}
    problems = []
    if left.leases:
        shown = ", ".join(str(t) for t in left.leases[:5])
        problems.append(f"{len(left.leases)} lease(s) still held after the workers stopped "
                        f"({figures['leases_of_ended_tasks']} of tasks that had ended): {shown}"
                        + (" ..." if len(left.leases) > 5 else ""))
    if stale:
        problems.append(f"{len(stale)} message(s) of ended tasks still queued: "
                        + ", ".join(str(t) for t in stale[:5]) + (" ..." if len(stale) > 5 else ""))
    if problems:
        return Verdict("leases-released", False, "; ".join(problems), figures)
    return Verdict("leases-released", True, f"no lease left; {len(left.queued)} message(s) "
                   "queued, none of an ended task", figures)


def certain_violations(book: Book, faults: Sequence[FaultRecord], cell: Cell) -> list[str]:
    """The nothing-lost violations no later event can undo once no fault is left to come (the
    fault schedule is over): a re-run the table forbids, a finished task with the wrong
    outcome. Explore stops a case as soon as one shows (a re-run loop otherwise keeps the
    deadlock watch quiet until the case's max time)."""
    problems = []
    for h in book.published():
        for previous, nxt in zip(h.starts, h.starts[1:], strict=False):
            if not _rerun_allowed(h, previous, faults, cell):
                problems.append(f"{h.task_id} ({h.kind}) ran again at +"
                                f"{nxt.mono - previous.mono:.2f}s where the table forbids it")
        finished = [e for e in h.finishes if e.extra.get("outcome") != "retry"]
        if finished:
            outcome = str(finished[-1].extra.get("outcome"))
            if (h.expect in ("lost", "timeout") and outcome in OK_OUTCOMES) or (
                    h.expect == "ok" and outcome not in OK_OUTCOMES):
                problems.append(f"{h.task_id} ({h.kind}) finished {outcome!r}; expected "
                                f"{h.expect!r}")
    return problems


def _stopped_early(ev: Evidence, verdicts: list[Verdict]) -> list[Verdict]:
    """A run the watch stopped early: the oracle that stopped it keeps its verdict (nothing-lost
    only its certain violations), every other failing oracle is not judged (its work was cut
    short, not wrong)."""
    out = []
    for v in verdicts:
        if v.oracle == ev.stopped_early == "nothing-lost":
            problems = certain_violations(ev.book, ev.faults, ev.cell)
            message = (f"{len(problems)} violation(s) (the run stopped at the first): "
                       + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
            out.append(Verdict(v.oracle, not problems, message if problems else v.message,
                               v.figures))
        elif v.passed or v.oracle == ev.stopped_early:
            out.append(v)
        else:
            out.append(Verdict(v.oracle, True, f"not judged: the run stopped early on a certain "
                               f"{ev.stopped_early} failure ({v.message})", v.figures))
    return out


def explore_verdicts(ev: Evidence, verdicts: list[Verdict]) -> list[Verdict]:
    """The verdicts with explore's oracles added (when the suite names their bounds), and
    ``not-vacuous`` reported without failing when the suite says ``vacuity = "report"``."""
    oracles = ev.suite.oracles
    if oracles.get("vacuity") == "report":
        verdicts = [Verdict(v.oracle, True, f"not judged here: {v.message}", v.figures)
                    if v.oracle == "not-vacuous" else v for v in verdicts]
    if "pool_capacity_after" in oracles:
        verdicts.append(pool_capacity(ev))
    if "max_loop_lag" in oracles:
        verdicts.append(loop_lag(ev))
    if "settle_fds" in oracles:
        verdicts.append(resources_settle(ev))
    if oracles.get("lease_held"):
        verdicts.append(lease_held(ev))
    if oracles.get("leases_released"):
        verdicts.append(leases_released(ev))
    if "blackhole_noticed_within" in oracles or "release_within" in oracles:
        from stress.recovery import blackhole_noticed, released_after_cut  # imports this module

        if "blackhole_noticed_within" in oracles:
            verdicts.append(blackhole_noticed(ev))
        if "release_within" in oracles:
            verdicts.append(released_after_cut(ev))
    if ev.stopped_early:
        verdicts = _stopped_early(ev, verdicts)
    return verdicts
