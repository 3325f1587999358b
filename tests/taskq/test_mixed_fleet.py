"""A mixed fleet: a Celery worker and a taskq worker on the same queue, as in a rolling
migration in either direction, with revokes in flight (issue 16's acceptance).

The same Celery project (tests/taskq/mixedfleet) runs on ``celery -A mixedfleet worker`` and
on ``taskq worker -A mixedfleet``, both real processes with mingle and gossip on, early acks.
Ids revoked on one worker before another starts reach the newcomer through mingle, in both
directions; ids revoked while tasks stream reach both. Every run of a task is noted in a
ledger file the task writes itself (never the broker or backend under test): each task not
revoked runs exactly once, each task revoked before it was published never runs, and both
workers stay up and answer pings to the end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "worker"))
from e2e_support import (  # noqa: E402
    TASKQ,
    Broker,
    import_fresh,
    make_broker,
    wait_until,
    wait_while_progressing,
)

TASKS = 1000
HOST = socket.gethostname()
STALL = 120.0  # no task finishing for this long is a failure; a slow machine is only slow


class Node:
    """A worker process (``celery`` or ``taskq``) running tests/taskq/mixedfleet."""

    def __init__(self, kind: str, name: str, queue: str, env: dict[str, str],
                 log_path: Path) -> None:
        self.kind = kind
        self.hostname = f"{name}@{HOST}"
        self.log_path = log_path
        common = ["-P", "prefork", "-c", "2", "-Q", queue, "-n", self.hostname]
        if kind == "celery":
            cmd = [sys.executable, "-m", "celery", "-A", "mixedfleet", "worker", *common,
                   "-l", "info"]
        else:
            cmd = [*TASKQ, "worker", "-A", "mixedfleet", *common, "-l", "info"]
        # Nothing from TASKQ_*: both workers take everything from the Celery app.
        base = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env={**base, **env, "PYTHONPATH": str(HERE), "PYTHONUNBUFFERED": "1"},
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_up(self, app: Any) -> None:
        def answered() -> bool:
            assert self.alive(), f"{self.hostname} exited:\n{self.log()}"
            return bool(app.control.ping(destination=[self.hostname], timeout=1.0))

        wait_until(answered, 90, f"{self.hostname} to answer a ping")

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), SIGKILL after 30 s."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def _import_project(env: dict[str, str]) -> Any:
    """(Re-)import mixedfleet with this test's settings, as the workers import it."""
    return import_fresh("mixedfleet", env, HERE)


class Fleet:
    def __init__(self, broker: Broker, tmp: Path) -> None:
        self.broker = broker
        self.tmp = tmp
        self.ledger = tmp / "ledger.txt"
        self.env = {"MIXEDFLEET_NAME": broker.name, "MIXEDFLEET_BROKER": broker.url,
                    "MIXEDFLEET_LEDGER": str(self.ledger)}
        self.project = _import_project(self.env)
        self.app = self.project.app
        self.nodes: list[Node] = []

    def start(self, kind: str) -> Node:
        n = len(self.nodes) + 1
        node = Node(kind, f"{kind}{n}-{self.broker.name}", self.broker.name, self.env,
                    self.tmp / f"{kind}{n}.log")
        self.nodes.append(node)
        node.wait_up(self.app)
        return node

    def revoke(self, ids: list[str], *nodes: Node) -> None:
        """Revoke ``ids`` on ``nodes`` only, each answering that it did."""
        names = [n.hostname for n in nodes]
        replies = self.app.control.revoke(ids, destination=names, reply=True, timeout=10)
        answered = {name for reply in replies for name in reply}
        assert answered == set(names), replies

    def revoked_on(self, node: Node) -> set[str]:
        reply = self.app.control.inspect([node.hostname], timeout=10).revoked() or {}
        return set(reply.get(node.hostname) or ())

    def runs(self) -> list[list[str]]:
        try:
            text = self.ledger.read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines() if line.strip()]

    def idle(self, *nodes: Node) -> bool:
        """Nothing left in the queue, and nothing active or reserved on ``nodes``."""
        with self.app.connection_for_write() as conn:
            try:
                count = conn.default_channel.queue_declare(self.broker.name, passive=True)[1]
            except conn.channel_errors:
                count = 0  # Redis: an empty list is no key, "no queue"
        if count:
            return False
        inspect = self.app.control.inspect([n.hostname for n in nodes], timeout=5)
        for reply in (inspect.active(), inspect.reserved()):
            if reply is None or set(reply) != {n.hostname for n in nodes}:
                return False
            if any(reply.values()):
                return False
        return True

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self.app.close()
        for name in [m for m in sys.modules if m == "mixedfleet"]:
            del sys.modules[name]


