"""Cluster operations against live workers: the real Celery tools, mingle, gossip, the
logical clock, and --statedb across a restart."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from e2e_support import Broker, Ledger, StartWorker, wait_until
from kombu.pidbox import Mailbox

from taskq.events import EventReceiver
from taskq.worker.cluster import pidbox_listeners
from taskq.worker.control import ControlNode

HERE = Path(__file__).parent


def celery(broker: Broker, *args: str, timeout: float = 60) -> str:
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CELERY_EQUIV_BROKER": broker.url,
           "CELERY_EQUIV_OPTIONS": broker.env.get("TASKQ_BROKER_TRANSPORT_OPTIONS", "{}")}
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "celery_equiv", *args],
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)
    return proc.stdout + proc.stderr


def test_celery_inspect_and_control_work_against_a_taskq_worker(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(broker, pool="prefork", concurrency=1)
    client = broker.app()
    running = client.send_task("appmod.sleeper", (20, str(ledger)))
    [(child, _)] = ledger.wait_started(running.id)
    dest = ["-d", w.hostname, "--timeout", "3"]
    assert "pong" in celery(broker, "inspect", "ping", *dest)
    active = celery(broker, "inspect", "active", *dest)
    assert running.id in active and str(child) in active
    stats = celery(broker, "inspect", "stats", "--json", *dest)
    assert json.loads(stats.strip().splitlines()[-1])[w.hostname]["pool"]["processes"] == [child]
    assert "clock" in celery(broker, "inspect", "clock", *dest)
    out = celery(broker, "control", "terminate", "KILL", running.id, *dest)
    assert "terminated and revoked" in out, out
    wait_until(lambda: running.state == "REVOKED", timeout=10, what="terminated task revoked")


def test_celery_events_dump_shows_taskq_events(amqp_broker: Broker, worker: StartWorker
                                               ) -> None:
    w = worker(amqp_broker, pool="threads", args=["-E"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "celery_equiv", "events", "--dump"],
        env={**os.environ, "PYTHONPATH": str(HERE), "CELERY_EQUIV_BROKER": amqp_broker.url},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = amqp_broker.app()
        seen: list[str] = []
        assert proc.stdout is not None

        def saw_task() -> bool:
            client.send_task("appmod.add", (1, 2)).get(timeout=10)
            line = proc.stdout.readline()
            seen.append(line)
            return any(w.hostname in s and "task succeeded" in s for s in seen)

        wait_until(saw_task, timeout=30, what="celery events --dump showing a taskq task")
    finally:
        proc.kill()
        proc.wait(5)


def test_mingle_hands_revoked_ids_and_clock_to_a_new_worker(
        redis_broker: Broker, worker: StartWorker) -> None:
    a = worker(redis_broker, pool="threads", mingle=True)
    client = redis_broker.app()
    client.control.revoke("revoked-before-b", destination=[a.hostname], reply=True)
    clock_a = client.control.broadcast("clock", destination=[a.hostname], reply=True)
    b = worker(redis_broker, pool="threads", mingle=True)
    b.wait_log(rf"mingle: synced with .*{a.hostname}")
    revoked = client.control.broadcast("revoked", destination=[b.hostname], reply=True)
    assert "revoked-before-b" in revoked[0][b.hostname]
    clock_b = client.control.broadcast("clock", destination=[b.hostname], reply=True)
    assert clock_b[0][b.hostname]["clock"] > clock_a[0][a.hostname]["clock"]


def test_a_worker_listens_for_control_commands_before_it_says_ready(
        redis_broker: Broker) -> None:
    """On Redis a broadcast reaches only the connections subscribed when it is published:
    the control node subscribes as it attaches, not when the loop next turns (after the
    worker has logged "ready"), so a command sent right after "ready" is not lost."""
    app = redis_broker.app()
    worker = SimpleNamespace(hostname=f"listens@{redis_broker.name}", app=app)
    with app.connection() as conn, app.connection() as other:
        assert pidbox_listeners(other, "celery.pidbox") == 0
        ControlNode(cast(Any, worker)).attach(conn)  # and no loop turns after it
        assert pidbox_listeners(other, "celery.pidbox") == 1


@contextlib.contextmanager
def _slow_neighbour(broker: Broker, revoked: list[str], delay: float) -> Iterator[str]:
    """A neighbour that answers mingle's hello ``delay`` seconds late, with ``revoked``: a
    kombu pidbox node (as a Celery worker has) served from a thread of the test."""
    hostname = f"slow-{broker.name}@test"
    conn = broker.raw_connection()

    def hello(state: Any, from_node: str | None = None, **_: Any) -> dict[str, Any]:
        time.sleep(delay)
        return {"revoked": revoked, "clock": 1}

    node = Mailbox("celery", type="fanout", accept=["json"])(conn).Node(
        hostname, handlers={"hello": hello}, channel=conn.channel())
    node.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield hostname
    finally:
        stop.set()
        thread.join(5)
        conn.release()


def test_a_task_revoked_on_a_neighbour_never_runs_though_queued_before_this_worker_starts(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Mingle holds back task starts, not consuming: the new worker takes the queued task at
    once, but starts it only after its neighbours answered, and then it is revoked. The
    neighbour answers 0.5 s late, so a worker that started tasks before the answer ran it."""
    client = redis_broker.app()
    with _slow_neighbour(redis_broker, ["revoked-elsewhere"], delay=0.5) as neighbour:
        doomed = client.send_task("appmod.stamp", (str(ledger),), task_id="revoked-elsewhere")
        fine = client.send_task("appmod.stamp", (str(ledger),))
        w = worker(redis_broker, pool="prefork", concurrency=1, mingle=True)
        w.wait_log(rf"mingle: synced with .*{neighbour}", timeout=30)
        ledger.wait_started(fine.id, timeout=30)  # the hold ends with the answer
        wait_until(lambda: doomed.state in {"REVOKED", "SUCCESS", "FAILURE"}, timeout=30,
                   what="the task revoked on the neighbour to end")
    assert doomed.state == "REVOKED"
    assert ledger.starts("revoked-elsewhere") == []


