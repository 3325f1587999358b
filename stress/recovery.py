"""Explore's oracles on how a worker comes back from a network fault.

- ``blackhole-noticed``: a broker that goes silent (a black hole) is noticed within a bound,
  whatever came before it. Issue 13 #3: after one reconnect, kombu's loop swallowed the
  connection errors of the worker's timers, so an idle worker noticed a black hole after
  13-23 s instead of about 2 s. Read from the worker's log: the moment it says it lost the
  broker connection (taskq's and Celery's wording).
- ``released-after-cut``: after a lost connection, tasks do not wait while the whole fleet
  is idle. Issue 13 #5: a reconnect left the messages the worker had reserved leased to the
  dead connection, invisible to every worker until the lease expired.

Each is on when the suite's ``[oracles]`` names its bound (explore's cases do).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chaos import FaultRecord
from stress.oracles import MAIN_FAULTS, Evidence, Verdict, _ok, _run_end

__all__ = ["blackhole_noticed", "log_states", "released_after_cut"]

# taskq: "connected to URL", "connected to URL again", "lost the broker connection to URL",
# "broker URL unreachable"; Celery: "Connected to URL", "Connection to broker lost".
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
_LOST = ("lost the broker connection", "Connection to broker lost")
_CONNECTED = re.compile(r"\b[Cc]onnected to \S+://")
_SWALLOWED = "Error in timer"


def log_states(path: Path) -> Iterator[tuple[float, str]]:
    """(wall time, "connected" | "lost" | "swallowed") for each line of a worker log that
    says its broker connection came or went, or that kombu's loop swallowed a timer's
    error."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        match = _STAMP.match(line)
        if match is None:
            continue
        state = ("lost" if any(m in line for m in _LOST) else
                 "swallowed" if _SWALLOWED in line else
                 "connected" if _CONNECTED.search(line) else None)
        if state is None:
            continue
        try:
            at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        yield at, state


def _on_for(record: FaultRecord) -> float:
    params = record.params if isinstance(record.params, dict) else {}
    return float(params.get("duration", 0.0) or 0.0)


def blackhole_noticed(ev: Evidence) -> Verdict:
    """Every worker connected when a black hole began says it lost the connection within
    ``blackhole_noticed_within`` seconds; judged for holes that lasted longer than that, with
    no main-process fault or cut in the bound (which would end the connection themselves)."""
    bound = float(ev.suite.oracles["blackhole_noticed_within"])
    others = [r.mono for r in _ok(ev.faults, MAIN_FAULTS | {"proxy-cut", "proxy-reset",
                                                           "broker-restart"})]
    logs = {p.name: list(log_states(p)) for p in sorted(ev.directory.glob("worker*.log"))}
    judged, latencies, problems = 0, [], []
    for hole in _ok(ev.faults, {"proxy-blackhole"}):
        if _on_for(hole) <= bound or any(hole.mono - 1.0 <= t <= hole.mono + bound
                                         for t in others):
            continue
        for name, states in logs.items():
            before = [s for at, s in states if at <= hole.wall and s != "swallowed"]
            if not before or before[-1] != "connected":
                continue  # not connected when the hole began (or this log had ended)
            judged += 1
            lost = [at for at, s in states if s == "lost" and at > hole.wall]
            swallowed = sum(1 for at, s in states
                            if s == "swallowed" and hole.wall < at <= hole.wall + bound)
            noticed = lost[0] - hole.wall if lost else None
            if noticed is not None and noticed <= bound:
                latencies.append(noticed)
                continue
            said = (f"noticed only after {noticed:.1f}s" if noticed is not None
                    else "never noticed")
            problems.append(
                f"{name}: a black hole from +{hole.offset or 0:.1f}s lasting "
                f"{_on_for(hole):g}s was {said} (bound {bound:g}s)"
                + (f"; kombu swallowed {swallowed} timer error(s) meanwhile" if swallowed
                   else ""))
    figures: dict[str, Any] = {"holes_judged": judged, "bound_s": bound,
                               "noticed_s": [round(x, 2) for x in latencies]}
    if problems:
        return Verdict("blackhole-noticed", False, "; ".join(problems[:4]), figures)
    if not judged:
        return Verdict("blackhole-noticed", True, f"no black hole longer than {bound:g}s hit a "
                       "connected worker", figures)
    return Verdict("blackhole-noticed", True, f"every black hole noticed within {bound:g}s "
                   f"(slowest {max(latencies):.1f}s)", figures)


# -- released after a cut --------------------------------------------------------------------

