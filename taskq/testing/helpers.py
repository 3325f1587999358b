"""Assertions for tests of tasks: wait for a state, check that nothing was lost."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from taskq import states

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.result import AsyncResult


def wait_for(result: AsyncResult, state: str | Iterable[str] | None = None,
             timeout: float = 10.0, interval: float = 0.05) -> AsyncResult:
    """Wait until ``result`` is in ``state`` (default: any ready state); fail after ``timeout``.

    The failure says which state the task was in, so a stuck test explains itself.
    """
    wanted = set(states.READY_STATES) if state is None else (
        {state} if isinstance(state, str) else set(state))
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        result._cache = None  # read through, do not trust a cached state
        seen = result.state
        if seen in wanted:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"task {result.task_name or ''}[{result.id}] is {seen} after {timeout} s; "
                f"expected {' or '.join(sorted(wanted))}")
        time.sleep(interval)


def assert_no_lost(app: TaskQ, ids: Iterable[str], timeout: float = 10.0) -> dict[str, str]:
    """Every task id reaches a ready state (SUCCESS, FAILURE, REVOKED, REJECTED) in time.

    Returns ``{id: state}``; raises ``AssertionError`` listing the ids still not done.
    """
    pending = list(ids)
    final: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while pending:
        still: list[str] = []
        for task_id in pending:
            state = app.backend.get_task_meta(task_id)["status"]
            if state in states.READY_STATES:
                final[task_id] = state
            else:
                still.append(task_id)
        pending = still
        if pending and time.monotonic() >= deadline:
            raise AssertionError(
                f"{len(pending)} task(s) never reached a final state within {timeout} s "
                f"(lost?): {', '.join(pending[:10])}")
        if pending:
            time.sleep(0.05)
    return final


def events_of(events: list[dict[str, Any]], task_id: str) -> list[str]:
    """The event types seen for one task, in logical-clock order."""
    mine = [e for e in events if e.get("uuid") == task_id]
    return [e["type"] for e in sorted(mine, key=lambda e: int(e.get("clock") or 0))]
