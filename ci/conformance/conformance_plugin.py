"""pytest plugin for ci/celery-conformance.sh: Celery's integration suite against a worker
*process* instead of the in-process ``celery_session_worker``.

Loaded with ``-p conformance_plugin`` before the suite's conftest imports
``celery.contrib.pytest.celery_session_worker``; the fixture is replaced there (a fixture in a
plain plugin would lose to the conftest's). CONFORMANCE_WORKER picks the worker: ``taskq``
(``taskq worker -A conformance_app``) or ``celery`` (``celery -A conformance_app worker``),
both with concurrency 1 on queue ``celery``, no heartbeat/mingle/gossip, named
``gen<pytest pid>@host`` as Celery's session worker is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import celery.contrib.pytest as celery_pytest
import pytest

WORKER = os.environ.get("CONFORMANCE_WORKER", "taskq")
HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


class WorkerProcess:
    def __init__(self, app, log_path: Path) -> None:
        self.app = app
        self.hostname = f"gen{os.getpid()}@{socket.gethostname()}"
        common = ["-c", "1", "-Q", "celery", "-n", self.hostname, "--without-mingle",
                  "--without-gossip", "-l", "info"]
        if WORKER == "taskq":
            cmd = [str(BIN / "taskq"), "worker", "-A", "conformance_app", "-P", "prefork",
                   *common]
        else:
            cmd = [str(BIN / "celery"), "-A", "conformance_app", "worker", "-P", "prefork",
                   "--without-heartbeat", *common]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(HERE), os.getcwd(), os.environ.get("PYTHONPATH", "")])}
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{WORKER} worker exited: see {self.log_path}")
            replies = self.app.control.ping(destination=[self.hostname], timeout=1.0)
            if replies:
                return
        raise RuntimeError(f"{WORKER} worker did not answer a ping: see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="session")
def celery_session_worker(request, celery_session_app, celery_includes, celery_class_tasks,
                          celery_worker_pool, celery_worker_parameters):
    for module in celery_includes:
        celery_session_app.loader.import_task_module(module)
    for class_task in celery_class_tasks:
        celery_session_app.register_task(class_task)
    log_dir = Path(os.environ.get("CONFORMANCE_LOG_DIR", "."))
    worker = WorkerProcess(celery_session_app, log_dir / f"{WORKER}-worker.log")
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()


celery_pytest.celery_session_worker = celery_session_worker