def test_gossip_notices_a_killed_neighbour_within_three_heartbeats(
        redis_broker: Broker, worker: StartWorker) -> None:
    a = worker(redis_broker, pool="threads", mingle=True)
    b = worker(redis_broker, pool="threads", mingle=True)
    a.wait_log(r"ready", timeout=10)
    wait_until(lambda: b.hostname in _neighbours(redis_broker, a.hostname), timeout=10,
               what="a follows b's heartbeats")
    b.kill()
    a.wait_log(rf"neighbour {b.hostname} missed its heartbeats", timeout=6.5)


def _neighbours(broker: Broker, hostname: str) -> str:
    # Gossip logs each neighbour once it is gone; before that, a worker's stats name none.
    # A heartbeat seen is enough here: ask the events stream directly.
    client = broker.app()
    seen: list[str] = []
    with client.connection() as conn, EventReceiver(
            conn, handlers={"worker-heartbeat": lambda e: seen.append(e["hostname"])}) as r:
        r.capture(limit=2, timeout=5)
    return " ".join(seen)


def test_logical_clock_orders_events_from_two_workers(
        redis_broker: Broker, worker: StartWorker) -> None:
    worker(redis_broker, pool="threads", args=["-E"], mingle=True)
    worker(redis_broker, pool="threads", args=["-E"], mingle=True)
    client = redis_broker.app()
    events: list[dict] = []
    with client.connection() as conn, EventReceiver(
            conn, handlers={"*": events.append}) as receiver:
        ids = [client.send_task("appmod.add", (i, i)).id for i in range(6)]
        receiver.capture(timeout=8, stop=lambda: sum(
            e["type"] == "task-succeeded" for e in events) >= 6)
    hosts = {e["hostname"] for e in events if e.get("uuid") in ids}
    assert len(hosts) >= 1
    for task_id in ids:
        mine = [e for e in events if e.get("uuid") == task_id]
        order = [e["type"] for e in sorted(mine, key=lambda e: e["clock"])]
        assert order.index("task-received") < order.index("task-started") < order.index(
            "task-succeeded")


