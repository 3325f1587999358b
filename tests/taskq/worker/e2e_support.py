"""The pieces the end-to-end worker tests are built from (the fixtures are in conftest.py).

- ``Broker``: one test's private corner of a real broker (Redis: its own ``global_keyprefix``;
  RabbitMQ: its own queue, exchange and routing key) and the TASKQ_* variables selecting it;
- ``WorkerProcess``: ``taskq worker -A appmod`` through the real CLI, in its own session,
  logging to a file;
- ``Ledger``: the lines the tasks of ``appmod`` append, independent of broker and backend;
- ``wait_until``: every wait is a condition with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from taskq import TaskQ

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
HERE = Path(__file__).resolve().parent
HOST = socket.gethostname()
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}//"
STOP_GRACE = 10.0  # SIGTERM, then SIGKILL after this many seconds

T = TypeVar("T")


def _taskq_command() -> list[str]:
    script = Path(sys.executable).parent / "taskq"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from taskq.cli import main; main()"]


TASKQ = _taskq_command()


def wait_until(predicate: Callable[[], T], timeout: float, what: str,
               interval: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} "
                                 f"(last: {value!r})")
        time.sleep(interval)


def wait_while_progressing(remaining: Callable[[], int], stall: float, what: str,
                           interval: float = 0.5) -> None:
    """Wait until ``remaining()`` is 0; fail only when it has not gone down for ``stall``
    seconds. For long runs whose speed depends on the machine: a busy machine is slow, a
    stuck worker makes no progress at all."""
    best = remaining()
    moved = time.monotonic()
    while best:
        time.sleep(interval)
        now_left = remaining()
        if now_left < best:
            best, moved = now_left, time.monotonic()
        elif time.monotonic() - moved >= stall:
            raise AssertionError(f"no progress for {stall:g} s waiting for {what} "
                                 f"({best} left)")


# -- brokers ----------------------------------------------------------------------------------

def import_fresh(module: str, env: dict[str, str], path: Path) -> Any:
    """(Re-)import ``module`` (a project under ``path``) with ``env`` set, as a worker started
    with that environment imports it; the environment is put back afterwards."""
    top = module.split(".")[0]
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
        del sys.modules[name]
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
        return importlib.import_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _need(host: str, port: int, what: str) -> None:
    """Skip when a broker is missing locally; fail under CI (as tests/conftest.py does)."""
    try:
        socket.create_connection((host, port), timeout=1.0).close()
        return
    except OSError:
        pass
    reason = f"{what} is not reachable on {host}:{port}; run `bash ci/start-brokers.sh`"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Broker:
    """One test's private corner of a real broker, and the TASKQ_* variables that select it."""

    kind: str  # "redis" or "amqp"
    url: str
    name: str  # queue, exchange and routing key; Redis key prefix
    env: dict[str, str]
    apps: list[TaskQ] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return self.name

    def app(self, **extra_env: str) -> TaskQ:
        """A client app for the test process with the worker's settings (closed at teardown)."""
        app = TaskQ("appmod", environ={**self.env, **extra_env})
        self.apps.append(app)
        return app

    def raw_connection(self) -> Any:
        """A plain kombu connection to this test's broker (for raw publishing)."""
        from kombu import Connection

        options: dict[str, Any] = {}
        if self.kind == "redis":
            options = {"global_keyprefix": f"{self.name}:"}
        return Connection(self.url, transport_options=options, connect_timeout=4)

    def cleanup(self) -> None:
        for app in self.apps:
            with contextlib.suppress(Exception):
                app.close()
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{self.name}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        if self.kind == "amqp":
            from kombu import Connection

            with Connection(self.url, connect_timeout=4) as conn:
                channel = conn.channel()
                for what in ("queue_delete", "exchange_delete"):
                    with contextlib.suppress(Exception):
                        getattr(channel, what)(self.name)
                    if not channel.is_open:  # a failed delete closes the channel
                        channel = conn.channel()


def make_broker(kind: str) -> Broker:
    _need(REDIS_HOST, REDIS_PORT, "Redis")  # results always go to Redis
    if kind == "amqp":
        _need(AMQP_HOST, AMQP_PORT, "RabbitMQ")
    name = f"tqw{uuid.uuid4().hex[:12]}"
    url = REDIS_URL if kind == "redis" else AMQP_URL
    env = {
        "TASKQ_BROKER_URL": url,
        "TASKQ_RESULT_BACKEND": REDIS_URL,
        "TASKQ_RESULT_BACKEND_TRANSPORT_OPTIONS": json.dumps(
            {"global_keyprefix": f"{name}:r:"}),
        "TASKQ_TASK_DEFAULT_QUEUE": name,
        "TASKQ_TASK_DEFAULT_EXCHANGE": name,
        "TASKQ_TASK_DEFAULT_ROUTING_KEY": name,
        "TASKQ_RESULT_EXPIRES": "600",
    }
    if kind == "redis":
        # A short lease, so a dead worker's messages come back within seconds here.
        env["TASKQ_BROKER_TRANSPORT_OPTIONS"] = json.dumps(
            {"global_keyprefix": f"{name}:", "lease_timeout": 4, "restore_interval": 0.5})
    return Broker(kind=kind, url=url, name=name, env=env)


# -- the ledger: what the tasks report, independent of broker and backend ----------------------

