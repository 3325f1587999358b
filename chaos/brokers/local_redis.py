"""A private ``redis-server`` on a free loopback port, durable by default.

Durable means AOF with ``appendfsync always``: every acknowledged write is on disk before
the reply, so after :meth:`crash` (SIGKILL) and :meth:`start` the data is still there --
which is what a recovery test needs to tell "the broker lost it" from "taskq lost it".
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Sequence

from chaos.brokers.base import LocalProcessBroker
from chaos.errors import BrokerError
from chaos.journal import Journal
from chaos.net import free_port

__all__ = ["LocalRedis", "redis_ping", "redis_server_args"]


def redis_server_args(host: str, port: int, directory: str, *, durable: bool) -> list[str]:
    """``redis-server`` flags for a private broker: loopback, no RDB snapshots, and with
    ``durable`` an AOF synced on every write, so a crash tests recovery, not data loss."""
    durability = (["--appendonly", "yes", "--appendfsync", "always"] if durable
                  else ["--appendonly", "no"])
    return ["--port", str(port), "--bind", host, "--dir", directory, "--save", "",
            *durability]


def redis_ping(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING with PONG (not LOADING, not an error)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG")


class LocalRedis(LocalProcessBroker):
    """``redis-server`` in a temp dir, on ``port`` (default: a free one), as a child process.

    ``extra_args`` are appended to the command line (``["--maxmemory", "64mb"]``).
    """

    kind = "redis"

    def __init__(
        self,
        *,
        port: int | None = None,
        directory: str | os.PathLike[str] | None = None,
        durable: bool = True,
        executable: str = "redis-server",
        extra_args: Sequence[str] = (),
        journal: Journal | None = None,
        ready_timeout: float = 15.0,
    ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise BrokerError(
                f"{executable!r} is not on PATH; install it (apt-get install redis-server)"
            )
        super().__init__(directory=directory, journal=journal, ready_timeout=ready_timeout)
        self.executable = path
        self.port = port or free_port(self.host)
        self.durable = durable
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        return [
            self.executable,
            *redis_server_args(self.host, self.port, str(self.directory), durable=self.durable),
            "--daemonize",
            "no",
            *self.extra_args,
        ]

    def is_ready(self) -> bool:
        return redis_ping(self.host, self.port)
