"""Handles on task results: ``AsyncResult`` (stored by a worker), ``EagerResult`` (local),
``ResultSet``/``GroupResult`` (many at once, e.g. a group or a chord's header)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from taskq import states
from taskq.errors import TimeoutError

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.backends.base import Backend, Meta


class AsyncResult:
    """The result of a task run by a worker, read through the app's result backend."""

    def __init__(self, id: str, backend: Backend, task_name: str | None = None,
                 parent: AsyncResult | GroupResult | None = None) -> None:
        self.id = id
        self.backend = backend
        self.task_name = task_name
        self.parent = parent
        """The result before this one in a chain (a chord body's: its header GroupResult)."""
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
        if propagate and meta["status"] in states.PROPAGATE_STATES:
            self._raise_parent_failure()
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

    # Stored with ``result_extended`` (None without it), as Celery's result has them.
    @property
    def name(self) -> str | None:
        return self._meta().get("name")

    @property
    def args(self) -> list[Any] | None:
        return self._meta().get("args")

    @property
    def kwargs(self) -> dict[str, Any] | None:
        return self._meta().get("kwargs")

    @property
    def worker(self) -> str | None:
        return self._meta().get("worker")

    @property
    def retries(self) -> int | None:
        return self._meta().get("retries")

    @property
    def queue(self) -> str | None:
        return self._meta().get("queue")

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    def forget(self) -> None:
        self._cache = None
        self.backend.forget(self.id)

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        self.backend.app.control.revoke(self.id, terminate=terminate, signal=signal)

    def _raise_parent_failure(self) -> None:
        """A chain failed: raise the earliest step's own error (as Celery's ``get`` does)."""
        node = self.parent
        failed: AsyncResult | None = None
        while isinstance(node, AsyncResult):
            if node.state in states.PROPAGATE_STATES:
                failed = node
            node = node.parent
        if failed is not None:
            failed.get(propagate=True)

    def as_tuple(self) -> tuple[Any, ...]:
        """Celery's nested-tuple form (``GroupResult.save`` stores it)."""
        return ((self.id, self.parent.as_tuple() if self.parent is not None else None), None)

    @property
    def children(self) -> list[AsyncResult | GroupResult]:
        """The results of the tasks this one sent while it ran (subtasks, a group, a chain's
        first step; for a chain's step, the next step), as the worker stored them."""
        return [result_from_tuple(child, self.backend, self.backend.app)
                for child in self._meta().get("children") or []]

    def iterdeps(self, intermediate: bool = False
                 ) -> Iterator[tuple[Any, AsyncResult | GroupResult]]:
        return _iterdeps(self, intermediate)

    def collect(self, intermediate: bool = False, **get_options: Any
                ) -> Iterator[tuple[AsyncResult | GroupResult, Any]]:
        """``(result, value)`` for this result and, breadth first, every child's (waiting
        for each with ``get(**get_options)``), as Celery's ``collect``."""
        for _, node in self.iterdeps(intermediate=intermediate):
            yield node, node.get(**get_options)

    def get_leaf(self) -> Any:
        """The value of the last result ``iterdeps`` reaches."""
        value = None
        for _, node in self.iterdeps():
            value = node.get()
        return value


def _iterdeps(root: AsyncResult | GroupResult, intermediate: bool
              ) -> Iterator[tuple[Any, AsyncResult | GroupResult]]:
    """``(parent, node)`` breadth first from ``root``; a node's children are known only once
    it is ready, so an unready one raises ``IncompleteStream`` unless ``intermediate``."""
    from collections import deque

    from taskq.errors import IncompleteStream

    pending: deque[tuple[Any, AsyncResult | GroupResult]] = deque([(None, root)])
    while pending:
        parent, node = pending.popleft()
        yield parent, node
        if node.ready():
            pending.extend((node, child) for child in node.children)
        elif not intermediate:
            raise IncompleteStream(f"result {node.id} is not ready: its children are unknown")


