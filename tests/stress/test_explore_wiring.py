"""The axes and faults explore wires into a cell: a fleet's lease oracle, kills aimed at a
running task, fd pressure in the worker's main process, countdown tasks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos import FaultRecord
from stress.explore import Case, FaultEvent, Generator
from stress.faults import WorkerProcesses
from stress.ledger import Book, Entry
from stress.oracles import Evidence, lease_held, pool_capacity
from stress.suites import Suite, parse_cell
from stress.workload import Mix

ROOT = Path(__file__).resolve().parent.parent.parent


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _ev(entries: list[Entry], faults: list[FaultRecord] | None = None, acks: str = "late",
        **oracles: object) -> Evidence:
    book = Book()
    book.add(entries)
    return Evidence(suite=Suite("t", "", Path("t.toml"), oracles=dict(oracles)),
                    cell=parse_cell(f"acks={acks}"), book=book, faults=faults or [],
                    deadlock=False, deadlock_pending=0, stall_bound=10.0, baseline=None,
                    health=None, worker_starts=1, is_taskq=True, publish_errors=0,
                    directory=Path("."))


def _taken_while_held() -> list[Entry]:
    """Worker 1 runs t from 1.0 to 6.0; worker 2 starts it at 4.0."""
    return [_e("published", "t", 1, 0.5, kind="sleep", expect="ok"),
            _e("started", "t", 11, 1.0, member="1"), _e("started", "t", 21, 4.0, member="2"),
            _e("finished", "t", 21, 5.0, outcome="ok"),
            _e("finished", "t", 11, 6.0, outcome="ok")]


def test_a_message_delivered_while_another_worker_runs_it_fails_lease_held() -> None:
    verdict = lease_held(_ev(_taken_while_held()))
    assert not verdict.passed
    assert "started on worker 2" in verdict.message


def test_a_fault_the_table_names_or_runs_one_after_the_other_pass_lease_held() -> None:
    cut = FaultRecord(mono=2.0, wall=2.0, kind="proxy-cut", target="proxy", outcome="ok")
    assert lease_held(_ev(_taken_while_held(), [cut])).passed  # may run twice
    kill = FaultRecord(mono=3.0, wall=3.0, kind="kill-main", target="worker main",
                       outcome="ok", detail={"pids": [10]})
    assert lease_held(_ev(_taken_while_held(), [kill])).passed  # its run ended with it
    apart = [_e("published", "t", 1, 0.5, kind="sleep", expect="ok"),
             _e("started", "t", 11, 1.0, member="1"),
             _e("finished", "t", 11, 2.0, outcome="ok"),
             _e("started", "t", 21, 4.0, member="2")]
    assert lease_held(_ev(apart)).passed  # nothing-lost judges this one


def test_a_countdown_task_waits_for_capacity_only_from_when_it_is_due() -> None:
    entries = [_e("published", "e", 1, 0.0, kind="eta", expect="ok", countdown=30.0),
               _e("started", "e", 7, 30.5), _e("finished", "e", 7, 30.6, outcome="ok")]
    assert pool_capacity(_ev(entries, pool_capacity_after=10.0, capacity=2)).passed
    late = [*entries[:1], _e("started", "e", 7, 45.0), _e("finished", "e", 7, 45.1,
                                                          outcome="ok")]
    assert not pool_capacity(_ev(late, pool_capacity_after=10.0, capacity=2)).passed


def test_eta_tasks_are_published_with_a_countdown() -> None:
    spec = Mix({"eta": 1.0}, seed=1).draw()
    assert spec.kind == "eta" and spec.options is not None
    assert 0.5 <= spec.options["countdown"] <= 4.0


def test_an_aimed_kill_picks_only_a_child_running_a_task() -> None:
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            for _ in range(3)]
    try:
        busy = {kids[1].pid}
        targets = WorkerProcesses(lambda: None, main_pids=lambda: [os.getpid()],
                                  running=lambda: busy, wait=0.2)
        assert targets.candidates() == [kids[1].pid]
        busy = set()
        began = time.monotonic()
        assert targets.candidates() == []  # none running: it waited, then gave up
        assert time.monotonic() - began >= 0.2
    finally:
        for kid in kids:
            kid.kill()
            kid.wait()


def test_fd_pressure_puts_the_worker_s_sockets_above_1024() -> None:
    code = ("import socket, stress.harness as h; s = socket.socket(); "
            "print(len(h._pressure), s.fileno())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60,
                          env={**os.environ, "TASKQ_STRESS_FDS": "1100"})
    assert done.returncode == 0, done.stderr
    held, fileno = map(int, done.stdout.split())
    assert held == 1100 and fileno > 1024


def test_a_fleet_case_runs_several_workers_and_judges_leases() -> None:
    gen = Generator(9)
    case = next(c for c in (gen.draw() for _ in range(500)) if c.fleet > 1)
    assert case.cell()["fleet"] == case.fleet
    assert case.suite().oracles["lease_held"] is True
    solo = Case({**case.config, "fleet": 1}, case.workload, case.sleep,
                (FaultEvent("kill-main", 1.0),), case.duration, case.rate, case.seed)
    assert "fleet" not in solo.cell().params and not solo.suite().oracles["lease_held"]


def test_a_worker_that_cannot_run_a_first_task_fails_an_explored_case(tmp_path: Path) -> None:
    """Found by explore: the worker at 2693be4 under fd pressure crash-looped its children
    (select() on an fd above 1024) and never ran a task; that is the worker's failure."""
    from stress.cell import CellRun

    case = Case({**Generator(1).draw().config, "transport": "sqlite", "fleet": 1},
                {"noop": 1.0}, (0.01, 0.2), (), 2.0, 2.0, 7)
    suite = case.suite()
    run = CellRun(suite, case.cell(), case.seed, tmp_path, case.duration, 30.0,
                  worker_cmd=f"{sys.executable} -c 'raise SystemExit(3)'")
    result = run.run()
    assert result.error is None
    assert [(v.oracle, v.passed) for v in result.verdicts] == [("warm-up", False)]
    assert "exited with 3" in result.verdicts[0].message