def test_statedb_keeps_revoked_ids_across_a_restart(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger, tmp_path: Path) -> None:
    statedb = str(tmp_path / "worker.state")
    a = worker(redis_broker, pool="threads", args=["--statedb", statedb], node="sdb@%h")
    client = redis_broker.app()
    client.control.revoke("doomed-id", destination=[a.hostname], reply=True)
    assert a.stop() == 0
    b = worker(redis_broker, pool="threads", args=["--statedb", statedb], node="sdb@%h")
    client.send_task("appmod.stamp", (str(ledger),), task_id="doomed-id")
    b.wait_log(r"discarded revoked task appmod\.stamp\[doomed-id\]|rejected message doomed-id")
    assert ledger.starts("doomed-id") == []
    assert client.AsyncResult("doomed-id").state == "REVOKED"


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_taskq_control_and_inspect_cli(broker: Broker, worker: StartWorker) -> None:
    w = worker(broker, pool="prefork", concurrency=1)
    env = {**os.environ, **broker.env, "PYTHONPATH": str(HERE)}
    base = [sys.executable, "-m", "taskq.cli"]

    def run(*args: str) -> str:
        proc = subprocess.run([*base, *args, "-A", "appmod"], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        return proc.stdout + proc.stderr

    assert "pong" in run("inspect", "ping", "-d", w.hostname)
    assert "appmod.add" in run("inspect", "registered", "-d", w.hostname)
    run("control", "pool_grow", "1", "-d", w.hostname)
    wait_until(lambda: '"max-concurrency": 2' in run("inspect", "stats", "-j", "-d",
                                                      w.hostname),
               timeout=10, what="pool grown")
    assert w.hostname in run("status")


def test_a_taskq_worker_starts_beside_a_celery_worker_that_has_revoked_ids(
        redis_broker: Broker, worker: StartWorker, tmp_path: Path) -> None:
    """A rolling migration: Celery 5.7 answers mingle with ``"revoked": [ids]`` (a list); the
    taskq worker starts, takes the ids, and never runs a task revoked on the Celery worker."""
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CELERY_EQUIV_BROKER": redis_broker.url,
           "CELERY_EQUIV_OPTIONS": redis_broker.env.get("TASKQ_BROKER_TRANSPORT_OPTIONS", "{}")}
    node = f"celery-{redis_broker.name}@localhost"
    log = tmp_path / "celery.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celery_equiv", "worker", "-P", "solo",
             "-n", node, "-Q", f"{redis_broker.name}-celery-only", "--without-gossip",
             "--without-mingle", "-l", "info"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        client = redis_broker.app()
        wait_until(lambda: client.control.ping(destination=[node], timeout=1.0), timeout=60,
                   what="the Celery worker answers a ping")
        client.control.revoke("revoked-on-celery", destination=[node], reply=True, timeout=5)
        taskq_worker = worker(redis_broker, pool="threads", mingle=True)
        taskq_worker.wait_log(rf"mingle: synced with .*{node}", timeout=30)
        taskq_worker.wait_log(r"ready", timeout=30)
        revoked = client.control.broadcast("revoked", destination=[taskq_worker.hostname],
                                           reply=True, timeout=5)
        assert "revoked-on-celery" in revoked[0][taskq_worker.hostname]
        result = client.send_task("appmod.add", (1, 2), task_id="revoked-on-celery")
        wait_until(lambda: result.state == "REVOKED", timeout=30,
                   what="the task revoked on the Celery worker is discarded by taskq")
    finally:
        proc.kill()
        proc.wait(10)


def test_active_queues_has_celerys_shape_for_flower(broker: Broker, worker: StartWorker
                                                    ) -> None:
    """Flower's worker page reads every key of kombu's Queue.as_dict (``exclusive``,
    ``alias``, ``no_ack``, ...): a missing one was an HTTP 500."""
    w = worker(broker, pool="threads")
    client = broker.app()
    [reply] = client.control.broadcast("active_queues", destination=[w.hostname], reply=True,
                                       timeout=5)
    [queue] = reply[w.hostname]
    for key in ("name", "exchange", "routing_key", "durable", "exclusive", "auto_delete",
                "no_ack", "alias", "bindings", "binding_arguments", "queue_arguments",
                "consumer_arguments", "expires", "message_ttl", "max_length",
                "max_priority"):
        assert key in queue, key
    assert queue["name"] == broker.queue and queue["exchange"]["name"]


def test_inspect_answers_in_celerys_shapes(amqp_broker: Broker, worker: StartWorker,
                                           ledger: Ledger) -> None:
    """What Flower and ``celery inspect`` read: the worker's node name as a request's
    ``hostname`` (not the sender's), the message priority, Celery's broker and pool fields."""
    w = worker(amqp_broker, pool="prefork", concurrency=1, args=["--max-tasks-per-child", "5"])
    client = amqp_broker.app()
    running = client.send_task("appmod.sleeper", (20, str(ledger)), priority=3)
    ledger.wait_started(running.id)
    [active] = client.control.broadcast("active", destination=[w.hostname], reply=True,
                                        timeout=5)
    [request] = active[w.hostname]
    assert request["hostname"] == w.hostname
    assert request["delivery_info"]["priority"] == 3
    [stats] = client.control.broadcast("stats", destination=[w.hostname], reply=True,
                                       timeout=5)
    mine = stats[w.hostname]
    for key in ("hostname", "port", "userid", "virtual_host", "transport"):
        assert key in mine["broker"], key
    assert "password" not in mine["broker"]
    assert mine["broker"]["port"] == 5672
    pool = mine["pool"]
    assert pool["max-tasks-per-child"] == 5 and pool["max-concurrency"] == 1
    for key in ("processes", "timeouts", "writes", "put-guarded-by-semaphore"):
        assert key in pool, key
    client.control.revoke(running.id, terminate=True, signal="SIGKILL")
