"""Remote control, worker side: the pidbox node and its command handlers.

Handlers run in the loop thread and must not block. Unknown commands get an error reply,
never an exception out of the loop.
"""

from __future__ import annotations

import logging
import signal as signals
from typing import TYPE_CHECKING, Any

from taskq.control import make_mailbox

if TYPE_CHECKING:
    from kombu import Connection, Message

    from taskq.worker.worker import Worker

logger = logging.getLogger("taskq.worker.control")


def _signum(name: Any) -> int:
    if isinstance(name, int):
        return name
    text = str(name or "SIGTERM").upper()
    if not text.startswith("SIG"):
        text = "SIG" + text
    return int(getattr(signals, text, signals.SIGTERM))


def ping(worker: Worker, **_: Any) -> dict[str, Any]:
    return {"ok": "pong"}


def revoke(worker: Worker, task_id: str | list[str], terminate: bool = False,
           signal: Any = None, **_: Any) -> dict[str, Any]:
    ids = [task_id] if isinstance(task_id, str) else [str(t) for t in task_id]
    worker.revoke(ids, terminate=terminate, signum=_signum(signal))
    action = "terminated and revoked" if terminate else "flagged as revoked"
    return {"ok": f"tasks {', '.join(ids)} {action}"}


def shutdown(worker: Worker, **_: Any) -> dict[str, Any]:
    logger.warning("shutdown requested by remote control")
    worker.loop.hub.call_soon(worker.request_stop, True)
    return {"ok": "shutting down"}


HANDLERS = {"ping": ping, "revoke": revoke, "shutdown": shutdown}


class ControlNode:
    """Listens on ``<hostname>.celery.pidbox`` for broadcast commands."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.mailbox = make_mailbox()

    def attach(self, conn: Connection) -> None:
        channel = conn.channel()
        node = self.mailbox(conn).Node(self.worker.hostname, state=self.worker,
                                       channel=channel, handlers=dict(HANDLERS))
        self.node = node
        node.listen(callback=self._on_message)

    def _on_message(self, body: Any, message: Message) -> None:
        if not isinstance(body, dict) or "method" not in body:
            logger.warning("ignored a malformed control message: %r", body)
            return
        if body["method"] not in self.node.handlers:
            logger.debug("ignored unknown control command %r", body["method"])
            if body.get("reply_to"):
                self.node.reply({self.worker.hostname: {"error": f"unknown command "
                                                        f"{body['method']!r}"}},
                                exchange=body["reply_to"]["exchange"],
                                routing_key=body["reply_to"]["routing_key"],
                                ticket=body.get("ticket"))
            return
        self.node.handle_message(body, message)
