"""The canvas on an in-process worker: taskq's embedded SQLite broker and SQL results in a
temporary folder, a threads-pool worker in this process. No servers, so these run anywhere
and fast; the same behaviours run on real brokers in test_canvas.py and, against Celery, in
test_interop_canvas.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskq import TaskQ
from taskq.canvas import chain, chord, group
from taskq.result import AsyncResult, GroupResult, result_from_tuple
from taskq.task import Task
from taskq.testing.workers import ThreadWorker


@dataclass
class Local:
    app: TaskQ
    add: Task
    tsum: Task


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Local]:
    app = TaskQ("canvaslocal", broker=f"sqlite:///{tmp_path / 'broker.db'}",
                backend=f"db+sqlite:///{tmp_path / 'results.db'}", environ={})

    @app.task(name="local.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="local.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    worker = ThreadWorker(app, pool="threads", concurrency=3, hostname="canvaslocal@test")
    worker.start()
    try:
        yield Local(app, add, tsum)
    finally:
        worker.stop()
        app.close()


def _nested(add: Task, tsum: Task) -> group:
    """A group holding a chain that ends in a group, a task, and a chord."""
    return group(add.s(1, 1) | group(add.s(2), add.s(3)), add.s(4, 4),
                 chord([add.s(1, 1)], tsum.s()))


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


# -- nested results ---------------------------------------------------------------------------

def test_a_nested_group_gets_nested_lists_and_freezes_to_what_it_runs(local: Local) -> None:
    """Given a group holding a chain that ends in a group, and a chord, freeze() gives the
    results apply_async() then returns (parents included: a chain's first step, a chord's
    header), and get() returns a nested list for the inner group, as Celery does."""
    sig = _nested(local.add, local.tsum)
    frozen = sig.freeze()
    res = sig.apply_async()
    assert res.as_tuple() == frozen.as_tuple()
    inner, _task, body = res.results
    assert isinstance(inner, GroupResult) and isinstance(inner.parent, AsyncResult)
    assert isinstance(body, AsyncResult) and isinstance(body.parent, GroupResult)
    assert res.get(timeout=30) == [[4, 5], 8, 2]
    assert inner.parent.get(timeout=5) == 2 and body.parent.get(timeout=5) == [2]


def test_a_group_of_groups_is_one_flat_group_as_in_celery(local: Local) -> None:
    add = local.add
    res = group(group(add.s(1, 1), add.s(2, 2)), group(add.s(3, 3))).apply_async()
    assert res.get(timeout=30) == [2, 4, 6]


def test_a_nested_group_result_saves_restores_and_round_trips_as_a_tuple(local: Local
                                                                         ) -> None:
    res = _nested(local.add, local.tsum).apply_async()
    res.save()
    back = GroupResult.restore(res.id, app=local.app)
    assert back is not None and back.as_tuple() == res.as_tuple()
    assert back.get(timeout=30) == [[4, 5], 8, 2]
    assert result_from_tuple(_json(res.as_tuple()), local.app.backend).as_tuple() == \
        res.as_tuple()
    # Celery's tuples may name a result by its id alone.
    plain = result_from_tuple([res.results[1].id, None], local.app.backend)
    assert isinstance(plain, AsyncResult) and plain.get(timeout=5) == 8
    res.delete()
    assert GroupResult.restore(res.id, app=local.app) is None


def test_a_chain_ending_in_a_nested_group_returns_its_group_result(local: Local) -> None:
    add = local.add
    res = chain(add.s(1, 1), group(add.s(10), add.s(20))).apply_async()
    assert isinstance(res, GroupResult) and res.get(timeout=30) == [12, 22]
