"""The prefork pool inside a real worker: lost children, redelivery, pool control.

DESIGN.md's table: a running task whose child dies is FAILURE WorkerLostError with early
acks, and is requeued and rerun with acks_late + reject_on_worker_lost, up to
task_max_redeliveries; the pool is back to full size after every death.
"""

from __future__ import annotations

import os
import signal

import psutil
from e2e_support import Broker, Ledger, StartWorker, wait_until

from taskq.errors import WorkerLostError


def _pool_processes(client, hostname: str) -> list[int]:
    replies = client.control.broadcast("stats", destination=[hostname], reply=True,
                                       timeout=2.0) or []
    return [p for r in replies for p in r[hostname]["pool"]["processes"]]


def test_killed_child_fails_its_task_and_the_pool_refills(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(broker, pool="prefork", concurrency=2)
    client = broker.app()
    result = client.send_task("appmod.sleeper", (30, str(ledger)))
    [(child, _)] = ledger.wait_started(result.id)
    assert child != w.pid and psutil.Process(child).ppid() == w.pid
    os.kill(child, signal.SIGKILL)
    try:
        result.get(timeout=10)
    except WorkerLostError as exc:
        assert "SIGKILL" in str(exc)
    else:
        raise AssertionError("a killed task must fail with WorkerLostError")
    wait_until(lambda: len(_pool_processes(client, w.hostname)) == 2
               and child not in _pool_processes(client, w.hostname),
               timeout=10, what="pool back to two children")
    assert client.send_task("appmod.add", (2, 2)).get(timeout=10) == 4


def test_acks_late_reject_on_worker_lost_reruns_the_task(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    worker(broker, pool="prefork", concurrency=2)
    client = broker.app()
    result = client.send_task("appmod.lossy_sleeper", (1.0, str(ledger)))
    [(first, _)] = ledger.wait_started(result.id)
    os.kill(first, signal.SIGKILL)
    runs = ledger.wait_started(result.id, times=2, timeout=15)
    assert runs[0][0] == first and runs[1][0] != first
    assert result.get(timeout=15) == "survived"


def test_a_poison_message_stops_after_max_redeliveries(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    worker(broker, pool="prefork", concurrency=1, env={"TASKQ_TASK_MAX_REDELIVERIES": "2"})
    client = broker.app()
    result = client.send_task("appmod.poison", (str(ledger),))
    try:
        result.get(timeout=20)
    except WorkerLostError as exc:
        assert "given up after 2 redeliveries" in str(exc)
    else:
        raise AssertionError("a poison message must end as FAILURE")
    assert len(ledger.starts(result.id)) == 3  # the first run and two redeliveries


def test_inspect_active_names_the_child_and_pool_grow_shrink_work(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(redis_broker, pool="prefork", concurrency=1)
    client = redis_broker.app()
    result = client.send_task("appmod.sleeper", (3, str(ledger)))
    [(child, _)] = ledger.wait_started(result.id)
    active = client.control.broadcast("active", destination=[w.hostname], reply=True,
                                      timeout=2.0) or []
    assert [t["worker_pid"] for r in active for t in r[w.hostname]] == [child]
    client.control.broadcast("pool_grow", {"n": 1}, destination=[w.hostname], reply=True)
    wait_until(lambda: len(_pool_processes(client, w.hostname)) == 2, timeout=10,
               what="pool grown to 2")
    client.control.broadcast("pool_shrink", {"n": 1}, destination=[w.hostname], reply=True)
    wait_until(lambda: len(_pool_processes(client, w.hostname)) == 1, timeout=10,
               what="pool shrunk to 1")
    assert result.get(timeout=10) == "slept"


def test_pool_restart_replaces_every_child_and_autoscale_grows_under_load(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(redis_broker, pool="prefork", concurrency=2, args=["--autoscale", "4,1"],
               env={"TASKQ_WORKER_POOL_RESTARTS": "1"})
    client = redis_broker.app()
    before = set(_pool_processes(client, w.hostname))
    client.control.broadcast("pool_restart", {"modules": ["appmod"], "reload": True},
                             destination=[w.hostname], reply=True)
    wait_until(lambda: (lambda now: len(now) == 2 and not now & before)(
        set(_pool_processes(client, w.hostname))), timeout=15, what="all children replaced")
    # Under load (more jobs waiting than children) autoscale grows to its maximum.
    ids = [client.send_task("appmod.sleeper", (2, str(ledger))).id for _ in range(12)]
    wait_until(lambda: len(_pool_processes(client, w.hostname)) == 4, timeout=15,
               what="autoscale grew the pool to 4")
    wait_until(lambda: all(ledger.ended(i) for i in ids), timeout=30, what="tasks done")
