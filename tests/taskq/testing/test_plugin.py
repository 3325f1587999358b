"""taskq's pytest plugin, run as app teams run it (pytester), against the real Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "shop"


@pytest.fixture
def broker_env(redis_url, monkeypatch):
    monkeypatch.setenv("TASKQ_TEST_BROKER", redis_url)


def test_fixture_names_never_clash_with_celery(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--fixtures")
    names = [line.split()[0] for line in result.outlines
             if line and not line.startswith((" ", "-", "=")) and "--" in line]
    ours = [n for n in names if "taskq" in n]
    assert ours, result.stdout.str()
    assert all(n.startswith("taskq_") for n in ours)
    assert not any(n.startswith("celery_") for n in ours)


def test_a_stuck_task_fails_the_test_naming_it_and_the_session_ends(pytester, broker_env):
    pytester.makeconftest("""
import pytest

@pytest.fixture(scope="session")
def taskq_worker_parameters():
    return {"stop_timeout": 2.0, "concurrency": 1}
""")
    pytester.makepyfile("""
import threading

def test_stuck(taskq_app, taskq_worker):
    forever = threading.Event()

    @taskq_app.task(name="never_returns")
    def never_returns():
        forever.wait()

    never_returns.delay()
    import time
    deadline = time.monotonic() + 10
    while not taskq_worker.worker.dispatched and time.monotonic() < deadline:
        time.sleep(0.01)
""")
    result = pytester.runpytest_subprocess(timeout=60)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*did not stop within 2.0 s; still running: never_returns*"])


def test_a_failed_test_shows_the_end_of_its_subprocess_worker_s_log(pytester, broker_env):
    pytester.makepyfile(proj="""
from taskq import TaskQ

app = TaskQ("proj")

@app.task(name="proj.boom")
def boom():
    raise ValueError("boom from inside the worker")
""")
    pytester.makeconftest("""
import pytest

@pytest.fixture(scope="session")
def taskq_app_spec():
    return "proj:app"

@pytest.fixture(scope="session")
def taskq_worker_pool():
    return "prefork"
""")
    pytester.makepyfile("""
import time

def test_boom(taskq_app, taskq_worker):
    taskq_app.send_task("proj.boom")
    deadline = time.monotonic() + 60
    while "boom from inside" not in taskq_worker.read_log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert False, "the test fails after the task did"

def test_passes(taskq_app, taskq_worker):
    pass
""")
    result = pytester.runpytest_subprocess(timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    # The failed test's report carries the worker's log (its file is gone after the test),
    # the task's traceback included; the passing test's does not
    result.stdout.fnmatch_lines(["*taskq worker log (taskqt*",
                                 "*ValueError: boom from inside the worker*"])
    assert result.stdout.str().count("taskq worker log (") == 1


@pytest.mark.parametrize("broker", ["redis", "amqp", "embedded"])
@pytest.mark.parametrize("pool", ["solo", "threads", "prefork"])
def test_the_example_project_passes(pool, broker, request):
    env = {**os.environ, "SHOP_TEST_POOL": pool}
    env.pop("TASKQ_TEST_BROKER", None)
    if broker != "embedded":  # else nothing set: the plugin's default, the SQLite broker
        env["TASKQ_TEST_BROKER"] = request.getfixturevalue(f"{broker}_url")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    if broker == "embedded":
        assert "skipped" not in proc.stdout