class Ledger:
    """Lines the test tasks append (see appmod): ``start <id> <pid> <time> ...``, ``end <id>``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def lines(self) -> list[list[str]]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        return [line.split() for line in text.splitlines() if line.strip()]

    def starts(self, task_id: str) -> list[tuple[int, float]]:
        """``(pid, wall time)`` of each time ``task_id`` started."""
        return [(int(p[2]), float(p[3])) for p in self.lines()
                if p[0] == "start" and p[1] == task_id]

    def ended(self, task_id: str) -> bool:
        return any(p[:2] == ["end", task_id] for p in self.lines())

    def wait_started(self, task_id: str, timeout: float = 10.0, times: int = 1
                     ) -> list[tuple[int, float]]:
        return wait_until(lambda: len(self.starts(task_id)) >= times and self.starts(task_id),
                          timeout, f"task {task_id} to start {times} time(s)")


# -- workers ----------------------------------------------------------------------------------

class WorkerProcess:
    """``taskq worker -A appmod`` as a subprocess in its own session, logging to a file."""

    def __init__(self, broker: Broker, *, pool: str, concurrency: int, hostname: str,
                 log_path: Path, node: str | None = None, args: Sequence[str] = (),
                 env: dict[str, str] | None = None, app: str = "appmod") -> None:
        self.broker = broker
        self.hostname = hostname  # the expanded node name
        self.log_path = log_path
        node_args = ["-n", hostname if node is None else node] if node != "" else []
        self.cmd = [*TASKQ, "worker", "-A", app, "-P", pool, "-c", str(concurrency),
                    "-Q", broker.queue, *node_args, "-l", "debug", *args]
        pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH"))
                                     if p)
        self.env = {**os.environ, **broker.env, "PYTHONPATH": pythonpath,
                    "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 10.0, *, after: int = 0
                 ) -> re.Match[str]:
        """The first match of ``pattern`` in the log past offset ``after``."""
        regex = re.compile(pattern)
        return wait_until(lambda: regex.search(self.log(), after), timeout,
                          f"{pattern!r} in the log of {self.hostname}")

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        """Until the log says the worker is ready and connected (the pidbox is attached)."""
        ready = re.compile(r"ready: pool=")
        connected = re.compile(r"consumer: connected to ")

        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"worker {self.hostname} exited with "
                                     f"{self.proc.returncode if self.proc else '?'} before it "
                                     f"was ready; its log:\n{self.log()}")
            text = self.log()
            return bool(ready.search(text) and connected.search(text))

        wait_until(up, timeout, f"worker {self.hostname} to be ready")
        return self

    def ping(self, client: TaskQ, timeout: float = 10.0) -> None:
        def answered() -> bool:
            replies = client.control.ping(destination=[self.hostname], timeout=0.5)
            return any(self.hostname in reply for reply in replies)

        wait_until(answered, timeout, f"{self.hostname} to answer a ping")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the worker (and anything in its session) and reap it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` seconds; the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in its session
        return self.proc.returncode

    def local_ports(self, remote_port: int) -> set[int]:
        """Local ports of the worker's TCP connections to ``remote_port`` (the broker)."""
        conns = psutil.Process(self.pid).net_connections(kind="tcp")
        return {c.laddr.port for c in conns
                if c.raddr and c.raddr.port == remote_port and c.status == "ESTABLISHED"}

    def kill_redis_clients(self) -> int:
        """Cut the worker's connections to Redis (CLIENT KILL on each of its local ports);
        how many Redis closed."""
        import redis

        ports = self.local_ports(REDIS_PORT)
        assert ports, "the worker has no connection to Redis"
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        try:
            killed = 0
            for port in ports:
                with contextlib.suppress(redis.ResponseError):  # it closed by itself meanwhile
                    killed += int(client.client_kill_filter(_type=None,
                                                            addr=f"127.0.0.1:{port}") or 0)
            return killed
        finally:
            client.close()


StartWorker = Callable[..., WorkerProcess]


class WorkerSet:
    """Starts workers for one scope and stops them all at its end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []

    def start(self, broker: Broker, *, pool: str = "threads", concurrency: int = 2,
              name: str | None = None, args: Sequence[str] = (),
              env: dict[str, str] | None = None, ready: bool = True,
              mingle: bool = False, app: str = "appmod", node: str | None = None
              ) -> WorkerProcess:
        """``node``: the ``-n`` value (``""``: no ``-n``, the default name); by default a
        name no other worker uses."""
        n = len(self.workers) + 1
        if node is None:
            node = f"{name or 'w'}{n}-{broker.name}@{HOST}"
        from taskq.worker.worker import expand_hostname

        hostname = expand_hostname(node or None)
        extra = [*args]
        if not mingle:
            extra += ["--without-mingle", "--without-gossip"]
        w = WorkerProcess(broker, pool=pool, concurrency=concurrency, hostname=hostname,
                          node=node, log_path=self.log_dir / f"worker{n}.log", args=extra,
                          env=env, app=app)
        self.workers.append(w)
        w.start()
        if ready:
            w.wait_ready()
        return w

    def stop_all(self, *, dump_stacks: bool = False) -> None:
        """Stop every worker; with ``dump_stacks`` (a failed test), live ones first write
        every thread's stack to their log (SIGABRT with PYTHONFAULTHANDLER set)."""
        for w in self.workers:
            if dump_stacks and w.alive():
                w.signal(signal.SIGABRT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    w.wait_exit(5)
            w.stop()

    def dump(self) -> str:
        return "\n".join(f"===== {w.hostname} (pid {w.proc.pid if w.proc else '?'}, exit "
                         f"{w.proc.returncode if w.proc else '?'}) =====\n{w.log()}"
                         for w in self.workers)

