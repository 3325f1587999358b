"""Sending events: ``EventDispatcher(connection, hostname, clock).send("task-started", ...)``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Producer
from kombu.clocks import LamportClock

from taskq.compat import without_publisher_confirms

if TYPE_CHECKING:
    from kombu import Connection

logger = logging.getLogger("taskq.events")

EXCHANGE_NAME = "celeryev"
SW_IDENT = "py-taskq"


def event_exchange(connection: Connection | None = None) -> Exchange:
    """``celeryev``: a topic exchange, except on Redis where Celery makes it fanout."""
    kind = "topic"
    if connection is not None and connection.transport.driver_type == "redis":
        kind = "fanout"
    return Exchange(EXCHANGE_NAME, type=kind, durable=True, delivery_mode="transient")


def utcoffset() -> int:
    """Hours west of UTC, as Celery sends it (``-timezone // 3600``)."""
    offset = time.altzone if time.daylight and time.localtime().tm_isdst > 0 else time.timezone
    return offset // 3600


def make_event(type_: str, *, hostname: str, clock: int, **fields: Any) -> dict[str, Any]:
    event = dict(fields)
    event.update(type=type_, hostname=hostname, clock=clock, timestamp=time.time(),
                 utcoffset=utcoffset(), pid=os.getpid())
    return event


class EventDispatcher:
    """Publishes events on a connection; ``groups`` limits it to e.g. {"worker"} or {"task"}.

    Sending never raises into the caller: an event that cannot be sent is logged and dropped
    (events are monitoring, never part of a task's delivery guarantees). For the same reason
    an event is not confirmed by the broker: on RabbitMQ a confirm is a round trip that the
    worker's event loop would wait for with every event.
    """

    def __init__(self, connection: Connection, hostname: str, clock: LamportClock,
                 *, enabled: bool = True, groups: Collection[str] | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.connection = connection
        self.on_error = on_error  # told of every failed send (the worker: a dead connection)
        self.hostname = hostname
        self.clock = clock
        self.enabled = enabled
        self.groups = set(groups) if groups else None
        self.exchange = event_exchange(connection)
        self._producer: Producer | None = None
        self.sent = 0

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            # No publisher confirm: an event is not worth a round trip (see the class).
            channel = without_publisher_confirms(self.connection.channel())
            self._producer = Producer(channel, exchange=self.exchange,
                                      serializer="json", auto_declare=True)
        return self._producer

    def wants(self, type_: str) -> bool:
        if not self.enabled:
            return False
        return self.groups is None or type_.split("-", 1)[0] in self.groups

    def send(self, type_: str, **fields: Any) -> dict[str, Any] | None:
        if not self.wants(type_):
            return None
        event = make_event(type_, hostname=self.hostname, clock=self.clock.forward(), **fields)
        try:
            producer = self._ensure_producer()
            producer.publish(event, routing_key=type_.replace("-", "."),
                             headers={"hostname": self.hostname}, delivery_mode=1,
                             retry=False)
        except Exception as exc:
            self._producer = None
            logger.debug("event %s not sent: %r", type_, exc)
            if self.on_error is not None:
                self.on_error(exc)
            return None
        self.sent += 1
        return event

    def close(self) -> None:
        self._producer = None
