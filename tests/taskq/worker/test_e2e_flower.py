"""Flower 2.2 against a taskq worker (issue 16): every page and every API endpoint answers
200, on Redis and RabbitMQ. Flower runs as users run it (``celery -A flower_app flower``, a
real process, ``FLOWER_UNAUTHENTICATED_API`` on) beside a real ``taskq worker -E``; the pages
show the worker and its tasks, and the buttons (rate limit, time limits, pool, consumers,
revoke, shutdown) reach it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import HERE, Broker, Ledger, StartWorker, wait_until

pytest.importorskip("flower", reason="Flower is in the test extra: pip install -e '.[test]'")
# Celery 5.4 (ci/test-oldest-kombu.sh) reads results under other keys than taskq writes with
# the tests' result key prefix (see pyproject's celery extra): Flower's result pages need 5.5.
pytest.importorskip("celery", minversion="5.5")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Flower:
    def __init__(self, broker: Broker, log_path: Path) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, **broker.env, "FLOWER_UNAUTHENTICATED_API": "true",
               "PYTHONPATH": os.pathsep.join(p for p in (str(HERE),
                                                         os.environ.get("PYTHONPATH")) if p)}
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "flower_app", "flower",
                 "--address=127.0.0.1", f"--port={self.port}", "--inspect_timeout=5000"],
                env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, path: str, *, post: dict[str, Any] | None = None,
                body: dict[str, Any] | None = None) -> tuple[int, str]:
        """``(status, body)`` of a GET, or of a POST with query ``post`` and JSON ``body``."""
        url = self.base + path
        data = None
        if post is not None or body is not None:
            if post:
                url += "?" + urllib.parse.urlencode(post)
            data = json.dumps(body or {}).encode()
        req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            assert self.proc.poll() is None, f"Flower exited:\n{self.log()}"
            return 0, repr(exc)

    def ok(self, path: str, **kwargs: Any) -> str:
        status, text = self.request(path, **kwargs)
        assert status == 200, f"{path}: HTTP {status}: {text[:2000]}\n{self.log()[-5000:]}"
        return text

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def flower(broker: Broker, tmp_path: Path) -> Iterator[Flower]:
    f = Flower(broker, tmp_path / "flower.log")
    try:
        wait_until(lambda: f.request("/healthcheck")[0] == 200, 60, "Flower to answer")
        yield f
    finally:
        f.stop()
        print(f.log()[-20000:])  # shown for a failed test


def test_every_flower_page_and_api_endpoint_answers_200_for_a_taskq_worker(
        broker: Broker, worker: StartWorker, ledger: Ledger, flower: Flower) -> None:
    w = worker(broker, pool="prefork", concurrency=1, args=["-E"],
               env={"TASKQ_WORKER_POOL_RESTARTS": "1"})  # Flower's restart button
    name = urllib.parse.quote(w.hostname)
    client = broker.app()
    done = client.send_task("appmod.add", (2, 3))
    assert done.get(timeout=60) == 5

    def listed() -> bool:
        status, text = flower.request("/api/workers?refresh=1")
        return status == 200 and w.hostname in json.loads(text)

    wait_until(listed, 60, "Flower's /api/workers to list the taskq worker")
    wait_until(lambda: flower.request(f"/api/task/info/{done.id}")[0] == 200, 60,
               "Flower to know the finished task from the worker's events")

    # Pages
    assert w.hostname in flower.ok("/")
    assert w.hostname in flower.ok("/workers")
    worker_page = flower.ok(f"/worker/{name}")
    assert w.hostname in worker_page and broker.queue in worker_page
    assert done.id in flower.ok(f"/task/{done.id}")
    flower.ok("/tasks")
    table = json.loads(flower.ok(
        "/tasks/datatable?draw=1&start=0&length=10&search%5Bvalue%5D="
        "&order%5B0%5D%5Bcolumn%5D=0&order%5B0%5D%5Bdir%5D=asc&columns%5B0%5D%5Bdata%5D=name"))
    assert done.id in json.dumps(table)
    flower.ok("/broker")
    flower.ok("/metrics")
    flower.ok("/healthcheck")
    flower.ok("/workers?json=1")

    # Read API. Flower asks each inspect command with its own ~1 s timeout and leaves out
    # an answer that came later (a loaded machine): ask again until every one is there.
    keys = ("stats", "active_queues", "registered", "scheduled", "active", "reserved",
            "revoked", "conf")
    seen: dict[str, Any] = {}

    def answered() -> bool:
        seen.update(json.loads(flower.ok("/api/workers?refresh=1")).get(w.hostname, {}))
        return all(key in seen for key in keys)

    wait_until(answered, 60, f"Flower's /api/workers to hold every one of {keys}")
    assert json.loads(flower.ok(f"/api/workers?workername={name}&status=1"))[w.hostname]
    tasks = json.loads(flower.ok("/api/tasks"))
    assert tasks[done.id]["state"] == "SUCCESS"
    assert "appmod.add" in json.loads(flower.ok("/api/task/types"))["task-types"]
    flower.ok("/api/queues/length")
    info = json.loads(flower.ok(f"/api/task/info/{done.id}"))
    assert info["worker"] == w.hostname
    assert json.loads(flower.ok(f"/api/task/result/{done.id}"))["result"] == 5

    # Task API: apply (waits for the result), async-apply, send-task
    applied = json.loads(flower.ok("/api/task/apply/appmod.add", body={"args": [1, 2]}))
    assert applied["result"] == 3 and applied["state"] == "SUCCESS"
    sent = json.loads(flower.ok("/api/task/async-apply/appmod.add", body={"args": [4, 5]}))
    assert client.AsyncResult(sent["task-id"]).get(timeout=60) == 9
    sent = json.loads(flower.ok("/api/task/send-task/appmod.add", body={"args": [6, 7]}))
    assert client.AsyncResult(sent["task-id"]).get(timeout=60) == 13

    # Control API: the buttons of the worker and task pages
    worker_q = {"workername": w.hostname}
    assert "new rate limit set" in flower.ok("/api/task/rate-limit/appmod.add",
                                             post={**worker_q, "ratelimit": "100/s"})
    assert "time limits" in flower.ok("/api/task/timeout/appmod.add",
                                      post={**worker_q, "soft": 50, "hard": 60}).lower()
    flower.ok(f"/api/worker/pool/grow/{name}", post={"n": 1})
    flower.ok(f"/api/worker/pool/shrink/{name}", post={"n": 1})
    flower.ok(f"/api/worker/pool/autoscale/{name}", post={"min": 1, "max": 2})
    flower.ok(f"/api/worker/pool/restart/{name}", post={})
    extra = f"{broker.queue}-extra"
    flower.ok(f"/api/worker/queue/add-consumer/{name}", post={"queue": extra})
    flower.ok(f"/api/worker/queue/cancel-consumer/{name}", post={"queue": extra})
    running = client.send_task("appmod.sleeper", (60, str(ledger)))
    ledger.wait_started(running.id, timeout=60)
    flower.ok(f"/api/task/revoke/{running.id}", post={"terminate": "true",
                                                      "signal": "SIGKILL"})
    wait_until(lambda: running.state == "REVOKED", 60, "the revoked task's REVOKED state")
    flower.ok(f"/api/task/abort/{done.id}", post={})
    assert w.alive()
    flower.ok(f"/api/worker/shutdown/{name}", post={})
    assert w.wait_exit(60) == 0
