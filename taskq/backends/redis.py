"""Redis result backend, compatible with Celery's.

Each record is stored at ``celery-task-meta-<task_id>`` (prefixed by ``global_keyprefix``
when set, followed by '_' unless it ends in one of ``:_-.``, as Celery 5.5+ writes it) with
``result_expires`` as its TTL, and the same payload is published on a channel of the same
name: Celery's ``AsyncResult.get()`` waits on that channel, and so does taskq's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from taskq import states
from taskq.backends.base import Backend, ChordJoin, Meta, claim_token
from taskq.errors import ResultBackendError, TaskqError, TimeoutError
from taskq.urls import safe_url

if TYPE_CHECKING:
    from taskq.app import TaskQ

T = TypeVar("T")

KEY_PREFIX = "celery-task-meta-"
GROUP_PREFIX = "celery-taskset-meta-"

# Chords use Celery 5.7's keys, so Celery and taskq workers can share one chord. For a
# group id G (under GROUP_PREFIX): G.j the parts' results (a sorted set scored by
# group_index, or a list when result_chord_ordered is off), G.t extra parts added while it
# runs, G.s the size the client set, G.d the parts seen ("<task id>:<index>"), G.c the claim
# to fire the body ('done' once fired).
#
# One part, atomically: record it unless already seen (a redelivered part counts once), and
# if that makes the count reach the size, try to take the claim. Returns
# {count, extra, size (0: not set), claimed}; count -1 when the chord already fired.
_PART_RETURN = """
local results, extra_key, size_key, seen, group_key, claim =
    KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local task_id, value, ordered, index = ARGV[1], ARGV[2], ARGV[3] == '1', ARGV[4]
local expires, claim_for, token = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
if redis.call('GET', claim) == 'done' then
    return {-1, 0, 0, 0}
end
if redis.call('SADD', seen, task_id .. ':' .. index) == 1 then
    if ordered then
        redis.call('ZADD', results, index, value)
    else
        redis.call('RPUSH', results, value)
    end
end
local count
if ordered then
    count = redis.call('ZCARD', results)
else
    count = redis.call('LLEN', results)
end
if expires > 0 then
    for _, key in ipairs({results, extra_key, size_key, seen, group_key}) do
        redis.call('EXPIRE', key, expires)
    end
end
local extra = tonumber(redis.call('GET', extra_key) or '0')
local size = tonumber(redis.call('GET', size_key) or '0')
local claimed = 0
if size > 0 and count == size + extra then
    if redis.call('SET', claim, token, 'NX', 'EX', claim_for) then
        claimed = 1
    end
end
return {count, extra, size, claimed}
"""

# The body was sent: if the claim is still ours, drop the counters and mark the chord done.
_CHORD_DONE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
    redis.call('SET', KEYS[1], 'done', 'EX', tonumber(ARGV[2]))
    return 1
end
return 0
"""
# A claimer died before it sent the body: give its claim up (only if it still holds it).
_CHORD_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
CHORD_CLAIM_SECONDS = 10  # a claimer that dies before sending the body frees it this soon
CHORD_DONE_SECONDS = 300  # how long late duplicates of a fired chord's parts are ignored