class ResultSet:
    """Several results waited on together."""

    def __init__(self, results: Iterable[AsyncResult | GroupResult],
                 app: TaskQ | None = None) -> None:
        self.results = list(results)
        self.app = app

    def __iter__(self) -> Iterator[AsyncResult | GroupResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult | GroupResult:
        return self.results[index]

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        return any(r.failed() for r in self.results)

    def waiting(self) -> bool:
        return not self.ready()

    def completed_count(self) -> int:
        """How many finished successfully."""
        return sum(1 for r in self.results if r.successful())

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        ids = [r.id for r in _leaves(self.results)]
        if ids:
            backend = next(iter(_leaves(self.results))).backend
            backend.app.control.revoke(ids, terminate=terminate, signal=signal)

    def forget(self) -> None:
        for r in self.results:
            r.forget()

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float = 0.5) -> list[Any]:
        """Every result's value, in order; ``timeout`` is for all of them together."""
        return self.join(timeout=timeout, propagate=propagate, interval=interval)

    def join(self, timeout: float | None = None, propagate: bool = True,
             interval: float = 0.5) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in self.results:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"results not ready after {timeout} s")
            values.append(r.get(timeout=remaining, propagate=propagate, interval=interval))
        return values


def _leaves(results: Iterable[AsyncResult | GroupResult]) -> list[AsyncResult]:
    out: list[AsyncResult] = []
    for r in results:
        if isinstance(r, GroupResult):
            out.extend(_leaves(r.results))
        else:
            out.append(r)
    return out


class GroupResult(ResultSet):
    """The results of a group (or a chord's header), with the group's id."""

    def __init__(self, id: str, results: Iterable[AsyncResult | GroupResult],
                 app: TaskQ | None = None,
                 parent: AsyncResult | GroupResult | None = None) -> None:
        super().__init__(results, app)
        self.id = id
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{', '.join(r.id for r in self.results)}]>"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, GroupResult) and other.id == self.id
                and other.results == self.results)

    def __hash__(self) -> int:
        return hash(self.id)

    def as_tuple(self) -> tuple[Any, ...]:
        return ((self.id, self.parent.as_tuple() if self.parent is not None else None),
                [r.as_tuple() for r in self.results])

    @property
    def children(self) -> list[AsyncResult | GroupResult]:
        return list(self.results)

    def iterdeps(self, intermediate: bool = False
                 ) -> Iterator[tuple[Any, AsyncResult | GroupResult]]:
        return _iterdeps(self, intermediate)

    collect = AsyncResult.collect
    get_leaf = AsyncResult.get_leaf

    def _backend(self, backend: Backend | None) -> Backend:
        if backend is not None:
            return backend
        if self.app is None:
            raise TypeError("this GroupResult has no app: pass backend=")
        return self.app.backend

    def save(self, backend: Backend | None = None) -> GroupResult:
        """Store the group's member ids (as Celery does), for ``GroupResult.restore``."""
        self._backend(backend).save_group(self.id, self.as_tuple())
        return self

    def delete(self, backend: Backend | None = None) -> None:
        self._backend(backend).delete_group(self.id)

    @classmethod
    def restore(cls, id: str, app: TaskQ | None = None,
                backend: Backend | None = None) -> GroupResult | None:
        """The group saved under ``id``, or ``None``."""
        if backend is None:
            if app is None:
                raise TypeError("GroupResult.restore needs app= or backend=")
            backend = app.backend
        saved = backend.restore_group(id)
        if saved is None:
            return None
        result = result_from_tuple(saved, backend, app)
        return result if isinstance(result, GroupResult) else None


def result_from_tuple(value: Any, backend: Backend,
                      app: TaskQ | None = None) -> AsyncResult | GroupResult:
    """The result handle for Celery's tuple form (``as_tuple``), nested groups included."""
    head, members = value
    rid, parent = head if isinstance(head, list | tuple) else (head, None)
    parent_result = result_from_tuple(parent, backend, app) if parent else None
    if members is not None:
        return GroupResult(rid, [result_from_tuple(m, backend, app) for m in members],
                           app=app or backend.app, parent=parent_result)
    return AsyncResult(rid, backend, parent=parent_result)


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
