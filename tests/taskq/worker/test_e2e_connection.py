"""Losing the broker connection: the worker reconnects within 5 s and every task ends as
DESIGN.md's delivery table says (SCENARIOS #7, #8).

Redis: the worker's client connections are killed with ``CLIENT KILL``; RabbitMQ: closed from
the server with ``rabbitmqctl close_connection``. Both find the worker's connections by the
local ports of its sockets (psutil). The black-hole test puts chaos' TCP fault proxy between
the worker and Redis.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

import pytest
from e2e_support import REDIS_URL, Broker, Ledger, StartWorker, WorkerProcess, wait_until

from taskq import states

RECONNECT_WITHIN = 5.0


def _rabbitmqctl(*args: str) -> str:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        pytest.skip("rabbitmqctl is not installed")
    out = subprocess.run([exe, "-q", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _close_amqp_connections(w: WorkerProcess) -> int:
    ports = w.local_ports(5672)
    assert ports, "the worker has no connection to RabbitMQ"
    closed = 0
    for line in _rabbitmqctl("list_connections", "pid", "peer_port").splitlines():
        match = re.match(r"^(.*\S)\s+(\d+)$", line.strip())
        if match and int(match.group(2)) in ports:
            _rabbitmqctl("close_connection", match.group(1), "taskq test: connection loss")
            closed += 1
    return closed


def _cut(broker: Broker, w: WorkerProcess) -> int:
    return w.kill_redis_clients() if broker.kind == "redis" else _close_amqp_connections(w)


def _cut_and_see(broker: Broker, w: WorkerProcess, pattern: str) -> None:
    """Cut the worker's broker connections; wait for ``pattern`` in its log after that."""
    offset = len(w.log())
    assert _cut(broker, w) >= 1
    w.wait_log(pattern, 10, after=offset)


def _three_behind_a_sleeper(w: WorkerProcess, client: Any, ledger: Ledger, seconds: float,
                            *, late: bool = False) -> tuple[Any, list[Any]]:
    """A running sleeper, and three stamp tasks (``late``: acks_late sleepers of 0 s) the
    worker has received behind it."""
    running = client.send_task("appmod.sleeper", (seconds, str(ledger)))
    ledger.wait_started(running.id)
    if late:
        waiting = [client.send_task("appmod.late_sleeper", (0.0, str(ledger)))
                   for _ in range(3)]
    else:
        waiting = [client.send_task("appmod.stamp", (str(ledger),)) for _ in range(3)]
    for r in waiting:
        w.wait_log(rf"received appmod\.\w+\[{r.id}\]")
    return running, waiting


