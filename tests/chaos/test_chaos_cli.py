"""``python -m chaos`` / ``taskq-stress chaos``: inject by hand, journal printed as it goes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from chaos.cli import cli
from chaos.journal import read_journal
from chaos.targets import read_stat
from chaos.waiting import wait_until
from stress.cli import main as stress_main

if TYPE_CHECKING:
    from tests.chaos.conftest import Tree

ROOT = Path(__file__).resolve().parents[2]


def test_kill_children_on_a_schedule_prints_and_writes_the_journal(
    spawn_tree: Callable[..., Tree], tmp_path: Path
) -> None:
    tree = spawn_tree(5)
    journal = tmp_path / "faults.jsonl"
    result = CliRunner().invoke(
        cli,
        [
            "kill",
            "--pid",
            str(tree.pid),
            "--children",
            "--signal",
            "KILL",
            "--schedule",
            "every 50ms",
            "--duration",
            "0.2s",
            "--seed",
            "1",
            "--journal",
            str(journal),
        ],
    )
    assert result.exit_code == 0, result.output
    printed = [json.loads(line) for line in result.output.splitlines()]
    assert len(printed) == 4
    assert [p["offset"] for p in printed] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert all(p["kind"] == "kill" and p["outcome"] == "ok" for p in printed)
    assert [r.to_json() for r in read_journal(journal)] == result.output.splitlines()
    tree.wait_children(1)


def test_freeze_lasts_its_time_then_thaws_and_exits(spawn_tree: Callable[..., Tree]) -> None:
    tree = spawn_tree(2)
    result = CliRunner().invoke(
        cli,
        [
            "freeze",
            "--pid",
            str(tree.pid),
            "--children",
            "--fraction",
            "1",
            "--for",
            "300ms",
            "--schedule",
            "at 0",
        ],
    )
    assert result.exit_code == 0, result.output
    kinds = [json.loads(line)["kind"] for line in result.output.splitlines()]
    assert kinds == ["freeze", "thaw"]
    freeze, thaw = (json.loads(line) for line in result.output.splitlines())
    # the freeze record is stamped just after the thaw timer starts
    assert thaw["mono"] - freeze["mono"] >= 0.28
    frozen = tree.children()
    wait_until(
        lambda: all(read_stat(p).state != "T" for p in frozen),  # type: ignore[union-attr]
        10,
        what="the children to be thawed",
    )


def test_kill_explains_bad_input() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["kill", "--pid", "1", "--schedule", "sometimes"])
    assert result.exit_code == 2 and "cannot read schedule 'sometimes'" in result.output
    result = runner.invoke(cli, ["kill", "--pid", str(2**22 + 3), "--children"])
    assert result.exit_code == 2 and "no process with pid" in result.output
    result = runner.invoke(
        cli, ["kill", "--pid", str(os.getpid()), "--signal", "NOPE", "--duration", "1"]
    )
    assert result.exit_code == 2 and "unknown signal 'NOPE'" in result.output


def test_bench_kill_reports_a_rate() -> None:
    result = CliRunner().invoke(cli, ["bench-kill", "--processes", "50"])
    assert result.exit_code == 0, result.output
    assert re.search(r"sent 50 SIGKILL in [\d.]+ s: [\d,]+ signals/s", result.output)
    assert "all 50 victims are gone" in result.output


def test_proxy_command_runs_for_its_duration(echo_server: tuple[str, int]) -> None:
    host, port = echo_server
    result = CliRunner().invoke(
        cli,
        ["proxy", "--upstream", f"{host}:{port}", "--api", "127.0.0.1:0", "--duration", "0.2s"],
    )
    assert result.exit_code == 0, result.output
    status = json.loads(result.output.splitlines()[0])
    assert status["upstream"] == f"{host}:{port}"
    assert status["api"].startswith("http://127.0.0.1:")


def test_proxy_command_cuts_on_a_schedule(echo_server: tuple[str, int]) -> None:
    host, port = echo_server
    result = CliRunner().invoke(
        cli,
        [
            "proxy",
            "--upstream",
            f"{host}:{port}",
            "--cut-schedule",
            "every 50ms",
            "--duration",
            "0.1s",
        ],
    )
    assert result.exit_code == 0, result.output
    kinds = [json.loads(line).get("kind") for line in result.output.splitlines()[1:]]
    assert kinds == ["proxy-cut", "proxy-cut"]


def test_journal_command_prints_a_file(tmp_path: Path) -> None:
    from chaos.journal import Journal

    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.record("kill", "x", "no-target")
    result = CliRunner().invoke(cli, ["journal", str(path)])
    assert result.exit_code == 0
    assert json.loads(result.output)["outcome"] == "no-target"


def test_taskq_stress_mounts_the_chaos_group() -> None:
    result = CliRunner().invoke(stress_main, ["chaos", "--help"])
    assert result.exit_code == 0
    for command in ("kill", "freeze", "proxy", "bench-kill", "journal"):
        assert command in result.output


def test_python_dash_m_chaos() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "chaos", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    ).stdout
    assert "Usage: python -m chaos" in out


def test_sigterm_stops_the_cli_and_thaws_what_it_froze(
    spawn_tree: Callable[..., Tree], tmp_path: Path
) -> None:
    from chaos.journal import read_journal as read

    tree = spawn_tree(2)
    journal = tmp_path / "j.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    args = ["freeze", "--pid", str(tree.pid), "--children", "--fraction", "1", "--for", "1h"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaos", *args, "--schedule", "at 0", "--journal", str(journal)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until(lambda: journal.exists() and read(journal), 30, what="the freeze")
        frozen = read(journal)[0].detail["pids"]
        wait_until(
            lambda: all(read_stat(p).state == "T" for p in frozen),  # type: ignore[union-attr]
            10,
            what="the children to stop",
        )
        proc.terminate()
        assert proc.wait(30) == 0
        assert [r.kind for r in read(journal)] == ["freeze", "thaw"]
        wait_until(
            lambda: all(read_stat(p).state != "T" for p in frozen),  # type: ignore[union-attr]
            10,
            what="the signal to take effect",
        )
    finally:
        proc.kill()
        proc.wait()
