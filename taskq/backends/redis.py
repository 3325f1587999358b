"""Redis result backend, compatible with Celery's.

Each record is stored at ``celery-task-meta-<task_id>`` (prefixed by ``global_keyprefix``
when set) with ``result_expires`` as its TTL, and the same payload is published on a channel
of the same name: Celery's ``AsyncResult.get()`` waits on that channel, and so does taskq's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from taskq import states
from taskq.backends.base import Backend, Meta
from taskq.errors import ResultBackendError, TaskqError, TimeoutError
from taskq.urls import safe_url

if TYPE_CHECKING:
    from taskq.app import TaskQ

T = TypeVar("T")

KEY_PREFIX = "celery-task-meta-"


class RedisBackend(Backend):
    supports_wait = True

    def __init__(
        self,
        app: TaskQ,
        url: str,
        *,
        global_keyprefix: str = "",
        socket_timeout: float = 10.0,
        socket_connect_timeout: float = 4.0,
        health_check_interval: float = 25.0,
        **redis_options: Any,
    ) -> None:
        super().__init__(app)
        try:
            import redis
        except ImportError:
            raise ResultBackendError(
                "the redis:// result backend needs the redis package: pip install 'taskq[redis]'"
            ) from None
        self.url = url
        self.keyprefix = global_keyprefix
        self.expires = app.conf.result_expires
        self._redis_errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=health_check_interval,
            retry_on_timeout=True,
            **redis_options,
        )

    def key_for(self, task_id: str) -> str:
        return f"{self.keyprefix}{KEY_PREFIX}{task_id}"

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except TaskqError:
            raise  # our own TimeoutError is an OSError too; it is not a Redis failure
        except self._redis_errors as exc:
            raise ResultBackendError(
                f"result backend {safe_url(self.url)}: {doing} failed: {exc}; is Redis running "
                "and is result_backend right?"
            ) from exc

    def _call(self, doing: str, fn: Callable[[], T]) -> T:
        with self._errors(doing):
            return fn()

    def _set(self, task_id: str, meta: Meta, state: str, request: Any) -> None:
        key = self.key_for(task_id)
        payload = self.encode(meta)
        with self._errors("storing a result"):
            pipe = self.client.pipeline()
            if self.expires:
                pipe.set(key, payload, ex=max(int(self.expires), 1))
            else:
                pipe.set(key, payload)
            pipe.publish(key, payload)
            pipe.execute()

    def _get(self, task_id: str) -> Meta | None:
        payload = self._call("reading a result", lambda: self.client.get(self.key_for(task_id)))
        return None if payload is None else self.decode(payload)

    def _delete(self, task_id: str) -> None:
        self._call("forgetting a result", lambda: self.client.delete(self.key_for(task_id)))

    def wait_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5
    ) -> Meta:
        key = self.key_for(task_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._errors("waiting for a result"):
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(key)
                # Subscribed first, then read: a result stored in between is not missed.
                meta = self.get_task_meta(task_id)
                while meta["status"] not in states.READY_STATES:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"task {task_id} not ready after {timeout} s")
                    wait = 1.0 if remaining is None else min(remaining, 1.0)
                    message = pubsub.get_message(timeout=wait)
                    if message is not None and message.get("type") == "message":
                        meta = self.decode(message["data"])
                    elif message is None:
                        # Also poll now and then: covers a missed publish after a reconnect.
                        meta = self.get_task_meta(task_id)
                return meta
            finally:
                pubsub.close()

    def close(self) -> None:
        self.client.close()