def test_a_drained_run_watches_on_a_lease_past_its_last_main_process_fault() -> None:
    """Issue 13 #7 shows after the lease: an early-ack job the killed worker started but never
    acked comes back to the next worker then, long after the rest drained."""
    from stress.cell import watch_redelivery_until

    def record(kind: str, at: float) -> FaultRecord:
        return FaultRecord(mono=at, wall=at, kind=kind, target="t", outcome="ok")

    kills = [record("kill-main", 10.0), record("cold-shutdown", 14.0), record("proxy-cut", 20.0)]
    assert watch_redelivery_until({"watch_redelivery": 8.0}, kills) == 22.0
    assert watch_redelivery_until({"watch_redelivery": 8.0}, kills[2:]) == 0.0
    assert watch_redelivery_until({}, kills) == 0.0
    case = Case({**Generator(1).draw().config, "lease": 3.0}, {"noop": 1.0}, (0.01, 0.2), (),
                4.0, 2.0, 7)
    assert case.suite().oracles["watch_redelivery"] == 6.0


def test_another_checkout_s_worker_imports_its_own_taskq_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a taskq checkout (this one) with --worker-cmd pointing at another checkout's
    taskq, the worker's path must not start with this checkout: its taskq package would
    shadow the worker's own (an editable install resolves after the path), and the search
    would judge this tree's worker instead of the one asked for. The stress harness still
    comes from here."""
    from stress.cell import CellRun
    from stress.spaces import make_space

    monkeypatch.chdir(ROOT)
    case = Case({**Generator(1).draw().config, "transport": "sqlite", "fleet": 1},
                {"noop": 1.0}, (0.01, 0.2), (), 2.0, 2.0, 7)
    run = CellRun(case.suite(), case.cell(), case.seed, tmp_path, case.duration, 30.0,
                  taskq_cmd=["/elsewhere/.venv/bin/taskq"])
    worker = run._worker(make_space("sqlite", tmp_path), None, tmp_path)
    path = worker.env["PYTHONPATH"].split(os.pathsep)
    assert str(ROOT) not in path
    assert (Path(path[0]) / "stress").resolve() == ROOT / "stress"
    assert worker.argv[0] == "/elsewhere/.venv/bin/taskq"


def test_an_explored_worker_that_never_runs_its_warm_up_task_fails_within_the_case_s_bound(
        tmp_path: Path) -> None:
    """A worker that starts and never runs a task (2693be4's children crash-looping under fd
    pressure) costs a case its warm-up bound, not a minute per run of every shrink candidate."""
    from stress.cell import CellRun

    case = Case({**Generator(1).draw().config, "transport": "sqlite", "fleet": 1},
                {"noop": 1.0}, (0.01, 0.2), (), 2.0, 2.0, 7)
    suite = case.suite()
    assert suite.oracles["warm_up_within"] == 30.0
    suite.oracles["warm_up_within"] = 1.0
    run = CellRun(suite, case.cell(), case.seed, tmp_path, case.duration, 30.0,
                  worker_cmd=f"{sys.executable} -c 'import time; time.sleep(60)'")
    began = time.monotonic()
    result = run.run()
    assert [(v.oracle, v.passed) for v in result.verdicts] == [("warm-up", False)]
    assert "within 1 s" in result.verdicts[0].message
    assert time.monotonic() - began < 30.0


def test_a_control_fault_asks_the_worker_as_a_monitor_would_and_it_answers(
        tmp_path: Path) -> None:
    """The ``control`` fault: ping and stats, straight to the broker, every 0.5 s while it is
    on; each injection is journaled with the replies it got (here all, nothing else faulted)."""
    import json

    from stress.cell import CellRun

    case = Case({**Generator(1).draw().config, "transport": "sqlite", "fleet": 1,
                 "pool_type": "prefork"},
                {"noop": 1.0}, (0.01, 0.2), (FaultEvent("control", 0.5, 2.0),), 8.0, 5.0, 7)
    # 8 s of run for 2 s of asking: a late injection (slow replies on busy cores) still
    # fires before the cell stops its injectors
    assert case.suite().faults == [{"kind": "control",
                                    "schedule": "every 0.5s after 0.5s until 2.5s"}]
    result = CellRun(case.suite(), case.cell(), case.seed, tmp_path, case.duration,
                     60.0).run()
    assert result.error is None
    records = [json.loads(line) for line in (tmp_path / "faults.jsonl").read_text().splitlines()]
    asked = [r for r in records if r["kind"] == "control"]
    assert len(asked) >= 3
    assert all(r["outcome"] == "ok" for r in asked), asked
    assert any(r["detail"]["replies"] == {"ping": 1, "stats": 1} for r in asked), asked
    assert all(v.passed for v in result.verdicts), result.verdicts
