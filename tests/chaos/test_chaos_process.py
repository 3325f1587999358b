"""Process faults against real processes: only the targeted tree is ever hit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from chaos.clock import FakeClock
from chaos.errors import TargetError
from chaos.journal import Journal, read_journal
from chaos.process import Freeze, Kill, KillMain, choose, parse_signal, send_signal
from chaos.runner import Runner
from chaos.schedule import poisson
from chaos.targets import ChildrenOf, Matching, Pids, ProcessRef, child_pids, read_stat
from chaos.waiting import wait_until

if TYPE_CHECKING:
    from tests.chaos.conftest import Bystanders, Tree


def _alive(pid: int) -> bool:
    stat = read_stat(pid)
    return stat is not None and stat.state not in ("Z", "X")


def test_killer_hits_only_the_target_tree(
    spawn_tree: Callable[..., Tree], bystanders: Callable[[int], Bystanders], tmp_path: Path
) -> None:
    # Given a target tree, a second tree next to it, and processes that log any signal
    target = spawn_tree(30)
    other = spawn_tree(10)
    watchers = bystanders(3)
    journal = Journal(tmp_path / "faults.jsonl")
    # When the killer fires repeatedly with lethal and catchable signals
    for signame in ("KILL", "TERM", "SEGV", "ABRT"):
        killer = Kill(ChildrenOf(target.pid), signal=signame, count=3, seed=1, journal=journal)
        for _ in range(3):
            killer.inject()
    killer = Kill(ChildrenOf(target.pid), journal=journal, seed=2)
    for _ in range(200):
        if not target.children():
            break
        killer.inject()
    # Then every signal went to a child of the target, and nobody else felt a thing
    records = read_journal(tmp_path / "faults.jsonl")
    hit = {pid for r in records for pid in r.detail.get("pids", [])}
    assert hit <= {ref.pid for ref in target.refs}
    assert len(hit) == 30
    assert _alive(target.pid), "the target's parent is outside 'children of'"
    assert all(ref.is_alive() for ref in other.refs)
    assert watchers.all_alive()
    assert watchers.signals_received() == ""
    assert Kill(ChildrenOf(target.pid)).inject().outcome == "no-target"


def test_each_signal_kills_the_way_it_should() -> None:
    for signame, expected in [("KILL", -9), ("TERM", -15), ("SEGV", -11), ("ABRT", -6)]:
        proc = subprocess.Popen(["sleep", "600"])
        record = Kill(Pids([proc.pid]), signal=signame).inject()
        assert record.outcome == "ok"
        assert record.params["signal"] == f"SIG{signame}"
        assert proc.wait(10) == expected


def test_a_seeded_schedule_produces_the_same_journal_twice(
    spawn_tree: Callable[..., Tree],
) -> None:
    def run_once() -> list[tuple[str, tuple[int, ...], float | None, float, str]]:
        tree = spawn_tree(12)
        clock = FakeClock()
        journal = Journal(clock=clock)
        killer = Kill(ChildrenOf(tree.pid), seed=1234, journal=journal)
        Runner(poisson(3, seed=99).until(2), killer, clock=clock).run()
        tree.kill()
        return [
            (r.kind, tuple(r.detail.get("indices", ())), r.offset, r.mono, r.outcome)
            for r in journal.records
        ]

    first, second = run_once(), run_once()
    assert first == second
    assert len(first) >= 3 and all(outcome == "ok" for *_, outcome in first)


def test_fraction_kills_that_share_of_the_children(spawn_tree: Callable[..., Tree]) -> None:
    tree = spawn_tree(10)
    record = Kill(ChildrenOf(tree.pid), fraction=0.3, seed=0).inject()
    assert len(record.detail["pids"]) == 3
    tree.wait_children(7)


def test_where_predicate_aims_at_matching_children(spawn_tree: Callable[..., Tree]) -> None:
    tree = spawn_tree(0, sleep_args=["600", "601", "600", "601"])
    busy = lambda p: p.cmdline()[-1] == "601"  # noqa: E731 -- a named predicate reads best here
    killer = Kill(ChildrenOf(tree.pid, where=busy), count=5, seed=0)
    record = killer.inject()
    assert len(record.detail["pids"]) == 2
    survivors = tree.wait_children(2)
    assert all(psutil.Process(p).cmdline()[-1] == "600" for p in survivors)


def test_recursive_targets_the_whole_subtree(spawn_tree: Callable[..., Tree]) -> None:
    tree = spawn_tree(2)
    subtree = set(child_pids(os.getpid(), recursive=True))
    assert {tree.pid, *tree.children()} <= subtree
    assert tree.pid in child_pids(os.getpid()) and not set(tree.children()) & set(
        child_pids(os.getpid())
    )
    assert set(ChildrenOf(os.getpid(), recursive=True).candidates()) >= set(tree.children())


def test_a_vanished_or_reused_target_is_recorded_not_raised() -> None:
    proc = subprocess.Popen(["sleep", "600"])
    ref = ProcessRef.of(proc.pid)
    assert ref is not None
    impostor = ProcessRef(proc.pid, ref.start_ticks + 1)  # same pid, another process
    assert send_signal(impostor, signal.SIGKILL) is False
    assert ref.is_alive(), "a pid whose start time does not match is never signalled"
    targets = Pids([proc.pid])
    proc.kill()
    proc.wait()
    record = Kill(targets).inject()
    assert record.outcome == "no-target"
    assert Kill(Pids([ref])).inject().outcome == "no-target"


def test_signal_between_selection_and_exit_reports_vanished() -> None:
    proc = subprocess.Popen(["sleep", "600"])
    ref = ProcessRef.of(proc.pid)
    assert ref is not None
    proc.kill()
    proc.wait()
    assert send_signal(ref, signal.SIGTERM) is False


def test_dynamic_pid_source_is_asked_each_time() -> None:
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(2)]
    current = {"pid": procs[0].pid}
    killer = Kill(Pids(lambda: [current["pid"]]), journal=Journal())
    assert killer.inject().detail["pids"] == [procs[0].pid]
    current["pid"] = procs[1].pid
    assert killer.inject().detail["pids"] == [procs[1].pid]
    assert [p.wait(10) for p in procs] == [-9, -9]


def test_matching_never_targets_this_process() -> None:
    me = os.getpid()
    record = Kill(Matching(lambda p: p.pid == me), signal="USR2").inject()
    assert record.outcome == "no-target"


def test_kill_main_hits_the_main_process(spawn_tree: Callable[..., Tree]) -> None:
    tree = spawn_tree(2)
    record = KillMain(tree.pid).inject()
    assert (record.kind, record.outcome, record.detail["pids"]) == ("kill-main", "ok", [tree.pid])
    assert tree.proc.wait(10) == -9


def test_freeze_stops_then_thaws(spawn_tree: Callable[..., Tree]) -> None:
    tree = spawn_tree(3)
    journal = Journal()
    with Freeze(ChildrenOf(tree.pid), duration=0.3, count=2, seed=0, journal=journal) as freezer:
        record = freezer.inject()
        frozen = record.detail["pids"]
        assert len(frozen) == 2
        wait_until(
            lambda: all(read_stat(p).state == "T" for p in frozen),  # type: ignore[union-attr]
            10,
            what="SIGSTOP to take effect",
        )
        wait_until(lambda: not freezer.frozen, 10, what="the timed thaw")
        wait_until(
            lambda: all(read_stat(p).state == "S" for p in frozen),  # type: ignore[union-attr]
            10,
            what="the signal to take effect",
        )
    assert [r.kind for r in journal.records] == ["freeze", "thaw"]
    assert journal.records[1].detail["pids"] == frozen


def test_closing_a_freezer_thaws_at_once(spawn_tree: Callable[..., Tree]) -> None:
    tree = spawn_tree(2)
    freezer = Freeze(ChildrenOf(tree.pid), duration=3600, fraction=1.0)
    frozen = freezer.inject().detail["pids"]
    assert len(frozen) == 2
    freezer.close()
    assert freezer.frozen == []
    wait_until(
        lambda: all(read_stat(p).state != "T" for p in frozen),  # type: ignore[union-attr]
        10,
        what="the signal to take effect",
    )


def test_choose_is_deterministic_for_a_seed(spawn_tree: Callable[..., Tree]) -> None:
    import random

    tree = spawn_tree(8)
    targets = ChildrenOf(tree.pid)
    picks = [choose(targets, random.Random(5), count=3).picked for _ in range(2)]
    assert picks[0] == picks[1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("KILL", signal.SIGKILL), ("sigterm", signal.SIGTERM), (11, signal.SIGSEGV), ("6", 6)],
)
def test_parse_signal(value: str | int, expected: int) -> None:
    assert parse_signal(value) == expected


def test_bad_target_specs_are_explained() -> None:
    with pytest.raises(TargetError, match="unknown signal 'NOPE'"):
        parse_signal("NOPE")
    with pytest.raises(TargetError, match="fraction must be in"):
        Kill(Pids([]), fraction=1.5)
    with pytest.raises(TargetError, match="count must be a positive"):
        Kill(Pids([]), count=0)
    with pytest.raises(TargetError, match="no process with pid"):
        ChildrenOf(2**22 + 7)
    with pytest.raises(TargetError, match="pids or ProcessRefs"):
        Pids(["12"])  # type: ignore[list-item]


_GROWER = """
import os, sys, time
import chaos.memory
chaos.memory.install_grow_hook(32)
os.write(1, b"ready\\n")
if sys.argv[1] == "self":
    chaos.memory.grow(48)
    os.write(1, b"grown\\n")
sys.stdin.read()
"""


def _grower(mode: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _GROWER, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_memory_grow_hook_called_by_the_workload() -> None:
    proc = _grower("self")
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"grown\n"
        assert psutil.Process(proc.pid).memory_info().rss > 48 * 1024 * 1024
    finally:
        proc.kill()
        proc.wait()


def test_grow_memory_injector_triggers_the_hook() -> None:
    from chaos.process import GrowMemory

    proc = _grower("signal")
    try:
        before = psutil.Process(proc.pid).memory_info().rss
        record = GrowMemory(Pids([proc.pid])).inject()
        assert (record.kind, record.outcome) == ("grow-memory", "ok")
        wait_until(
            lambda: psutil.Process(proc.pid).memory_info().rss > before + 30 * 1024 * 1024,
            10,
            what="RSS to grow by 32 MiB",
        )
    finally:
        proc.kill()
        proc.wait()


def test_memory_grow_and_release_in_process() -> None:
    import chaos.memory

    chaos.memory.release()
    assert chaos.memory.grow(1) == 1024 * 1024
    assert chaos.memory.held() == 1024 * 1024
    assert chaos.memory.release() == 1024 * 1024
    with pytest.raises(ValueError, match="positive"):
        chaos.memory.grow(0)
