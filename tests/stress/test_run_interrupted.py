"""A ``taskq-stress run`` stopped with SIGTERM (a CI job cancelled, ``kill`` in a shell) takes
its cell's worker down with it and still writes its report."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.stress.conftest import ROOT

pytestmark = pytest.mark.redis


def _wait_for(what: str, check, deadline: float = 90.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {deadline:.0f} s")


def _workers(harness: psutil.Process) -> list[psutil.Process]:
    try:
        tree = harness.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in tree if "stress.harness" in _cmdline(p)]


def _status(proc: psutil.Process) -> str:
    try:
        return f"{proc.status()} ppid={proc.ppid()}"
    except psutil.Error:
        return "gone"


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and _status(p).split()[0] not in
            (psutil.STATUS_ZOMBIE, "gone")]


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def test_a_run_stopped_with_sigterm_stops_its_worker_and_writes_its_report(
        tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stress", "run", "--suite", "kill-children",
         "--broker", "redis://127.0.0.1:6379/0", "--seed", "1", "--duration", "120",
         "--cell", "pool=fair,max_tasks_per_child=0,acks=early",
         "--report-dir", str(tmp_path / "reports"), "--json", str(report)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        harness = psutil.Process(proc.pid)
        # The worker and its pool: the cell is under way.
        workers = _wait_for("worker of the cell with its pool",
                            lambda: len(found := _workers(harness)) >= 3 and found)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        _wait_for("end of the cell's worker", lambda: not _alive(workers), deadline=30)
    except AssertionError as exc:  # what is left, and what the run said, for the next look
        left = [(w.pid, _status(w), _cmdline(w)) for w in _alive(workers)]
        raise AssertionError(f"{exc}; still running: {left}\nthe run's output:\n{output}"
                             ) from None
    assert "interrupted" in output
    assert json.loads(report.read_text())["run"]["interrupted"] is True
