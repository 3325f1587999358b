"""The embedded SQLite broker end to end: real ``taskq worker`` processes, real signals.

Each test's databases live under its own ``tmp_path``; nothing here touches the per-user
default directory.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import HERE, HOST, Broker, Ledger, WorkerProcess

from taskq import TaskQ

ROOT = HERE.parents[2]


def _clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any TASKQ_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKQ_")}
    pythonpath = os.pathsep.join(p for p in (str(HERE), str(ROOT), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", **extra}


def sqlite_broker(tmp_path: Path, **transport_options: float) -> Broker:
    name = f"tqs{uuid.uuid4().hex[:10]}"
    env = {
        "TASKQ_BROKER_URL": f"sqlite:///{tmp_path}/broker.db",
        "TASKQ_RESULT_BACKEND": f"db+sqlite:///{tmp_path}/results.db",
        "TASKQ_TASK_DEFAULT_QUEUE": name,
        "TASKQ_BROKER_TRANSPORT_OPTIONS": json.dumps(transport_options),
    }
    return Broker(kind="sqlite", url=env["TASKQ_BROKER_URL"], name=name, env=env)


class Workers:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[WorkerProcess] = []

    def start(self, broker: Broker, *, env: dict[str, str] | None = None,
              args: tuple[str, ...] = (), cwd: Path | None = None, ready: bool = True,
              concurrency: int = 2, pool: str = "prefork") -> WorkerProcess:
        n = len(self.started) + 1
        hostname = f"s{n}-{broker.name}@{HOST}"
        w = WorkerProcess(broker, pool=pool, concurrency=concurrency, hostname=hostname,
                          log_path=self.tmp_path / f"worker{n}.log",
                          args=("--without-mingle", "--without-gossip", *args))
        w.env = _clean_env(**broker.env, **(env or {}))
        self.started.append(w)
        with open(w.log_path, "ab") as log:
            w.proc = subprocess.Popen(w.cmd, env=w.env, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True,
                                      cwd=cwd or self.tmp_path)
        if ready:
            w.wait_ready()
        return w

    def stop(self, failed: bool) -> None:
        for w in self.started:
            w.stop()
            if failed:
                print(f"===== {w.hostname} =====\n{w.log()}")


@pytest.fixture
def workers(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Workers]:
    ws = Workers(tmp_path)
    yield ws
    ws.stop(failed=any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
                       for when in ("setup", "call")))


def client(broker: Broker) -> TaskQ:
    return TaskQ("appmod", environ=broker.env)


# -- the embedded default ---------------------------------------------------------------------
CLIENT = textwrap.dedent("""
    import appmod
    result = appmod.add.delay(2, 3)
    print("result", result.get(timeout=30), flush=True)
""")


def test_with_nothing_configured_a_worker_and_a_client_meet_in_the_embedded_dir(
        tmp_path: Path, workers: Workers) -> None:
    embedded, home = tmp_path / "embedded", tmp_path / "home"
    worker_dir, client_dir = tmp_path / "worker-cwd", tmp_path / "client-cwd"
    for d in (home, worker_dir, client_dir):
        d.mkdir()
    env = {"TASKQ_EMBEDDED_DIR": str(embedded), "HOME": str(home)}
    nothing = Broker(kind="sqlite", url="", name="celery", env=env)
    w = workers.start(nothing, cwd=worker_dir, args=("-Q", "celery"))

    log = w.log()
    assert f"sqlite:///{embedded}/broker.db" in log  # the banner names both files
    assert f"db+sqlite:///{embedded}/results.db" in log
    assert stat.S_IMODE(embedded.stat().st_mode) == 0o700
    done = subprocess.run([sys.executable, "-c", CLIENT], env=_clean_env(**env),
                          cwd=client_dir, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["result", "5"]
    assert not list(worker_dir.iterdir()) and not list(client_dir.iterdir())
    assert not (home / ".local").exists()  # TASKQ_EMBEDDED_DIR beat the per-user default


def test_remote_control_reaches_a_worker_over_sqlite(
        tmp_path: Path, workers: Workers) -> None:
    broker = sqlite_broker(tmp_path)
    w = workers.start(broker)
    app = client(broker)
    try:
        w.ping(app)  # a fanout broadcast to celery.pidbox and a direct reply
        replies = app.control.broadcast("stats", destination=[w.hostname], reply=True,
                                        timeout=2) or []
        assert any(w.hostname in reply for reply in replies)
    finally:
        app.close()


# -- latency ----------------------------------------------------------------------------------
def test_a_task_sent_to_an_idle_worker_starts_well_within_half_a_second(
        tmp_path: Path, workers: Workers, ledger: Ledger) -> None:
    # The fallback poll is pushed out of the way: only a wake-up can meet the bound.
    broker = sqlite_broker(tmp_path, poll_interval=30)
    workers.start(broker)
    app = client(broker)
    try:
        # The client's first publish opens its connection and declares the queue: not
        # what is measured here.
        app.send_task("appmod.stamp", kwargs={"ledger": str(ledger)}).get(timeout=20)
        for _ in range(3):  # each time the worker is idle again, waiting on its socket
            sent = time.time()
            result = app.send_task("appmod.stamp", kwargs={"ledger": str(ledger)})
            started_at = result.get(timeout=20)
            assert started_at - sent < 0.5, f"started {started_at - sent:.3f} s after publish"
    finally:
        app.close()


# -- leases -----------------------------------------------------------------------------------
def test_a_sigkilled_workers_acks_late_task_runs_again_on_another_after_the_lease(
        tmp_path: Path, workers: Workers, ledger: Ledger) -> None:
    broker = sqlite_broker(tmp_path, lease_timeout=2, restore_interval=0.25)
    first = workers.start(broker)
    app = client(broker)
    try:
        result = app.send_task("appmod.late_sleeper", args=(0.5,),
                               kwargs={"ledger": str(ledger)})
        ledger.wait_started(result.id)
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, mid-task
        first.proc.wait(10)  # type: ignore[union-attr]
        workers.start(broker)
        assert result.get(timeout=2 + 0.25 + 20) == "slept-late"
        starts = ledger.starts(result.id)
        assert len(starts) == 2 and starts[0][0] != starts[1][0]
        assert starts[1][1] - starts[0][1] >= 1.5  # not before the lease ran out
    finally:
        app.close()


# -- bad files --------------------------------------------------------------------------------
def test_a_corrupted_broker_file_stops_the_worker_with_a_clear_error(
        tmp_path: Path, workers: Workers) -> None:
    broker = sqlite_broker(tmp_path)
    (tmp_path / "broker.db").write_bytes(b"this is not a database" * 200)
    w = workers.start(broker, ready=False)
    assert w.wait_exit(30) != 0
    log = w.log()
    assert str(tmp_path / "broker.db") in log
    assert "move the file aside" in log
