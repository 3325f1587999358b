"""Remote control, worker side: the pidbox node that runs the commands in ``inspect.py``.

Commands run in the loop thread. An unknown command gets an error reply; a malformed
message is logged; nothing escapes into the loop.

Replies are a courtesy to a client that waits for them with a timeout of its own, so they
never hold the loop: they go out without a publisher confirm (on RabbitMQ each would be a
round trip the loop stood still for, and one slower than the read timeout cost the worker its
connection) and without kombu's retry, which on a lost connection would reconnect in the loop
until the broker came back, behind the consumer's back. A reply that cannot be sent is
logged and dropped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Producer
from kombu.exceptions import InconsistencyError
from kombu.pidbox import Node

from taskq.compat import subscribe_now, without_publisher_confirms
from taskq.control import make_mailbox
from taskq.worker.inspect import HANDLERS

if TYPE_CHECKING:
    from kombu import Connection, Message

    from taskq.worker.worker import Worker

logger = logging.getLogger("taskq.worker.control")


class ControlNode:
    """Listens on ``<hostname>.celery.pidbox`` for broadcast commands."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.mailbox = make_mailbox()
        self.mailbox.clock = worker.app.clock  # one Lamport clock per worker
        self.node: Node | None = None

    def attach(self, conn: Connection) -> None:
        channel = without_publisher_confirms(conn.channel())
        node = ReplyNode(self.worker.hostname, self.worker, channel, dict(HANDLERS),
                         mailbox=self.mailbox(conn))
        self.node = node
        node.listen(callback=self._on_message)
        subscribe_now(channel)  # listening before the worker says ready, not after

    def _addressed_to_us(self, body: dict[str, Any]) -> bool:
        destination: Any = body.get("destination")
        if not destination:
            return True
        return isinstance(destination, list | tuple) and self.worker.hostname in destination

    def _on_message(self, body: Any, message: Message) -> None:
        node = self.node
        if node is None:
            return
        if not isinstance(body, dict) or not isinstance(body.get("method"), str):
            logger.warning("ignored a malformed control message: %.200r", body)
            return
        if body["method"] not in (node.handlers or {}):
            if not self._addressed_to_us(body):
                return
            logger.info("unknown control command %r", body["method"])
            reply_to = body.get("reply_to")
            if isinstance(reply_to, dict):
                node.reply({self.worker.hostname: {"error": f"unknown command "
                                                   f"{body['method']!r}"}},
                           exchange=reply_to.get("exchange"),
                           routing_key=reply_to.get("routing_key"), ticket=body.get("ticket"))
            return
        try:
            if body["method"] == "revoke":
                self._revoke(node, body, message)
            else:
                node.handle_message(body, message)
        except Exception:
            logger.exception("control command %r failed", body.get("method"))

    def _revoke(self, node: Node, body: dict[str, Any], message: Message) -> None:
        """Revoke at once (in the loop), then store REVOKED for the ids no worker started,
        off the loop; the reply goes when that is done, so a client that waited for it reads
        the new states."""
        reply = node.handle_message({**body, "reply_to": None}, message)
        if reply is None:  # addressed to other workers
            return
        raw = (body.get("arguments") or {}).get("task_id")
        ids = [raw] if isinstance(raw, str) else [str(t) for t in raw or ()]
        reply_to = body.get("reply_to")

        def send_reply() -> None:
            # Not on a node a reconnect has replaced: its channel belongs to a closed
            # connection (on Redis, publishing there would connect that client again).
            if isinstance(reply_to, dict) and self.node is node:
                node.reply({self.worker.hostname: reply}, exchange=reply_to.get("exchange"),
                           routing_key=reply_to.get("routing_key"), ticket=body.get("ticket"))

        self.worker.store_revoked_elsewhere(ids, send_reply)


class ReplyNode(Node):
    """kombu's pidbox node, its replies sent once, without waiting (see the module
    docstring)."""

    def reply(self, data: Any, exchange: str, routing_key: str, ticket: Any,
              **kwargs: Any) -> None:
        mailbox = self.mailbox
        assert mailbox is not None  # ControlNode.attach gives it one
        target = Exchange(exchange, "direct", durable=False, delivery_mode="transient")
        try:
            Producer(self.channel, auto_declare=False).publish(
                data, exchange=target, routing_key=routing_key, declare=[target],
                serializer=mailbox.serializer,
                headers={"ticket": ticket, "clock": mailbox.clock.forward()}, retry=False)
        except InconsistencyError:  # Redis: nobody waits on that reply queue any more
            pass
        except Exception as exc:  # the connection or channel is gone: the client times out
            logger.info("a control reply to %s was not sent: %r", routing_key, exc)
