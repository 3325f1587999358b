"""Fixtures for the chaos tests: process trees to aim at, an echo server, Docker.

Docker-dependent tests skip with the reason locally and fail when ``CI`` is set, like the
broker fixtures in tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from chaos.targets import ProcessRef, child_pids
from chaos.waiting import wait_until


@pytest.fixture(scope="session")
def _docker_reason() -> str | None:
    from chaos.brokers.docker import docker_unavailable

    return docker_unavailable()


@pytest.fixture
def docker_engine(_docker_reason: str | None) -> None:
    """Skip (or, under CI, fail) unless a Docker engine answers."""
    if _docker_reason is None:
        return
    message = f"Docker is not available: {_docker_reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# -- process trees -------------------------------------------------------------------------

# A parent that spawns N `sleep` children and reaps them as they die (as a worker would).
_TREE = """
import os, signal, sys
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for arg in sys.argv[1:]:
    os.posix_spawn("/bin/sleep", ["sleep", arg], os.environ)
sys.stdin.read()
"""

# A process that logs every catchable signal it receives to a file, then stays alive.
_BYSTANDER = """
import os, signal, sys
log = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
def note(signum, frame):
    os.write(log, f"{os.getpid()} {signum}\\n".encode())
for s in signal.valid_signals():
    if s not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
        try:
            signal.signal(s, note)
        except (OSError, ValueError):
            pass
os.write(1, b"ready\\n")
while True:
    signal.pause()
"""


@dataclass
class Tree:
    """A parent process with ``sleep`` children, in its own process group."""

    proc: subprocess.Popen[bytes]
    expected: int
    refs: list[ProcessRef] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        return sorted(child_pids(self.pid))

    def wait_children(self, count: int | None = None, timeout: float = 30.0) -> list[int]:
        want = self.expected if count is None else count
        wait_until(lambda: len(self.children()) == want, timeout, what=f"{want} children")
        return self.children()

    def kill(self) -> None:
        # The whole group, even if the parent is already dead (a test killed it): its
        # orphaned children keep the group id alive, so it cannot name anyone else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def spawn_tree() -> Iterator[Callable[..., Tree]]:
    """``spawn_tree(5)`` → a parent with 5 ``sleep`` children; all killed at teardown."""
    trees: list[Tree] = []

    def spawn(count: int, *, sleep_args: list[str] | None = None) -> Tree:
        args = sleep_args or ["600"] * count
        proc = subprocess.Popen(
            [sys.executable, "-c", _TREE, *args], stdin=subprocess.PIPE, start_new_session=True
        )
        tree = Tree(proc, len(args))
        trees.append(tree)
        tree.wait_children()
        tree.refs = [r for p in tree.children() if (r := ProcessRef.of(p)) is not None]
        return tree

    yield spawn
    for tree in trees:
        tree.kill()


@dataclass
class Bystanders:
    procs: list[subprocess.Popen[bytes]]
    log: Path
    refs: list[ProcessRef]

    def all_alive(self) -> bool:
        return all(ref.is_alive() for ref in self.refs)

    def signals_received(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def bystanders(tmp_path: Path) -> Iterator[Callable[[int], Bystanders]]:
    """``bystanders(n)`` → n processes that log any catchable signal they receive."""
    made: list[subprocess.Popen[bytes]] = []

    def spawn(count: int) -> Bystanders:
        log = tmp_path / "bystander-signals.log"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _BYSTANDER, str(log)],
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            for _ in range(count)
        ]
        made.extend(procs)
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
        refs = [r for p in procs if (r := ProcessRef.of(p.pid)) is not None]
        return Bystanders(procs, log, refs)

    yield spawn
    for proc in made:
        proc.kill()
        proc.wait()


# -- an echo server for proxy tests --------------------------------------------------------


class _EchoHandler(socketserver.BaseRequestHandler):
    """Echo everything; ``CLOSE`` makes the server close the connection (upstream close)."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            if data.startswith(b"CLOSE"):
                sock.close()
                return
            try:
                sock.sendall(data)
            except OSError:
                return


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A threaded TCP echo server on a free loopback port."""
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield server.server_address[0], server.server_address[1]
    server.shutdown()
    server.server_close()
