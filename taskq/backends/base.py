"""The result backend interface and the parts every backend shares.

A task's stored record ("meta") has Celery's layout so that taskq and Celery read each
other's results::

    {"task_id": ..., "status": "SUCCESS", "result": <value or wire exception>,
     "traceback": <str or None>, "children": [], "date_done": <ISO 8601 or None>}
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kombu.serialization import dumps, loads, prepare_accept_content, registry

from taskq import states
from taskq.errors import ContentDisallowed, ResultBackendError, TimeoutError
from taskq.exc_wire import exception_from_wire, exception_to_wire, is_wire_exception

if TYPE_CHECKING:
    from taskq.app import TaskQ

Meta = dict[str, Any]


def pending_meta(task_id: str) -> Meta:
    return {"task_id": task_id, "status": states.PENDING, "result": None, "traceback": None,
            "children": [], "date_done": None}


def extended_meta(request: Any) -> dict[str, Any]:
    """What ``result_extended`` adds to a stored result, in Celery's fields: the task's name,
    arguments, the worker that ran it, its retries and the routing key it came with."""
    delivery_info = getattr(request, "delivery_info", None) or {}
    args = getattr(request, "args", None)
    kwargs = getattr(request, "kwargs", None)
    return {
        "name": getattr(request, "task", None),
        "args": list(args) if args is not None else None,
        "kwargs": dict(kwargs) if kwargs is not None else None,
        "worker": getattr(request, "hostname", None),
        "retries": getattr(request, "retries", None),
        "queue": delivery_info.get("routing_key"),
    }


def children_of(request: Any) -> list[Any]:
    """The ``children`` of a task's record: the results of the tasks it sent, in Celery's
    tuple form (``AsyncResult.as_tuple``), which Celery's ``result.children`` reads."""
    return [child.as_tuple() for child in getattr(request, "children", None) or ()]


@dataclass(frozen=True)
class ChordJoin:
    """What the last header part of a chord gets: every part's ``(task id, state, result)``
    in header order, and the token of its claim to fire the body (``Backend.chord_done``)."""

    group_id: str
    token: str
    parts: tuple[tuple[str, str, Any], ...]


def claim_token(task_id: str, group_index: int | None) -> str:
    """The token a chord part claims the body with: its own id and index, so that when the
    child that counted it dies before telling whether it took the claim, the worker can give
    that claim up (only if this part still holds it) and count the part again."""
    return f"{task_id}:{'' if group_index is None else group_index}"


def _is_result_object(value: Any) -> bool:
    """A taskq or Celery result (AsyncResult, GroupResult, ...), which no serializer takes."""
    module = type(value).__module__
    return callable(getattr(value, "as_tuple", None)) and (
        module == "taskq.result" or module.startswith("celery.result"))


