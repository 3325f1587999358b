"""A real ``taskq worker -P prefork`` (app ``appmod_pool``) against the pool defects of issue
13: max-tasks-per-child after a lost connection (#1), a parent with more than 1,024 open fds
and a job that kills its child before it starts (#4), a child killed after it stored its
result (#9), ``task_track_started`` (#11), and the child's hard-limit backstop while the
parent is frozen (#12).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
from e2e_support import Broker, Ledger, StartWorker, wait_until

from taskq import states
from taskq.canvas import Signature


def _meta(client: Any, task_id: str) -> dict[str, Any]:
    return client.backend.get_task_meta(task_id)


# -- #1 ---------------------------------------------------------------------------------------

def test_max_tasks_per_child_keeps_working_after_a_lost_connection(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Given -c 1 -O fast --max-tasks-per-child 3 with a running task and two queued in the
    child (acks_late: unacked, so the broker redelivers them), when the broker connection is
    cut (the two are taken back), then the child still gets work: the two (redelivered) and
    five more all run, each once."""
    w = worker(redis_broker, pool="prefork", concurrency=1, app="appmod_pool",
               args=["-O", "fast", "--max-tasks-per-child", "3"],
               env={"TASKQ_WORKER_FAST_QUEUE_DEPTH": "3"})
    client = redis_broker.app()
    running = client.send_task("appmod.late_sleeper", (3.0, str(ledger)))
    ledger.wait_started(running.id)
    queued = [client.send_task("appmod.late_sleeper", (0, str(ledger))) for _ in range(2)]
    for r in queued:
        w.wait_log(rf"received appmod\.late_sleeper\[{r.id}\]")
    offset = len(w.log())
    assert w.kill_redis_clients() >= 1
    w.wait_log(r"took 2 back from the pool", 15, after=offset)
    more = [client.send_task("appmod.stamp", (str(ledger),)) for _ in range(5)]
    for r in [*queued, *more]:
        r.get(timeout=60)
    assert running.get(timeout=30) == "slept-late"  # it may run twice: its ack was cut
    assert [len(ledger.starts(r.id)) for r in [*queued, *more]] == [1] * 7


# -- #4 ---------------------------------------------------------------------------------------

def test_a_worker_with_1100_open_fds_runs_tasks_on_its_children(
        redis_broker: Broker, worker: StartWorker) -> None:
    """Given a worker holding 1,100 open files (its children's pipes are numbered past
    1023), its prefork children run tasks (they died on their first job, in a fork loop)."""
    w = worker(redis_broker, pool="prefork", concurrency=2, app="appmod_pool",
               env={"APPMOD_OPEN_FDS": "1100"})
    assert psutil.Process(w.pid).num_fds() > 1100
    client = redis_broker.app()
    results = [client.send_task("appmod.add", (i, i)) for i in range(4)]
    assert [r.get(timeout=30) for r in results] == [0, 2, 4, 6]
    assert w.log().count("ready: pool=") == 1
    assert "exited" not in w.log()  # no child died


def test_a_job_that_kills_every_child_before_it_starts_ends_failure(
        redis_broker: Broker, worker: StartWorker) -> None:
    """Given a job whose arrival kills the child reading it (before ``started``), then its
    child restarts back off, it ends FAILURE after task_max_redeliveries such deaths (not
    a fork loop), it is not delivered again, and the worker runs the next task."""
    w = worker(redis_broker, pool="prefork", concurrency=1, app="appmod_pool",
               env={"APPMOD_DIE_READING": "appmod_pool.unreadable",
                    "TASKQ_TASK_MAX_REDELIVERIES": "2"})
    client = redis_broker.app()
    poison = client.send_task("appmod_pool.unreadable")
    wait_until(lambda: _meta(client, poison.id)["status"] == states.FAILURE, 60,
               "the unreadable task to fail")
    meta = _meta(client, poison.id)
    assert meta["result"]["exc_type"] == "WorkerLostError"
    assert "before it started" in meta["result"]["exc_message"][0]
    assert client.send_task("appmod.add", (2, 3)).get(timeout=30) == 5
    deaths = re.findall(rf"died \(exitcode 3\) reading appmod_pool\.unreadable\[{poison.id}\]",
                        w.log())
    assert len(deaths) == 3  # task_max_redeliveries + 1, then given up
    assert "keep dying" in w.log()  # the restarts backed off


