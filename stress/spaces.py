"""A cell's own corner of a broker: queue names and key prefixes no other cell uses.

The shared Redis and RabbitMQ are shared: a cell creates its own keys (Redis
``global_keyprefix``) or queue and exchange (RabbitMQ) and deletes exactly those at the end.
The embedded SQLite broker gets a file in the cell's own directory.
"""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stress.errors import RunnerError

__all__ = ["DEFAULT_URLS", "Space", "make_space", "transport_of"]

DEFAULT_URLS = {"redis": "redis://127.0.0.1:6379/0", "amqp": "amqp://guest:guest@127.0.0.1:5672//"}
LEASE_TIMEOUT = 5.0  # short, so a killed main process's tasks come back within the cell


def transport_of(url: str) -> str:
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        return "redis"
    if scheme in ("amqp", "pyamqp", "amqps"):
        return "amqp"
    if scheme == "sqlite":
        return "sqlite"
    raise RunnerError(f"--broker {url!r}: taskq-stress runs on redis://, amqp:// or sqlite:// "
                      "brokers")


def address_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 5672
    return parts.hostname or "127.0.0.1", parts.port or default


@dataclass
class Space:
    transport: str
    url: str
    name: str
    directory: Path
    transport_options: dict[str, Any] = field(default_factory=dict)
    backend_url: str = ""
    backend_options: dict[str, Any] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        return self.name

    def env(self, broker_url: str | None = None) -> dict[str, str]:
        """The ``TASKQ_*`` settings that put a worker (or client) in this space."""
        env = {
            "TASKQ_BROKER_URL": broker_url or self.url,
            "TASKQ_TASK_DEFAULT_QUEUE": self.name,
            "TASKQ_TASK_DEFAULT_EXCHANGE": self.name,
            "TASKQ_TASK_DEFAULT_ROUTING_KEY": self.name,
            "TASKQ_BROKER_TRANSPORT_OPTIONS": json.dumps(self.transport_options),
            "TASKQ_RESULT_BACKEND": self.backend_url,
            "TASKQ_RESULT_BACKEND_TRANSPORT_OPTIONS": json.dumps(self.backend_options),
            "TASKQ_RESULT_EXPIRES": "3600",
        }
        return env

    def check(self) -> None:
        """Fail with a clear error (exit code 2) when the broker cannot be reached, or its
        client package (or the result backend's) is not installed."""
        if self.transport == "redis" or self.backend_url.startswith("redis"):
            try:
                import redis  # noqa: F401
            except ImportError:
                raise RunnerError(
                    f"the cell's {'broker' if self.transport == 'redis' else 'result backend'}"
                    " is Redis, and the redis package is not installed: pip install "
                    "'taskq[redis]' (or pass --broker sqlite:// to run without Redis)") from None
        if self.transport == "sqlite":
            return
        host, port = address_of(self.url)
        try:
            socket.create_connection((host, port), timeout=2.0).close()
        except OSError as exc:
            raise RunnerError(
                f"the {self.transport} broker at {host}:{port} is not reachable ({exc}); start "
                "it (bash ci/start-brokers.sh) or pass --broker URL") from None

    def cleanup(self) -> None:
        """Delete what this cell created, and nothing else."""
        if self.transport == "redis" or self.backend_url.startswith("redis"):
            _delete_redis_prefix(self.backend_url or self.url, f"{self.name}:")
        if self.transport == "amqp":
            _delete_amqp(self.url, self.name)


def _delete_redis_prefix(url: str, prefix: str) -> None:
    try:
        import redis
    except ImportError:
        return  # nothing could have been written there without it
    with contextlib.suppress(Exception):
        client = redis.Redis.from_url(url, socket_timeout=5)
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    client.delete(*batch)
                    batch.clear()
            if batch:
                client.delete(*batch)
        finally:
            client.close()


def _delete_amqp(url: str, name: str) -> None:
    from kombu import Connection

    with contextlib.suppress(Exception), Connection(url, connect_timeout=4) as conn:
        channel = conn.channel()
        for what in ("queue_delete", "exchange_delete"):
            with contextlib.suppress(Exception):
                getattr(channel, what)(name)
            if not channel.is_open:  # a failed delete closes the channel
                channel = conn.channel()


def make_space(transport: str, directory: Path, url: str | None = None) -> Space:
    name = f"tqs{uuid.uuid4().hex[:10]}"
    if transport == "sqlite":
        if not url or url.rstrip("/") == "sqlite:":  # bare sqlite://: a file of the cell's own
            url = f"sqlite:///{directory / 'broker.db'}"
        return Space(transport, url, name, directory,
                     transport_options={"lease_timeout": LEASE_TIMEOUT},
                     backend_url=f"db+sqlite:///{directory / 'results.db'}")
    url = url or DEFAULT_URLS[transport]
    backend = url if transport == "redis" else DEFAULT_URLS["redis"]
    options: dict[str, Any] = {}
    if transport == "redis":
        options = {"global_keyprefix": f"{name}:", "lease_timeout": LEASE_TIMEOUT,
                   "restore_interval": 0.5}
    return Space(transport, url, name, directory, transport_options=options,
                 backend_url=backend, backend_options={"global_keyprefix": f"{name}:r:"})
