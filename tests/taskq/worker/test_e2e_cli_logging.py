"""What the worker's log tells an operator through the real ``taskq worker`` command (issue 13
#15): one error for a broker URL no transport takes, "waiting for the broker" until it is
connected and "ready" only once it consumes, and task failures at ERROR with their traceback,
which ``task-failed`` events carry too (Flower shows it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any

import pytest
from e2e_support import HERE, REDIS_PORT, TASKQ, Broker, StartWorker, wait_until

from taskq.events import EventReceiver


def _worker_cli(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    full_env = {**os.environ, "PYTHONPATH": path, **env}
    return subprocess.run([*TASKQ, "worker", "-A", "appmod", "-P", "threads", "-c", "1",
                           "--without-mingle", "--without-gossip"], env=full_env,
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_a_broker_url_no_transport_takes_is_one_error_and_never_ready(
        redis_broker: Broker) -> None:
    """Given ``broker_url`` with a scheme no transport takes, the worker exits non-zero with
    the error once, no traceback, and never says it is ready."""
    out = _worker_cli({**redis_broker.env, "TASKQ_BROKER_URL": "foo://localhost//"})
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert text.count("No such transport: foo") == 1, text
    assert "Traceback" not in text and "ready" not in text, text


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_worker_started_before_its_broker_waits_and_is_ready_once_it_consumes(
        broker: Broker, worker: StartWorker) -> None:
    """Given a broker that refuses connections at start, the worker logs "waiting for the
    broker at <url>" (and not "ready") until it connects; then "ready", once, after the
    connection."""
    from chaos.proxy import FaultProxy

    with FaultProxy(f"127.0.0.1:{REDIS_PORT}") as proxy:
        proxy.down()
        url = proxy.url("redis", "/0")
        w = worker(broker, pool="threads", ready=False, env={"TASKQ_BROKER_URL": url})
        w.wait_log(rf"waiting for the broker at {re.escape(url)}", 15)
        wait_until(lambda: w.log().count("waiting for the broker at") >= 2, 15,
                   "a second attempt")
        assert w.alive() and " ready: pool=" not in w.log()
        proxy.up()
        ready = w.wait_log(r" ready: pool=", 15)
        connected = w.wait_log(rf"connected to {re.escape(url)}", 5)
        assert connected.start() < ready.start()
        assert broker.app().send_task("appmod.add", (3, 4)).get(timeout=15) == 7
        w.stop()  # while the proxy still forwards
        assert w.log().count(" ready: pool=") == 1


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_failed_task_is_logged_at_error_with_its_traceback_and_sent_in_task_failed(
        broker: Broker, worker: StartWorker) -> None:
    """Given a task that raises, the worker logs the failure at ERROR with the traceback (as
    Celery does), and its ``task-failed`` event carries the same traceback."""
    w = worker(broker, pool="prefork", concurrency=1, args=["-E"])
    client = broker.app()
    events: list[dict[str, Any]] = []
    with client.connection() as conn, EventReceiver(
            conn, handlers={"task-failed": events.append}) as receiver:
        result = client.send_task("appmod.boom")
        receiver.capture(timeout=15, stop=lambda: any(
            e.get("uuid") == result.id for e in events))
    line = w.wait_log(rf"ERROR/MainProcess \d+\] taskq\.worker: task appmod\.boom\["
                      rf"{result.id}\] FAILURE[^\n]*\nTraceback \(most recent call last\):"
                      r"(\n .*)+\nValueError: boom", 15)
    assert 'raise ValueError("boom")' in line.group(0)
    failed = [e for e in events if e.get("uuid") == result.id]
    assert failed, json.dumps(events)
    traceback = failed[0].get("traceback") or ""
    assert traceback.startswith("Traceback (most recent call last):"), failed[0]
    assert "ValueError: boom" in traceback
