"""A private RabbitMQ node: its own node name, ports and data dir, run as a child process.

``/usr/lib/rabbitmq/bin/rabbitmq-server`` is run directly (not the service) with every
path in a temp dir: config, enabled plugins (none), Mnesia data, logs, and an empty env
file so the machine's ``rabbitmq-env.conf`` does not override the node name. It shares
the machine's epmd and boots in several seconds, so tests start one node per session.
"""

from __future__ import annotations

import contextlib
import os
import uuid

from chaos.brokers.base import LocalProcessBroker
from chaos.errors import BrokerError
from chaos.journal import Journal
from chaos.net import free_port

__all__ = ["DEFAULT_RABBITMQ_SERVER", "LocalRabbitMQ", "amqp_ready"]

DEFAULT_RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


def amqp_ready(
    host: str, port: int, *, timeout: float = 1.0, userid: str = "guest", password: str = "guest"
) -> bool:
    """True if an AMQP 0-9-1 login to the default vhost succeeds."""
    import amqp  # py-amqp ships with kombu

    conn = amqp.Connection(
        f"{host}:{port}",
        userid=userid,
        password=password,
        connect_timeout=timeout,
        read_timeout=timeout,
        write_timeout=timeout,
    )
    try:
        conn.connect()
    except Exception:  # any failure means "not ready yet"
        return False
    finally:
        with contextlib.suppress(Exception):  # best-effort cleanup of a probe
            conn.collect()
    return True


class LocalRabbitMQ(LocalProcessBroker):
    """A RabbitMQ node on ``port`` (AMQP) and ``dist_port`` (Erlang distribution)."""

    kind = "rabbitmq"

    def __init__(
        self,
        *,
        port: int | None = None,
        dist_port: int | None = None,
        nodename: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        executable: str = DEFAULT_RABBITMQ_SERVER,
        journal: Journal | None = None,
        ready_timeout: float = 90.0,
    ) -> None:
        if not os.access(executable, os.X_OK):
            raise BrokerError(
                f"{executable} is not executable; install rabbitmq-server (Debian package)"
            )
        super().__init__(directory=directory, journal=journal, ready_timeout=ready_timeout)
        self.executable = executable
        self.port = port or free_port(self.host)
        self.dist_port = dist_port or free_port(self.host)
        while self.dist_port == self.port:
            self.dist_port = free_port(self.host)
        self.nodename = nodename or f"taskq-chaos-{uuid.uuid4().hex[:8]}@localhost"
        self._write_config()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}//"

    def _write_config(self) -> None:
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.host}:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")

    def command(self) -> list[str]:
        return [self.executable]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        d = self.directory
        env.update(
            HOME=str(d),  # the Erlang cookie goes here, not in root's home
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        env.pop("RABBITMQ_SERVER_START_ARGS", None)
        return env

    def is_ready(self) -> bool:
        return amqp_ready(self.host, self.port)
