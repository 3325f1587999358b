"""Explore's recovery oracles on hand-made runs: a black hole noticed in time (from the
worker's log), tasks released after a connection cut (from the ledger)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from chaos import FaultRecord
from stress.ledger import Book, Entry
from stress.oracles import Evidence, explore_verdicts
from stress.recovery import blackhole_noticed, log_states, released_after_cut
from stress.suites import Suite, parse_cell
from stress.workerproc import Health

WALL = 1_800_000_000.0  # the run's wall clock at mono 0


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, WALL + mono, dict(extra))


def _f(kind: str, mono: float, **params: object) -> FaultRecord:
    return FaultRecord(mono=mono, wall=WALL + mono, kind=kind, target="t", outcome="ok",
                       params=dict(params), offset=mono)


def _ev(entries: list[Entry], faults: list[FaultRecord], directory: Path = Path("."),
        **oracles: object) -> Evidence:
    book = Book()
    book.add(entries)
    suite = Suite("t", "", Path("t.toml"), oracles=dict(oracles))
    return Evidence(suite=suite, cell=parse_cell("concurrency=2"), book=book, faults=faults,
                    deadlock=False, deadlock_pending=0, stall_bound=10.0,
                    baseline=Health(1, 2, 0, 20, 1000), health=Health(1, 2, 0, 20, 1000),
                    worker_starts=1, is_taskq=True, publish_errors=0, directory=directory)


def _line(mono: float, text: str) -> str:
    stamp = dt.datetime.fromtimestamp(WALL + mono).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    return f"[{stamp}: WARNING/MainProcess 7] taskq.worker.consumer: {text}\n"


def _log(tmp_path: Path, name: str, *lines: tuple[float, str]) -> None:
    (tmp_path / name).write_text("$ taskq worker ...\n" + "".join(_line(*x) for x in lines))


CONNECTED = "connected to redis://127.0.0.1:4000/0"
LOST = "lost the broker connection to redis://127.0.0.1:4000/0 (TimeoutError: ...)"
SWALLOWED = "kombu.asynchronous.hub: Error in timer: network:TimeoutError"


def test_the_worker_s_log_says_when_its_connection_came_and_went(tmp_path: Path) -> None:
    _log(tmp_path, "worker-1.log", (1.0, CONNECTED), (5.0, LOST), (6.0, SWALLOWED),
         (7.0, f"{CONNECTED} again"), (8.0, "task stress.noop[x] SUCCESS in 0.001s"))
    states = [(round(at - WALL, 1), s) for at, s in log_states(tmp_path / "worker-1.log")]
    assert states == [(1.0, "connected"), (5.0, "lost"), (6.0, "swallowed"), (7.0, "connected")]


def test_a_black_hole_noticed_late_after_a_reconnect_fails(tmp_path: Path) -> None:
    """Issue 13 #3: after a cut and a reconnect, the hole is noticed 13 s late while kombu
    swallows the timers' errors."""
    _log(tmp_path, "worker-1.log", (0.0, CONNECTED), (2.0, LOST), (2.2, f"{CONNECTED} again"),
         (6.5, SWALLOWED), (10.5, SWALLOWED), (17.5, LOST))
    faults = [_f("proxy-cut", 2.0), _f("proxy-blackhole", 4.0, duration=12.0)]
    verdict = blackhole_noticed(_ev([], faults, tmp_path, blackhole_noticed_within=8.0))
    assert not verdict.passed
    assert "noticed only after 13.5s" in verdict.message
    assert "swallowed 2 timer error(s)" in verdict.message


def test_a_black_hole_noticed_in_time_passes(tmp_path: Path) -> None:
    _log(tmp_path, "worker-1.log", (0.0, CONNECTED), (2.0, LOST), (2.2, f"{CONNECTED} again"),
         (6.4, LOST))
    faults = [_f("proxy-cut", 2.0), _f("proxy-blackhole", 4.0, duration=12.0)]
    verdict = blackhole_noticed(_ev([], faults, tmp_path, blackhole_noticed_within=8.0))
    assert verdict.passed and verdict.figures["noticed_s"] == [2.4]


