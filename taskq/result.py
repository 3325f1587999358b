"""Handles on task results: ``AsyncResult`` (stored by a worker) and ``EagerResult`` (local)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskq import states

if TYPE_CHECKING:
    from taskq.backends.base import Backend, Meta


class AsyncResult:
    """The result of a task run by a worker, read through the app's result backend."""

    def __init__(self, id: str, backend: Backend, task_name: str | None = None) -> None:
        self.id = id
        self.backend = backend
        self.task_name = task_name
        self._cache: Meta | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def _meta(self) -> Meta:
        if self._cache is not None:
            return self._cache
        meta = self.backend.get_task_meta(self.id)
        if meta["status"] in states.READY_STATES:
            self._cache = meta
        return meta

    def get(
        self, timeout: float | None = None, propagate: bool = True, interval: float = 0.5
    ) -> Any:
        """Wait for the task to finish and return its value (or raise its exception).

        ``timeout`` in seconds raises ``taskq.errors.TimeoutError`` when it runs out;
        ``propagate=False`` returns a failed task's exception instead of raising it.
        """
        if self._cache is None:
            self._cache = self.backend.wait_for(self.id, timeout=timeout, interval=interval)
        meta = self._cache
        value = self.backend.result_from_meta(meta)
        if propagate and meta["status"] in states.PROPAGATE_STATES and isinstance(
            value, BaseException
        ):
            raise value
        return value

    wait = get

    @property
    def state(self) -> str:
        return str(self._meta()["status"])

    status = state

    @property
    def result(self) -> Any:
        """The return value, or the exception of a failed task (without raising it)."""
        return self.backend.result_from_meta(self._meta())

    info = result

    @property
    def traceback(self) -> str | None:
        tb = self._meta().get("traceback")
        return str(tb) if tb else None

    @property
    def date_done(self) -> str | None:
        return self._meta().get("date_done")

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def forget(self) -> None:
        self._cache = None
        self.backend.forget(self.id)


class EagerResult:
    """The result of ``Task.apply()``: already known, nothing to wait for."""

    def __init__(
        self, id: str, value: Any, state: str, traceback: str | None = None,
        task_name: str | None = None,
    ) -> None:
        self.id = id
        self._value = value
        self._state = state
        self._traceback = traceback
        self.task_name = task_name

    def __repr__(self) -> str:
        return f"<EagerResult {self.id} {self._state}>"

    def get(self, timeout: float | None = None, propagate: bool = True, **_: Any) -> Any:
        if propagate and self._state in states.PROPAGATE_STATES and isinstance(
            self._value, BaseException
        ):
            raise self._value
        return self._value

    wait = get

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def result(self) -> Any:
        return self._value

    info = result

    @property
    def traceback(self) -> str | None:
        return self._traceback

    def ready(self) -> bool:
        return True

    def successful(self) -> bool:
        return self._state == states.SUCCESS

    def failed(self) -> bool:
        return self._state == states.FAILURE

    def forget(self) -> None:
        return None