class Backend:
    """Stores and fetches task results. Subclasses implement ``_set``, ``_get``, ``_delete``."""

    persistent = True
    supports_wait = False
    supports_chords = False

    def __init__(self, app: TaskQ) -> None:
        self.app = app
        self.serializer: str = app.conf.result_serializer
        accept = app.conf.result_accept_content or app.conf.accept_content
        self.accept: set[str] = prepare_accept_content(list(accept))
        self.content_type: str = registry.name_to_type[self.serializer]

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, meta: Meta) -> bytes:
        _content_type, _encoding, payload = dumps(meta, serializer=self.serializer)
        return payload if isinstance(payload, bytes) else payload.encode("utf-8")

    def decode(self, payload: bytes | str) -> Meta:
        try:
            meta = loads(payload, self.content_type, "utf-8", accept=self.accept)
        except Exception as exc:
            if type(exc).__name__ == "ContentDisallowed":
                raise ContentDisallowed(str(exc)) from None
            raise ResultBackendError(f"cannot decode a stored result: {exc}") from None
        if not isinstance(meta, Mapping) or "status" not in meta:
            raise ResultBackendError(f"stored result is not a task record: {meta!r:.200}")
        return dict(meta)

    def prepare_result(self, state: str, result: Any) -> Any:
        if state in states.EXCEPTION_STATES and isinstance(result, BaseException):
            return exception_to_wire(result)
        if _is_result_object(result):
            # A task that returns a result (of a chain it sent, say) stores what Celery
            # stores for it: the result's as_tuple(), its ids and its parents'.
            return result.as_tuple()
        return result

    def result_from_meta(self, meta: Mapping[str, Any]) -> Any:
        result = meta.get("result")
        if meta.get("status") in states.EXCEPTION_STATES and is_wire_exception(result):
            assert isinstance(result, Mapping)
            return exception_from_wire(result)
        return result

    # -- storing ------------------------------------------------------------------------------
    def store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
    ) -> Meta:
        meta: Meta = {
            "status": state,
            "result": self.prepare_result(state, result),
            "traceback": traceback,
            "children": children_of(request),
            "date_done": dt.datetime.now(dt.UTC).isoformat()
            if state in states.READY_STATES else None,
            "task_id": task_id,
        }
        if request is not None and getattr(request, "group", None):
            meta["group_id"] = request.group
        if request is not None and getattr(request, "parent_id", None):
            meta["parent_id"] = request.parent_id
        if request is not None and self.app.conf.result_extended:
            meta.update(extended_meta(request))
        self._set(task_id, meta, state, request)
        return meta

    def mark_as_started(self, task_id: str, **info: Any) -> Meta:
        return self.store_result(task_id, info, states.STARTED)

    def mark_as_done(self, task_id: str, result: Any, request: Any = None) -> Meta:
        return self.store_result(task_id, result, states.SUCCESS, request=request)

    def mark_as_failure(
        self, task_id: str, exc: BaseException, traceback: str | None = None, request: Any = None
    ) -> Meta:
        return self.store_result(task_id, exc, states.FAILURE, traceback, request)

    def mark_as_retry(
        self, task_id: str, exc: BaseException, traceback: str | None = None, request: Any = None
    ) -> Meta:
        return self.store_result(task_id, exc, states.RETRY, traceback, request)

    def mark_as_revoked(self, task_id: str, reason: str = "revoked", request: Any = None) -> Meta:
        from taskq.errors import TaskRevokedError

        return self.store_result(task_id, TaskRevokedError(reason), states.REVOKED, None, request)

    def mark_as_rejected(self, task_id: str, reason: str | BaseException,
                         request: Any = None) -> Meta:
        """A task that rejected its message without requeue never runs again: a terminal
        FAILURE with the ``Reject`` it raised (``reason``: that exception, or its text), as
        Celery 5.7 stores it, so that every client's ``get()`` ends."""
        from taskq.errors import Reject

        exc = reason if isinstance(reason, BaseException) else Reject(reason)
        return self.store_result(task_id, exc, states.FAILURE, None, request)

    # -- reading ------------------------------------------------------------------------------
    def get_task_meta(self, task_id: str) -> Meta:
        meta = self._get(task_id)
        return meta if meta is not None else pending_meta(task_id)

    def wait_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5
    ) -> Meta:
        """Block until the task is in a ready state; ``TimeoutError`` after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            meta = self.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"task {task_id} not ready after {timeout} s")
            pause = interval if deadline is None else min(interval, deadline - time.monotonic())
            time.sleep(max(pause, 0.0))

    def forget(self, task_id: str) -> None:
        self._delete(task_id)

    def on_task_call(self, task_id: str) -> str | None:
        """Called before publishing; returns the ``reply_to`` queue name, if the backend has one."""
        return None

    def close(self) -> None:
        """Release connections (called on app close and in a fresh child)."""

    def limit_blocking(self, seconds: float) -> None:
        """In this process, let no call wait longer than ``seconds`` for a lock the backend
        does not own (the worker's main process calls it; its children keep the defaults)."""

    # -- chords (taskq.chord counts the header parts; no polling task) ------------------------
    def ensure_chords_allowed(self) -> None:
        if not self.supports_chords:
            raise ResultBackendError(
                f"chords need a result backend that counts the header's results (redis:// or "
                f"db+...); result_backend={self.app.conf.result_backend or 'none'!r} cannot. "
                "Set result_backend to a Redis or SQL URL, or send the header as a group and "
                "call the body yourself"
            )

    def set_chord_size(self, group_id: str, size: int) -> None:
        """Client side, before the header is sent: how many parts the chord waits for."""
        self.ensure_chords_allowed()

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None,
                          state: str, result: Any) -> ChordJoin | None:
        """Record one header part (once per ``task_id``/``group_index``, however often it
        runs); the call that completes the chord and wins the claim gets a ``ChordJoin``."""
        self.ensure_chords_allowed()
        return None

    def chord_release(self, group_id: str, token: str) -> None:
        """Give up the claim ``token`` to fire the body of chord ``group_id`` (its holder died
        before it sent the body), so that the next count of a part takes it."""

    def chord_done(self, join: ChordJoin) -> None:
        """The body was sent (or failed): drop the chord's counters; later duplicates of a
        part are ignored."""

    def save_group(self, group_id: str, value: Any) -> None:
        raise ResultBackendError(f"{type(self).__name__} cannot save groups")

    def restore_group(self, group_id: str) -> Any:
        raise ResultBackendError(f"{type(self).__name__} cannot restore groups")

    def delete_group(self, group_id: str) -> None:
        raise ResultBackendError(f"{type(self).__name__} cannot delete groups")

    # -- runs that must happen once ------------------------------------------------------------
    def claim_once(self, key: str) -> bool:
        """Take ``key`` for good (until results expire); False if it was taken already. The
        worker takes one before it runs an early-ack task that may have been sent twice (see
        ``trace.ONCE_HEADER``). A backend that cannot record it answers True: runs it."""
        return True

    def release_once(self, key: str) -> None:
        """Give ``key`` back (the task asked to be delivered again: ``Reject(requeue=True)``)."""

    # -- storage primitives -------------------------------------------------------------------
    def _set(self, task_id: str, meta: Meta, state: str, request: Any) -> None:
        raise NotImplementedError

    def _get(self, task_id: str) -> Meta | None:
        raise NotImplementedError

    def _delete(self, task_id: str) -> None:
        raise NotImplementedError


class DisabledBackend(Backend):
    """No result backend: storing is a no-op and asking for a result is an error."""

    persistent = False

    def _set(self, task_id: str, meta: Meta, state: str, request: Any) -> None:
        return None

    def _get(self, task_id: str) -> Meta | None:
        raise ResultBackendError(
            "no result backend is configured; set result_backend (for example "
            "'redis://127.0.0.1:6379/0') to read task results"
        )

    def _delete(self, task_id: str) -> None:
        return None
