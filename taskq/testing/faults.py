"""``taskq_chaos``: faults aimed at a test's own worker, built on ``chaos``.

When a test asks for it, the test's broker traffic goes through a ``chaos.FaultProxy`` (and,
for ``restart_broker``, to a private ``redis-server`` that only this test uses).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from chaos import FaultProxy, Freeze, Kill, LocalRedis, Pids, wait_until

if TYPE_CHECKING:
    from taskq.app import TaskQ


class TaskqChaos:
    """Kill or freeze the child running a task, cut or black-hole the broker, restart it."""

    def __init__(self, broker_url: str, *, private_broker: bool = False) -> None:
        self.private: LocalRedis | None = None
        if private_broker:
            self.private = LocalRedis()
            self.private.start()
            broker_url = self.private.url
        parts = urlsplit(broker_url)
        self.scheme = parts.scheme
        self.upstream_url = broker_url
        self.proxy: FaultProxy | None = None
        self.broker_url = broker_url
        if self.scheme != "sqlite":  # the embedded broker has no connection to cut
            self.proxy = FaultProxy((parts.hostname or "127.0.0.1", parts.port or 0)).start()
            auth = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
            self.broker_url = self.proxy.url(parts.scheme, parts.path or "", auth)
        self.app: TaskQ | None = None
        self.hostname: str | None = None

    def attach(self, app: TaskQ, hostname: str) -> None:
        self.app, self.hostname = app, hostname

    # -- processes ----------------------------------------------------------------------------
    def _running_pid(self, running: str, timeout: float) -> int:
        assert self.app is not None and self.hostname is not None, "no worker attached"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            replies = self.app.control.broadcast("active", destination=[self.hostname],
                                                 reply=True, timeout=0.5) or []
            for reply in replies:
                for task in reply.get(self.hostname) or []:
                    if running in ("any", task.get("id")) and task.get("worker_pid"):
                        return int(task["worker_pid"])
        raise AssertionError(f"no child of {self.hostname} is running "
                             f"{'a task' if running == 'any' else running} after {timeout} s")

    def kill_child(self, running: str = "any", signal: str = "KILL",
                   timeout: float = 10.0) -> int:
        """SIGKILL (or ``signal``) the child running task id ``running`` (or any task)."""
        pid = self._running_pid(running, timeout)
        outcome = Kill(Pids([pid]), signal=signal).inject()
        if outcome.outcome != "ok":
            raise AssertionError(f"could not signal child {pid}: {outcome.detail}")
        return pid

    def freeze_child(self, seconds: float, running: str = "any", timeout: float = 10.0) -> int:
        pid = self._running_pid(running, timeout)
        Freeze(Pids([pid]), duration=seconds).inject()
        return pid

    # -- the broker ---------------------------------------------------------------------------
    def _network(self, what: str) -> FaultProxy:
        if self.proxy is None:
            raise AssertionError(
                f"{what} needs a networked broker, and this test runs on the embedded SQLite "
                "one: run with --taskq-broker redis://127.0.0.1:6379/0 (or TASKQ_TEST_BROKER), "
                "or mark the test @pytest.mark.taskq_private_broker")
        return self.proxy

    def cut_broker(self) -> int:
        """Close every connection through the proxy now; clients must reconnect."""
        return self._network("cut_broker").cut()

    def blackhole_broker(self, seconds: float) -> None:
        """Accept but never forward for ``seconds`` (a half-open broker), then heal."""
        proxy = self._network("blackhole_broker")
        toxic = proxy.blackhole()
        try:
            time.sleep(seconds)  # the fault's duration itself, not a wait for a condition
        finally:
            proxy.remove(toxic)
            proxy.cut()  # sockets stuck mid-frame cannot recover; make clients reconnect

    def restart_broker(self) -> None:
        if self.private is None:
            raise AssertionError("restart_broker needs a private broker: mark the test with "
                                 "@pytest.mark.taskq_private_broker (Redis only)")
        self.private.restart()
        wait_until(self.private.is_ready, timeout=30, what="private redis up again")

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        if self.private is not None:
            self.private.close()

