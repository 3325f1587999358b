"""A received task message, validated before anything runs.

``Request.build`` decodes and checks a kombu message; a message the worker cannot run raises
``Rejection`` with the reason, and the consumer rejects it (never requeued forever), logs the
reason with the task id, and carries on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskq.errors import ContentDisallowed, InvalidTaskMessage, NotRegistered
from taskq.protocol import TaskMessage, decode
from taskq.worker.state import RevokedSet

if TYPE_CHECKING:
    from kombu import Message

    from taskq.app import TaskQ
    from taskq.task import Task


class Rejection(Exception):
    """The message cannot be run; ``reason`` says why, ``state`` what to store (if anything)."""

    def __init__(self, reason: str, *, task_id: str | None = None, store: str | None = None,
                 exc: BaseException | None = None, msg: TaskMessage | None = None,
                 revoked_reason: str = "revoked") -> None:
        super().__init__(reason)
        self.reason = reason
        self.task_id = task_id
        self.store = store
        self.exc = exc
        # The decoded message when there is one: the rpc backend replies to its reply_to.
        self.msg = msg
        # What a stored REVOKED says (Celery: "revoked" or "expired").
        self.revoked_reason = revoked_reason


@dataclass(eq=False)
class Request:
    """One message the worker holds, from receipt to ack."""

    msg: TaskMessage
    message: Message
    task: Task
    generation: int
    received_at: float
    acknowledged: bool = False
    settled_reason: str | None = field(default=None)
    terminated: int | None = None  # the signal revoke(terminate=True) sent its child
    # Lease transports: (delivery tag, lease) of its early ack once handed to the transport,
    # until the broker answered (``Consumer.ack_now``; a lost answer: ``confirm_acks``).
    ack_lease: tuple[str, Any] | None = None
    # The task's settings as the message arrived, read once (each is a settings lookup).
    acks_late: bool = False
    reject_on_worker_lost: bool = False

    @property
    def id(self) -> str:
        return self.msg.id

    @property
    def name(self) -> str:
        return self.msg.task

    def expired(self, now: dt.datetime | None = None) -> bool:
        """Its ``expires`` has passed (Celery's worker revokes such a task, as "expired")."""
        expires = self.msg.expires
        return expires is not None and expires <= (now or dt.datetime.now(dt.UTC))

    @property
    def delivery_info(self) -> dict[str, Any]:
        info = dict(self.message.delivery_info or {})
        info.pop("delivery_tag", None)
        info["redelivered"] = bool(info.get("redelivered"))
        if info.get("priority") is None:  # as Celery's request: the message's priority
            info["priority"] = (self.message.properties or {}).get("priority")
        return {k: v for k, v in info.items() if isinstance(v, str | int | bool | type(None))}

    @classmethod
    def build(
        cls,
        message: Message,
        app: TaskQ,
        *,
        generation: int,
        revoked: RevokedSet,
        accept: list[str],
        now: dt.datetime,
        received_at: float,
    ) -> Request:
        headers = message.headers if isinstance(message.headers, dict) else {}
        raw_id = headers.get("id")
        if not isinstance(raw_id, str):  # protocol 2: the correlation id is the task id
            raw_id = (message.properties or {}).get("correlation_id")
        task_id = raw_id if isinstance(raw_id, str) and raw_id else None
        try:
            msg = decode(
                message.body,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                headers=message.headers,
                properties=message.properties,
                accept=accept,
            )
        except (InvalidTaskMessage, ContentDisallowed) as exc:
            raise Rejection(str(exc), task_id=task_id) from None
        try:
            task = app.get_task(msg.task)
        except NotRegistered as exc:
            raise Rejection(str(exc), task_id=msg.id, store="FAILURE", exc=exc,
                            msg=msg) from None
        if msg.id in revoked:
            raise Rejection(f"task {msg.task}[{msg.id}] was revoked", task_id=msg.id,
                            store="REVOKED", msg=msg)
        if msg.expires is not None and msg.expires <= now:
            raise Rejection(
                f"task {msg.task}[{msg.id}] expired at {msg.expires.isoformat()}",
                task_id=msg.id, store="REVOKED", msg=msg, revoked_reason="expired")
        return cls(msg=msg, message=message, task=task, generation=generation,
                   received_at=received_at, acks_late=task.acks_late,
                   reject_on_worker_lost=task.reject_on_worker_lost)
