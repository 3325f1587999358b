"""Receiving events: a private auto-delete queue bound to ``celeryev``.

``EventReceiver(conn, handlers={"*": fn}).capture(limit=, timeout=)`` calls a handler per
event, after stamping ``local_received`` and adjusting the local Lamport clock. Events are
handed out in logical-clock order within each drained batch.
"""

from __future__ import annotations

import builtins
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kombu import Consumer, Queue
from kombu.clocks import LamportClock

from taskq.events.dispatcher import event_exchange

if TYPE_CHECKING:
    from kombu import Connection, Message

Handler = Callable[[dict[str, Any]], None]


class EventReceiver:
    def __init__(self, connection: Connection, *, handlers: Mapping[str, Handler] | None = None,
                 routing_key: str = "#", clock: LamportClock | None = None,
                 queue_prefix: str = "taskqev") -> None:
        self.connection = connection
        self.handlers = dict(handlers or {})
        self.clock = clock or LamportClock()
        self.queue = Queue(f"{queue_prefix}.{uuid.uuid4()}", exchange=event_exchange(connection),
                           routing_key=routing_key, auto_delete=True, durable=False,
                           expires=60.0, message_ttl=300.0)
        self._batch: list[dict[str, Any]] = []
        self._consumer: Consumer | None = None

    def start(self) -> EventReceiver:
        """Declare the queue and start consuming (``capture`` does it if needed); events sent
        from then on are kept for this receiver until ``close``."""
        if self._consumer is None:
            self._consumer = Consumer(self.connection.channel(), queues=[self.queue],
                                      callbacks=[self._on_message], no_ack=True,
                                      accept=["json"])
            self._consumer.consume()
            # kombu's Redis transport subscribes to a fanout exchange on the first drain:
            # do it now, so events sent after start() are not missed.
            with contextlib.suppress(builtins.TimeoutError):
                self.connection.drain_events(timeout=0.05)
            self._dispatch_batch()
        return self

    def close(self) -> None:
        if self._consumer is not None:
            try:
                self._consumer.cancel()
            except Exception:  # the connection may be gone already; nothing to give back
                pass
            self._consumer = None

    def __enter__(self) -> EventReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_message(self, body: Any, message: Message) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            return  # not an event: never crash on what others send
        event = dict(body)
        event["local_received"] = time.time()
        self.clock.adjust(int(event.get("clock") or 0))
        self._batch.append(event)

    def _dispatch_batch(self) -> int:
        batch, self._batch = self._batch, []
        batch.sort(key=lambda e: (int(e.get("clock") or 0), str(e.get("hostname"))))
        for event in batch:
            handler = self.handlers.get(event["type"]) or self.handlers.get("*")
            if handler is not None:
                handler(event)
        return len(batch)

    def capture(self, *, limit: int | None = None, timeout: float | None = None,
                stop: Callable[[], bool] | None = None) -> int:
        """Receive events until ``limit`` were handled, ``timeout`` passed or ``stop()``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        handled = 0
        self.start()
        while limit is None or handled < limit:
            if stop is not None and stop():
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            with contextlib.suppress(builtins.TimeoutError):
                self.connection.drain_events(
                    timeout=0.5 if remaining is None else min(0.5, remaining))
            handled += self._dispatch_batch()
        return handled