_CUTS = {"proxy-cut", "proxy-reset"}
_HARMLESS = {"kill-child", "freeze", "thaw", "proxy-latency-off", "proxy-blackhole-off"}


def _runs(ev: Evidence, until: float) -> list[tuple[float, float]]:
    runs = []
    for h in ev.book.published():
        for s in h.starts:
            end = _run_end(h, s)
            runs.append((s.mono, end if end is not None else until))
    return runs


def _idle_waits(ev: Evidence, lo: float, hi: float, until: float) -> Iterator[tuple[float, float]]:
    """(from, to) within [lo, hi] where tasks were due and waiting while no worker of the
    fleet ran anything."""
    changes: list[tuple[float, int, int]] = []
    for h in ev.book.published():
        if h.published is None:
            continue
        first = h.starts[0].mono if h.starts else until
        due = max(h.published, h.not_before or 0.0)
        if due < first:
            changes += [(due, 1, 0), (first, -1, 0)]
    changes += [c for a, b in _runs(ev, until) for c in ((a, 0, 1), (b, 0, -1))]
    changes.sort()
    waiting = running = 0
    since: float | None = None
    for n, (at, dw, dr) in enumerate(changes):
        waiting += dw
        running += dr
        if n + 1 < len(changes) and changes[n + 1][0] == at:
            continue
        idle = waiting > 0 and running == 0
        if idle and since is None:
            since = at
        elif not idle and since is not None:
            if min(at, hi) > max(since, lo):
                yield max(since, lo), min(at, hi)
            since = None
    if since is not None and min(until, hi) > max(since, lo):
        yield max(since, lo), min(until, hi)


def _window(cut: FaultRecord, records: list[FaultRecord], lease: float, grace: float
            ) -> tuple[float, float]:
    """From ``grace`` after the cut until its lease, narrowed by the faults that hold tasks
    back by themselves: one after the cut ends it; a worker killed in the lease before it
    leaves its own leases to expire first; a black hole (or latency) on at the cut, and a
    broker restart just before it, keep the worker from its broker until they are over."""
    lo, hi = cut.mono + grace, cut.mono + lease
    for r in records:
        if r is cut or r.kind in _HARMLESS:
            continue
        if r.mono > cut.mono:
            hi = min(hi, r.mono)
        elif r.kind in MAIN_FAULTS and r.mono >= cut.mono - lease:
            lo = max(lo, r.mono + lease + grace)
        elif r.kind not in _CUTS and r.mono + _on_for(r) >= cut.mono - _RECONNECT:
            lo = max(lo, r.mono + _on_for(r) + _RECONNECT)
    return lo, hi


_RECONNECT = 5.0  # back to the broker after a black hole or a restart: backoff and timeouts


def released_after_cut(ev: Evidence) -> Verdict:
    """After a connection cut (or reset), tasks never wait longer than ``release_within``
    seconds while every worker of the fleet is idle, from ``release_grace`` after the cut
    until the lease (``lease``) would have handed them back by itself (:func:`_window`
    leaves out what other faults explain)."""
    bound = float(ev.suite.oracles["release_within"])
    lease = float(ev.suite.oracles.get("lease", 0.0))
    grace = float(ev.suite.oracles.get("release_grace", 1.0))
    records = sorted((r for r in ev.faults if r.outcome == "ok"), key=lambda r: r.mono)
    until = max([e.mono for h in ev.book.published() for e in (*h.starts, *h.finishes,
                                                               *h.losses)]
                + [ev.observed_until or 0.0], default=0.0)
    windows, problems = 0, []
    worst = 0.0
    for cut in (r for r in records if r.kind in _CUTS):
        lo, hi = _window(cut, records, lease, grace)
        if hi - lo <= bound:
            continue
        windows += 1
        for a, b in _idle_waits(ev, lo, hi, until):
            worst = max(worst, b - a)
            if b - a > bound:
                problems.append(f"tasks waited {b - a:.1f}s with every worker idle, from "
                                f"{a - cut.mono:.1f}s after the cut at +{cut.offset or 0:.1f}s "
                                f"(lease {lease:g}s)")
                break
    figures = {"windows": windows, "longest_idle_wait_s": round(worst, 2), "bound_s": bound}
    if problems:
        return Verdict("released-after-cut", False, "; ".join(problems[:4]) + ": the messages "
                       "the lost connection had reserved were not released", figures)
    return Verdict("released-after-cut", True, f"no task waited over {bound:g}s on an idle "
                   "fleet after a cut" if windows else "no cut to judge", figures)
