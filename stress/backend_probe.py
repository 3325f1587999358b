"""For workers without taskq's ledger hooks (``--worker-cmd``): failures from the backend.

A Celery worker marks a task whose child died FAILURE (``WorkerLostError``) in the result
backend, and nothing in the ledger says so. For tasks that started and have not ended, this
probe asks the cell's result backend and writes what it finds into the book as ``lost``
entries (``source: backend``), timed by the backend's ``date_done``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from typing import Any

from stress.ledger import Book, Entry
from stress.spaces import Space
from taskq import TaskQ

__all__ = ["BackendProbe"]


class BackendProbe:
    def __init__(self, space: Space, interval: float = 1.0) -> None:
        self.app = TaskQ("stress-probe", environ=space.env())
        self.interval = interval
        self._next = 0.0

    def poll(self, book: Book, *, force: bool = False) -> int:
        """Ask about every started, unfinished task; return how many ended."""
        now = time.monotonic()
        if not force and now < self._next:
            return 0
        self._next = now + self.interval
        found = 0
        for h in book.published():
            if not h.starts or h.finishes or h.losses:
                continue
            try:
                meta: Any = self.app.backend.get_task_meta(h.task_id)
            except Exception:  # the backend is not what is judged: try again later
                return found
            if meta.get("status") != "FAILURE":
                continue
            result = meta.get("result") or {}
            error = result.get("exc_type") if isinstance(result, dict) else None
            book.add([Entry("lost", h.task_id, 0, self._mono(meta, h.starts[-1]),
                            time.time(), {"requeued": False, "error": error or "?",
                                          "source": "backend"})])
            found += 1
        return found

    @staticmethod
    def _mono(meta: Any, start: Entry) -> float:
        """The backend's ``date_done`` on the monotonic clock (via the start's wall time)."""
        done = meta.get("date_done")
        with contextlib.suppress(TypeError, ValueError):
            when = dt.datetime.fromisoformat(str(done))
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            return start.mono + max(0.0, when.timestamp() - start.wall)
        return time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()