def test_worker_reconnects_within_5s_and_running_tasks_finish(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Given a running early-ack task and a running acks_late task, when the broker drops the
    worker's connections, then the worker consumes again within 5 s and both tasks finish
    with SUCCESS stored; the early-ack one ran once, the acks_late one at most twice (its ack
    fails with the connection, so the broker may redeliver it)."""
    w = worker(broker, pool="threads", concurrency=2)
    client = broker.app()
    early = client.send_task("appmod.sleeper", (2.0, str(ledger)))
    late = client.send_task("appmod.late_sleeper", (2.0, str(ledger)))
    ledger.wait_started(early.id)
    ledger.wait_started(late.id)

    offset = len(w.log())
    cut_at = time.monotonic()
    assert _cut(broker, w) >= 1
    w.wait_log(r"lost the broker connection", 10, after=offset)
    w.wait_log(r"connected to \S+ again", RECONNECT_WITHIN, after=offset)
    reconnected = time.monotonic() - cut_at
    # The pool is busy for up to 2 s more; then the probe must run.
    probe = client.send_task("appmod.add", (1, 1))
    assert probe.get(timeout=RECONNECT_WITHIN + 2.0) == 2
    resumed = time.monotonic() - cut_at
    print(f"{broker.kind}: reconnected {reconnected:.2f} s and a new task done {resumed:.2f} s "
          "after the cut")
    assert resumed < RECONNECT_WITHIN + 2.0

    assert early.get(timeout=10) == "slept"
    assert late.get(timeout=15) == "slept-late"
    assert len(ledger.starts(early.id)) == 1
    assert 1 <= len(ledger.starts(late.id)) <= 2
    assert early.state == late.state == states.SUCCESS
    w.ping(client)  # remote control came back with the connection too
    assert w.alive()




@pytest.mark.parametrize("broker", [
    "amqp",
    "redis",
], indirect=True)
def test_reserved_tasks_of_a_lost_connection_are_redelivered_and_run_once(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Given tasks reserved behind a running one, when the connection is lost, then each of
    them comes back from the broker and runs exactly once."""
    w = worker(broker, pool="threads", concurrency=1)
    running, reserved = _three_behind_a_sleeper(w, broker.app(), ledger, 1.0)
    _cut_and_see(broker, w, r"lost the broker connection")
    for r in reserved:
        r.get(timeout=10)
    assert [len(ledger.starts(r.id)) for r in reserved] == [1, 1, 1]
    assert running.get(timeout=10) == "slept"
    assert len(ledger.starts(running.id)) == 1


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_jobs_queued_in_a_fast_child_are_taken_back_when_the_connection_is_lost(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """-O fast: acks_late jobs already written to a busy child's pipe are reserved messages of
    the lost connection like any other; the broker redelivers them, so the child must skip its
    copies (found by kill-connections: they ran twice). (Early-ack jobs were acked before they
    reached the child: they stay and run there.)"""
    w = worker(broker, pool="prefork", concurrency=1, args=["-O", "fast"],
               env={"TASKQ_WORKER_FAST_QUEUE_DEPTH": "3"})
    # Long enough for rabbitmqctl to close the connection on a loaded machine.
    running, queued = _three_behind_a_sleeper(w, broker.app(), ledger, 6.0, late=True)
    _cut_and_see(broker, w, r"took 3 back from the pool")
    for r in queued:
        r.get(timeout=20)
    if broker.kind == "redis":
        # A copy run here would have left its lease unacked (its connection was gone); the
        # message comes back when the lease ends (4 s in these tests) and runs again.
        import redis

        leases = redis.Redis.from_url(REDIS_URL)
        try:
            wait_until(lambda: leases.zcard(f"{broker.name}:taskq:leases") == 0, 15,
                       "no lease left")
        finally:
            leases.close()
    assert [len(ledger.starts(r.id)) for r in queued] == [1, 1, 1]
    assert running.get(timeout=15) == "slept"


@pytest.mark.parametrize("broker", ["amqp"], indirect=True)
def test_a_child_lost_after_the_connection_was_cut_is_not_requeued_twice(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Given an acks_late + reject_on_worker_lost task running when RabbitMQ closes the
    worker's connection (RabbitMQ puts the unacked delivery back at once, and the worker runs
    it again on its other child), when the first run's child is then killed, then the task
    is not published again: it ran twice, not three times (found by the mixed suite, seed 2:
    a counted copy made a second lineage of the task)."""
    w = worker(broker, pool="prefork", concurrency=2, args=["-O", "fair"])
    client = broker.app()
    result = client.send_task("appmod.lossy_sleeper", (12.0, str(ledger)))
    (first, _), = ledger.wait_started(result.id, timeout=20)
    _cut_and_see(broker, w, r"connected to \S+ again")
    # The broker's redelivery of the original, on the other child.
    (_, _), (second, _) = ledger.wait_started(result.id, timeout=30, times=2)
    assert second != first
    offset = len(w.log())
    os.kill(first, signal.SIGKILL)
    w.wait_log(rf"lossy_sleeper\[{result.id}\] lost", 15, after=offset)
    assert result.get(timeout=40) == "survived"

    def idle() -> bool:
        replies = [client.control.broadcast(what, destination=[w.hostname], reply=True,
                                            timeout=2.0) for what in ("active", "reserved")]
        return all(len(r) == 1 and not r[0][w.hostname] for r in replies)

    wait_until(idle, 40, "the worker to be idle")
    assert len(ledger.starts(result.id)) == 2, ledger.lines()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_worker_resumes_after_three_drops_in_three_seconds(
        broker: Broker, worker: StartWorker) -> None:
    """SCENARIOS #7: drop the connection three times within 3 s; consumption resumes within
    5 s of the last drop."""
    w = worker(broker, pool="threads", concurrency=2)
    client = broker.app()
    for n in range(3):
        offset = len(w.log())
        _cut(broker, w)
        w.wait_log(r"lost the broker connection", 10, after=offset)
        if n < 2:  # hit it again as soon as it is back
            w.wait_log(r"connected to \S+ again", RECONNECT_WITHIN, after=offset)
    last = time.monotonic()
    result = client.send_task("appmod.add", (2, 2))
    assert result.get(timeout=RECONNECT_WITHIN + 5) == 4
    assert time.monotonic() - last < RECONNECT_WITHIN
    assert w.alive()


def _proxy() -> Any:
    try:
        from chaos.proxy import FaultProxy
    except ImportError as exc:  # pragma: no cover - chaos is part of this repository
        pytest.skip(f"chaos.proxy is not importable: {exc}")
    return FaultProxy("127.0.0.1:6379")


HEALTH_CHECK = 2.0  # health_check_interval for the black-hole test: the detection period


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_black_holed_broker_is_noticed_and_the_worker_reconnects(
        broker: Broker, worker: StartWorker) -> None:
    """SCENARIOS #8: the proxy accepts and never forwards. The worker notices within two
    health-check periods (plus the 1 s BRPOP timeout it waits for) and consumes again within
    5 s of the broker coming back."""
    options = json.loads(broker.env["TASKQ_BROKER_TRANSPORT_OPTIONS"])
    options["health_check_interval"] = HEALTH_CHECK
    with _proxy() as proxy:
        w = worker(broker, pool="threads", concurrency=2, env={
            "TASKQ_BROKER_URL": proxy.url("redis", "/0"),
            "TASKQ_BROKER_TRANSPORT_OPTIONS": json.dumps(options)})
        client = broker.app()  # publishes straight to Redis, not through the proxy
        assert client.send_task("appmod.add", (1, 2)).get(timeout=10) == 3
        offset = len(w.log())
        hole = proxy.blackhole()
        holed_at = time.monotonic()
        w.wait_log(r"lost the broker connection", 4 * HEALTH_CHECK + 5, after=offset)
        noticed = time.monotonic() - holed_at
        proxy.remove(hole)
        proxy.cut()  # connections opened during the hole never got an answer; drop them
        back_at = time.monotonic()
        result = client.send_task("appmod.add", (2, 3))
        assert result.get(timeout=RECONNECT_WITHIN + 5) == 5
        resumed = time.monotonic() - back_at
        print(f"black hole noticed after {noticed:.2f} s; consuming {resumed:.2f} s after "
              "the broker came back")
        assert noticed < 2 * HEALTH_CHECK + 1.0 + 3.0  # + BRPOP timeout + one 2 s socket read
        assert resumed < RECONNECT_WITHIN
        assert w.alive()
        w.stop()  # while the proxy still forwards: its shutdown talks to the broker