# -- #9 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["appmod.sleeper", "appmod.lossy_sleeper"])
def test_a_child_killed_after_storing_success_keeps_it_and_the_task_runs_once(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger, tmp_path: Path,
        task: str) -> None:
    """Given a task that stored SUCCESS and is sending its link callback, when its child is
    killed, then SUCCESS stays stored (not overwritten with WorkerLostError) and the task
    is not run again (lossy_sleeper: acks_late + reject_on_worker_lost)."""
    flag = tmp_path / "stalled"
    w = worker(redis_broker, pool="prefork", concurrency=1, app="appmod_pool",
               env={"APPMOD_STALL_AFTER_STORE": str(flag)})
    client = redis_broker.app()
    result = client.send_task(task, (0, str(ledger)),
                              link=Signature("appmod.record", kwargs={"ledger": str(ledger)}))
    pid = int(wait_until(lambda: flag.exists() and flag.read_text(), 30, "the stall"))
    assert _meta(client, result.id)["status"] == states.SUCCESS
    os.kill(pid, signal.SIGKILL)
    w.wait_log(rf"{re.escape(task)}\[{result.id}\] (SUCCESS|lost)", 30)
    # Behind anything the worker requeued for it: a rerun would start before this ends.
    assert client.send_task("appmod.add", (1, 1)).get(timeout=30) == 2
    assert _meta(client, result.id)["status"] == states.SUCCESS
    assert len(ledger.starts(result.id)) == 1


# -- #11 --------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["setting", "task option"])
def test_track_started_stores_started_with_pid_and_hostname(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger, how: str) -> None:
    """Given task_track_started (or a task's track_started=True), a running task's result
    reads STARTED, with the pid of the process running it and the worker's name."""
    env = {"TASKQ_TASK_TRACK_STARTED": "true"} if how == "setting" else {}
    name = "appmod.sleeper" if how == "setting" else "appmod_pool.tracked_sleeper"
    w = worker(redis_broker, pool="prefork", concurrency=1, app="appmod_pool", env=env)
    client = redis_broker.app()
    result = client.send_task(name, (30, str(ledger)))
    [(pid, _)] = ledger.wait_started(result.id, timeout=30)
    meta = _meta(client, result.id)
    assert meta["status"] == states.STARTED
    assert meta["result"] == {"pid": pid, "hostname": w.hostname}
    client.control.revoke(result.id, terminate=True, signal="SIGKILL")


# -- #12 --------------------------------------------------------------------------------------

def test_a_child_stops_its_task_past_the_hard_limit_while_the_worker_is_frozen(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Given a task with a 1 s hard limit, when the worker's main process is frozen (SIGSTOP)
    as the task starts, then the child stops the task by itself (hard limit + grace); once
    thawed, the worker reports FAILURE TimeLimitExceeded and runs the next task."""
    w = worker(redis_broker, pool="prefork", concurrency=1, app="appmod_pool")
    client = redis_broker.app()
    result = client.send_task("appmod.sleeper", (60, str(ledger)), time_limit=1)
    [(pid, _)] = ledger.wait_started(result.id, timeout=30)
    w.signal(signal.SIGSTOP)
    try:
        child = psutil.Process(pid)

        def ended() -> bool:
            try:
                return child.status() == psutil.STATUS_ZOMBIE  # its parent cannot reap it
            except psutil.NoSuchProcess:
                return True

        wait_until(ended, 30, "the child to stop its task while the worker is frozen")
    finally:
        w.signal(signal.SIGCONT)
    wait_until(lambda: _meta(client, result.id)["status"] == states.FAILURE, 30,
               "the FAILURE")
    assert _meta(client, result.id)["result"]["exc_type"] == "TimeLimitExceeded"
    assert client.send_task("appmod.add", (1, 2)).get(timeout=30) == 3
    assert not ledger.ended(result.id)
