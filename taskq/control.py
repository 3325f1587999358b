"""Remote control, client side: broadcast commands to workers over Celery's pidbox.

Messages go to the fanout exchange ``celery.pidbox``; replies come back on
``reply.celery.pidbox``. Celery's ``celery inspect``/``control`` speak the same format.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from kombu.pidbox import Mailbox

from taskq.compat import broadcast

if TYPE_CHECKING:
    from taskq.app import TaskQ

MAILBOX_NAME = "celery"


def make_mailbox() -> Mailbox:
    return Mailbox(MAILBOX_NAME, type="fanout", accept=["json"])


class Control:
    """``app.control``: ping, revoke, shutdown, and any other broadcast command."""

    def __init__(self, app: TaskQ) -> None:
        self.app = app
        self.mailbox = make_mailbox()

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> list[dict[str, Any]] | None:
        """Send ``command`` to every worker (or ``destination``); replies if ``reply``."""
        with self.app.connection() as conn:
            result: list[dict[str, Any]] | None = broadcast(
                self.mailbox(conn), command, arguments=arguments or {},
                destination=list(destination) if destination else None,
                reply=reply, timeout=timeout, limit=limit,
            )
            return result

    def ping(self, destination: Sequence[str] | None = None, timeout: float = 1.0
             ) -> list[dict[str, Any]]:
        return self.broadcast("ping", destination=destination, reply=True,
                              timeout=timeout) or []

    def revoke(
        self,
        task_id: str | Iterable[str],
        *,
        terminate: bool = False,
        signal: str = "SIGTERM",
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> list[dict[str, Any]] | None:
        """Tell workers not to run ``task_id`` (and, with ``terminate``, to kill it if running)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        return self.broadcast(
            "revoke", {"task_id": ids, "terminate": terminate, "signal": signal},
            destination=destination, reply=reply, timeout=timeout,
        )

    def rate_limit(self, task_name: str, rate_limit: str | float | None,
                   destination: Sequence[str] | None = None, reply: bool = False,
                   timeout: float = 1.0) -> list[dict[str, Any]] | None:
        """Set how often workers start ``task_name`` (``"10/s"``, ``"100/m"``; None: no limit)."""
        return self.broadcast("rate_limit", {"task_name": task_name, "rate_limit": rate_limit},
                              destination=destination, reply=reply, timeout=timeout)

    def shutdown(self, destination: Sequence[str] | None = None, reply: bool = False,
                 timeout: float = 1.0) -> list[dict[str, Any]] | None:
        return self.broadcast("shutdown", destination=destination, reply=reply, timeout=timeout)
