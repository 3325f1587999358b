"""The oracles fail on workers that are broken on purpose, and pass on taskq's.

An oracle that cannot fail does not count: each broken worker here (tests/stress/
broken_worker.py, run through ``--worker-cmd``) breaks one promise, and the test checks that
the oracle judging that promise fails with a report that names what went wrong.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.stress.conftest import HERE, ROOT, write_suite

pytestmark = pytest.mark.redis

SUITE = """
[suite]
name = "broken"
description = "a short run without faults"
duration = 3
rate = 40
max_time = 60

[workload]
noop = 1

[oracles]
deadlock_after = 3
min_tasks = 10
"""


def _broken(mode: str, every: int) -> str:
    return f"{sys.executable} {HERE / 'broken_worker.py'} {mode} {every}"


def test_nothing_lost_fails_on_a_worker_that_drops_messages(stress_run, tmp_path: Path,
                                                            redis_url: str) -> None:
    suite = write_suite(tmp_path / "broken.toml", SUITE)

    run = stress_run("--suite", str(suite), "--broker", redis_url, "--seed", "3",
                     "--worker-cmd", _broken("drop", 7))

    assert run.code == 1, run.output
    verdict = run.verdict("nothing-lost")
    assert not verdict["passed"]
    assert verdict["figures"]["never_started"] >= 3
    assert "was published and never started" in verdict["message"]
    assert "replay with: taskq-stress replay" in run.output
    assert f"seed {run.report['cells'][0]['seed']}" in run.output


def test_deadlock_fails_with_stacks_on_a_worker_that_stops_making_progress(
        stress_run, tmp_path: Path, redis_url: str) -> None:
    suite = write_suite(tmp_path / "broken.toml", SUITE)

    run = stress_run("--suite", str(suite), "--broker", redis_url, "--seed", "4",
                     "--worker-cmd", _broken("stall", 20))

    assert run.code == 1, run.output
    verdict = run.verdict("deadlock")
    assert not verdict["passed"]
    assert "no progress for 3s" in verdict["message"]
    stacks = Path(run.report["cells"][0]["directory"]) / "stacks.txt"
    assert "broken_worker.py" in stacks.read_text()  # the stuck frame is in the dump
    assert run.verdict("pool-health")["passed"]  # the oracles judge independently


def test_a_taskq_worker_passes_kill_children_and_the_reports_are_stable(
        stress_run, tmp_path: Path, redis_url: str) -> None:
    run = stress_run("--suite", "kill-children", "--broker", redis_url, "--seed", "5",
                     "--cell", "pool=fast,acks=late-reject,max_tasks_per_child=10",
                     "--duration", "4")

    assert run.code == 0, run.output
    cell = run.report["cells"][0]
    assert cell["params"]["transport"] == "redis"
    assert run.verdict("lost-process")["figures"]["kills_of_running"] >= 5
    assert run.verdict("nothing-lost")["figures"]["lost"] == 0
    cases = ET.fromstring(run.junit).findall("testcase")
    assert sorted(c.get("name") for c in cases) == sorted(
        ["deadlock", "nothing-lost", "lost-process", "not-vacuous", "pool-health"])
    assert {c.get("classname") for c in cases} == {f"kill-children.{cell['cell']}"}


def test_an_unreachable_broker_is_exit_code_2_not_a_verdict(stress_run) -> None:
    run = stress_run("--suite", "kill-children", "--broker", "redis://127.0.0.1:1/0",
                     "--duration", "1")

    assert run.code == 2, run.output
    assert "not reachable" in run.output


def test_an_app_teams_own_tasks_are_stressed_without_changing_them(stress_run,
                                                                    redis_url: str) -> None:
    # Given the shop example's tasks named in its taskq-stress.toml (no ledger code in them)
    shop = ROOT / "examples" / "shop"

    run = stress_run("--suite", "kill-children", "-A", "shop.tasks", "--broker", redis_url,
                     "--seed", "6", "--duration", "3", "--cell", "acks=early", cwd=shop)

    # Then the worker's hooks wrote their ledger, and the oracles judged them
    assert run.code == 0, run.output
    lost = run.verdict("nothing-lost")["figures"]
    assert lost["published"] >= 50 and lost["lost"] == 0
    assert run.report["run"]["workload"].endswith("taskq-stress.toml")
    assert run.verdict("lost-process")["figures"]["kills_of_running"] >= 1
