"""rpc:// result backend: results travel as messages to the caller's own reply queue.

The client declares a queue named after its app instance (``oid``) and puts it in each task's
``reply_to``; the worker publishes the task's record there with ``correlation_id`` = task id,
as Celery's rpc backend does. Results are not stored anywhere else: only the caller that sent
the task can read them, and unless ``result_persistent`` is set they do not survive a broker
restart.
"""

from __future__ import annotations

import builtins
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from kombu import Consumer, Exchange, Queue

from taskq import states
from taskq.backends.base import Backend, Meta, pending_meta
from taskq.errors import ResultBackendError, TimeoutError

if TYPE_CHECKING:
    from kombu import Connection, Message

    from taskq.app import TaskQ

DEFAULT_EXCHANGE = Exchange("", type="direct")


class RPCBackend(Backend):
    supports_wait = True

    def __init__(self, app: TaskQ, url: str) -> None:
        super().__init__(app)
        self.persistent = bool(app.conf.result_persistent)
        self.oid = str(uuid.uuid4())
        self._results: dict[str, Meta] = {}
        self._conn: Connection | None = None
        self._consumer: Consumer | None = None
        self._pid = os.getpid()

    @property
    def binding(self) -> Queue:
        return Queue(self.oid, DEFAULT_EXCHANGE, self.oid, durable=False, auto_delete=True,
                     expires=600)

    # -- the worker side ----------------------------------------------------------------------
    def _set(self, task_id: str, meta: Meta, state: str, request: Any) -> None:
        reply_to = getattr(request, "reply_to", None)
        if not reply_to:
            return  # nobody is listening: there is nowhere to send it
        with self.app.producer() as producer:
            producer.publish(
                meta,
                exchange=DEFAULT_EXCHANGE,
                routing_key=reply_to,
                correlation_id=task_id,
                serializer=self.serializer,
                delivery_mode=2 if self.persistent else 1,
                retry=True,
                retry_policy=self.app.conf.task_publish_retry_policy,
            )

    # -- the client side ----------------------------------------------------------------------
    def on_task_call(self, task_id: str) -> str:
        self._ensure_consumer()
        return self.oid

    def _ensure_consumer(self) -> Consumer:
        if self._pid != os.getpid():  # forked: start over with our own queue
            self.oid, self._pid = str(uuid.uuid4()), os.getpid()
            self._conn, self._consumer = None, None
            self._results.clear()
        if self._consumer is None:
            conn = self.app.connection()
            consumer = Consumer(conn.default_channel, queues=[self.binding],
                                callbacks=[self._on_message], no_ack=True,
                                accept=self.accept)
            consumer.consume()
            self._conn, self._consumer = conn, consumer
        return self._consumer

    def _on_message(self, body: Any, message: Message) -> None:
        task_id = message.properties.get("correlation_id") or (
            body.get("task_id") if isinstance(body, dict) else None
        )
        if task_id and isinstance(body, dict):
            previous = self._results.get(task_id)
            # Keep a ready state once seen: a late RETRY/STARTED must not hide it.
            if previous is None or previous["status"] not in states.READY_STATES:
                self._results[task_id] = body

    def _drain(self, timeout: float) -> None:
        for attempt in (1, 2):
            self._ensure_consumer()
            assert self._conn is not None
            try:
                self._conn.drain_events(timeout=timeout)
                return
            except builtins.TimeoutError:
                return
            except (*self._conn.connection_errors, OSError) as exc:
                # Reconnect once and redeclare the same reply queue: replies sent while it
                # was gone are lost (rpc:// results are not persistent), later ones arrive.
                conn, self._conn, self._consumer = self._conn, None, None
                try:
                    conn.collect()
                except Exception:
                    pass
                if attempt == 2:
                    raise ResultBackendError(
                        f"rpc backend: lost the broker connection: {exc}") from exc

    def _get(self, task_id: str) -> Meta | None:
        self._drain(0.01)
        return self._results.get(task_id)

    def wait_for(self, task_id: str, timeout: float | None = None, interval: float = 0.5) -> Meta:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta = self._results.get(task_id)
            if meta is not None and meta["status"] in states.READY_STATES:
                return meta
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"task {task_id} not ready after {timeout} s")
            self._drain(1.0 if remaining is None else min(remaining, 1.0))

    def get_task_meta(self, task_id: str) -> Meta:
        meta = self._get(task_id)
        return meta if meta is not None else pending_meta(task_id)

    def _delete(self, task_id: str) -> None:
        self._results.pop(task_id, None)

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.release()
        self._conn, self._consumer = None, None