@pytest.fixture(params=["redis", "amqp"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    broker = make_broker(request.param)
    fleet = Fleet(broker, tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()
        for node in fleet.nodes:  # pytest shows it only for a failed test
            print(f"===== {node.hostname} (exit {node.proc.returncode}) =====")
            print(node.log()[-30000:])
        broker.cleanup()


def test_celery_and_taskq_workers_share_a_queue_with_revokes_in_flight(fleet: Fleet) -> None:
    ids = [str(uuid.uuid4()) for _ in range(TASKS)]
    on_celery = ids[100:150]  # revoked on the first Celery worker before taskq starts
    on_taskq = ids[300:350]  # revoked on taskq alone before the second Celery worker starts
    ahead = ids[600:650]  # revoked on both while tasks stream, before they are published
    in_flight = ids[800:850]  # revoked on both just after they are published: 0 or 1 run

    # Celery -> taskq: the taskq worker joins a Celery worker that has revoked ids.
    celery1 = fleet.start("celery")
    fleet.revoke(on_celery, celery1)
    taskq = fleet.start("taskq")
    # Taken from Celery's mingle reply (no task starts on taskq before the replies are in).
    wait_until(lambda: set(on_celery) <= fleet.revoked_on(taskq), 60,
               "taskq to take the ids revoked on Celery through mingle")

    # taskq -> Celery: the first Celery worker leaves, a new one joins beside taskq.
    celery1.stop()
    fleet.revoke(on_taskq, taskq)
    celery2 = fleet.start("celery")
    wait_until(lambda: set(on_celery + on_taskq) <= fleet.revoked_on(celery2), 60,
               "the new Celery worker to take taskq's revoked ids through mingle")

    record = fleet.project.record
    for i, task_id in enumerate(ids):
        if i == 500:
            fleet.revoke(ahead, taskq, celery2)
        record.apply_async((i,), task_id=task_id)
        if i == 849:
            fleet.revoke(in_flight, taskq, celery2)

    revoked_before = set(on_celery + on_taskq + ahead)
    must_run = set(ids) - revoked_before - set(in_flight)

    def left() -> int:
        return len(must_run - {run[0] for run in fleet.runs()})

    wait_while_progressing(left, STALL, "every task not revoked to run")
    wait_until(lambda: fleet.idle(taskq, celery2), 120,
               "the queue drained and both workers idle")

    runs = fleet.runs()
    times = Counter(run[0] for run in runs)
    assert not {t for t in must_run if times[t] != 1}, "lost or run twice"
    assert not {t for t in in_flight if times[t] > 1}, "a revoked task ran twice"
    assert not (revoked_before & set(times)), "a task revoked before publishing ran"
    assert set(times) <= set(ids)
    by_node = Counter(run[1] for run in runs)
    assert by_node[taskq.hostname] and by_node[celery2.hostname], by_node
    assert set(by_node) <= {taskq.hostname, celery2.hostname}, by_node
    # Both kept running: alive and answering.
    for node in (taskq, celery2):
        assert node.alive(), node.log()
        node.wait_up(fleet.app)