class RedisBackend(Backend):
    supports_wait = True
    supports_chords = True

    def __init__(
        self,
        app: TaskQ,
        url: str,
        *,
        global_keyprefix: str = "",
        socket_timeout: float = 10.0,
        socket_connect_timeout: float = 4.0,
        health_check_interval: float = 25.0,
        result_chord_ordered: bool = True,
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
        # Celery (5.5+) separates a prefix that does not end in a separator with '_', for
        # task and group keys alike. Celery 5.4 always added '_', hence taskq[celery]'s floor.
        if global_keyprefix and global_keyprefix[-1] not in ":_-.":
            global_keyprefix += "_"
        self.keyprefix = global_keyprefix
        self.group_keyprefix = f"{global_keyprefix}{GROUP_PREFIX}"
        self.chord_ordered = result_chord_ordered
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

    # -- chords and groups ---------------------------------------------------------------------
    def group_key(self, group_id: str, suffix: str = "") -> str:
        return f"{self.group_keyprefix}{group_id}{suffix}"

    def _chord_keys(self, group_id: str) -> dict[str, str]:
        return {s: self.group_key(group_id, s) for s in (".j", ".t", ".s", ".d", ".c")}

    def set_chord_size(self, group_id: str, size: int) -> None:
        keys = self._chord_keys(group_id)
        with self._errors("setting a chord's size"):
            pipe = self.client.pipeline()
            pipe.delete(keys[".c"])  # a frozen chord applied again is a new run
            pipe.set(keys[".s"], int(size), ex=max(int(self.expires), 1) if self.expires
                     else None)
            pipe.execute()

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None,
                          state: str, result: Any) -> ChordJoin | None:
        keys = self._chord_keys(group_id)
        token = claim_token(task_id, group_index)
        part = self.encode([1, task_id, state, result])  # type: ignore[arg-type]
        index = "+inf" if group_index is None else str(group_index)
        with self._errors("counting a chord part"):
            count, _extra, size, claimed = self.client.eval(
                _PART_RETURN, 6, keys[".j"], keys[".t"], keys[".s"], keys[".d"],
                self.group_key(group_id), keys[".c"],
                task_id, part, "1" if self.chord_ordered else "0", index,
                int(self.expires or 0), CHORD_CLAIM_SECONDS, token)
            if count == -1 or not size or not claimed:
                return None
            if self.chord_ordered:
                raw = self.client.zrange(keys[".j"], 0, -1)
            else:
                raw = self.client.lrange(keys[".j"], 0, -1)
        parts = []
        for item in raw:
            _version, tid, part_state, value = self.decode_part(cast(bytes, item))
            parts.append((str(tid), str(part_state), value))
        return ChordJoin(group_id, token, tuple(parts))

    def decode_part(self, payload: bytes) -> list[Any]:
        from kombu.serialization import loads

        value = loads(payload, self.content_type, "utf-8", accept=self.accept)
        if not isinstance(value, list | tuple) or len(value) != 4:
            raise TaskqError(f"a chord part is not [1, id, state, result]: {value!r:.200}")
        return list(value)

    def chord_release(self, group_id: str, token: str) -> None:
        with self._errors("giving up a chord's claim"):
            self.client.eval(_CHORD_RELEASE, 1, self._chord_keys(group_id)[".c"], token)

    def chord_done(self, join: ChordJoin) -> None:
        keys = self._chord_keys(join.group_id)
        with self._errors("finishing a chord"):
            self.client.eval(_CHORD_DONE, 5, keys[".c"], keys[".j"], keys[".t"], keys[".s"],
                             keys[".d"], join.token, CHORD_DONE_SECONDS)

    def once_key(self, key: str) -> str:
        return f"{self.keyprefix}taskq-once-{key}"

    def claim_once(self, key: str) -> bool:
        ex = max(int(self.expires), 1) if self.expires else None
        with self._errors("taking a run-once key"):
            return bool(self.client.set(self.once_key(key), 1, nx=True, ex=ex))

    def release_once(self, key: str) -> None:
        with self._errors("giving back a run-once key"):
            self.client.delete(self.once_key(key))

    def save_group(self, group_id: str, value: Any) -> None:
        payload = self.encode({"result": value})
        ex = max(int(self.expires), 1) if self.expires else None
        self._call("saving a group", lambda: self.client.set(self.group_key(group_id),
                                                             payload, ex=ex))

    def restore_group(self, group_id: str) -> Any:
        payload = self._call("restoring a group",
                             lambda: self.client.get(self.group_key(group_id)))
        if payload is None:
            return None
        from kombu.serialization import loads

        meta = loads(payload, self.content_type, "utf-8", accept=self.accept)
        return meta.get("result") if isinstance(meta, dict) else None

    def delete_group(self, group_id: str) -> None:
        self._call("deleting a group", lambda: self.client.delete(self.group_key(group_id)))

    def close(self) -> None:
        self.client.close()