def test_holes_too_short_ended_by_other_faults_or_on_no_connection_are_not_judged(
        tmp_path: Path) -> None:
    _log(tmp_path, "worker-1.log", (0.0, CONNECTED), (3.0, LOST), (30.0, LOST))
    short = [_f("proxy-blackhole", 4.0, duration=5.0)]
    killed = [_f("proxy-blackhole", 4.0, duration=12.0), _f("kill-main", 6.0)]
    unconnected = [_f("proxy-blackhole", 5.0, duration=12.0)]  # lost at 3.0, never back
    for faults in (short, killed, unconnected):
        verdict = blackhole_noticed(_ev([], faults, tmp_path, blackhole_noticed_within=8.0))
        assert verdict.passed and verdict.figures["holes_judged"] == 0


def _orphaned(release_at: float) -> list[Entry]:
    """Two tasks reserved when the connection is cut at t=10; the fleet idles from t=11
    until they are handed back at ``release_at``."""
    entries = [_e("published", "busy", 1, 9.0, kind="sleep", expect="ok"),
               _e("started", "busy", 7, 9.1), _e("finished", "busy", 7, 11.0, outcome="ok")]
    for n in range(2):
        entries += [_e("published", f"r{n}", 1, 9.5, kind="noop", expect="ok"),
                    _e("started", f"r{n}", 7, release_at + n * 0.01),
                    _e("finished", f"r{n}", 7, release_at + n * 0.01 + 0.001, outcome="ok")]
    return entries


def test_reserved_tasks_stranded_for_the_lease_after_a_cut_fail() -> None:
    """Issue 13 #5: the reconnect leaves them leased to the dead connection until the lease
    (10 s) expires; every worker idles meanwhile."""
    verdict = released_after_cut(_ev(_orphaned(20.0), [_f("proxy-cut", 10.0)],
                                     release_within=3.0, lease=10.0))
    assert not verdict.passed
    assert "waited 9.0s with every worker idle" in verdict.message


def test_tasks_released_at_the_reconnect_pass() -> None:
    verdict = released_after_cut(_ev(_orphaned(11.3), [_f("proxy-cut", 10.0)],
                                     release_within=3.0, lease=10.0))
    assert verdict.passed and verdict.figures["windows"] == 1


def test_a_busy_worker_a_short_lease_or_a_main_kill_leave_the_wait_unjudged() -> None:
    busy = [*_orphaned(20.0), _e("published", "long", 1, 9.0, kind="sleep", expect="ok"),
            _e("started", "long", 8, 9.2), _e("finished", "long", 8, 19.9, outcome="ok")]
    for entries, faults, lease in (
            (busy, [_f("proxy-cut", 10.0)], 10.0),  # a worker ran something: hoarded, not lost
            (_orphaned(14.0), [_f("proxy-cut", 10.0)], 4.0),  # too short a lease to tell
            (_orphaned(20.0), [_f("proxy-cut", 10.0), _f("kill-main", 12.0)], 10.0)):
        verdict = released_after_cut(_ev(entries, faults, release_within=3.0, lease=lease))
        assert verdict.passed, verdict.message


def test_a_cut_inside_a_black_hole_or_soon_after_a_main_kill_leaves_the_wait_unjudged() -> None:
    """Found by explore on main: a cut 0.5 s into a 9.7 s black hole (the worker reconnects
    into the hole, and waits); a worker killed just before the cut leaves its own leases
    to expire (the table's "redelivered after the lease")."""
    for faults in ([_f("proxy-blackhole", 9.5, duration=9.7), _f("proxy-cut", 10.0)],
                   [_f("kill-main", 8.0), _f("proxy-cut", 10.0)]):
        verdict = released_after_cut(_ev(_orphaned(20.0), faults, release_within=3.0,
                                         lease=10.0))
        assert verdict.passed, verdict.message
    short = [_f("proxy-blackhole", 2.0, duration=2.0), _f("proxy-cut", 10.0)]  # long over
    assert not released_after_cut(_ev(_orphaned(20.0), short, release_within=3.0,
                                      lease=10.0)).passed


def test_explore_adds_the_recovery_oracles_its_suite_names(tmp_path: Path) -> None:
    ev = _ev(_orphaned(20.0), [_f("proxy-cut", 10.0)], tmp_path, release_within=3.0,
             lease=10.0, blackhole_noticed_within=8.0)
    named = {v.oracle: v.passed for v in explore_verdicts(ev, [])}
    assert named == {"blackhole-noticed": True, "released-after-cut": False}
