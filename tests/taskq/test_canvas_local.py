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
    fanout: Task


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

    @app.task(name="local.fanout")
    def fanout(n: int) -> int:
        """Sends a task, a group and a chain from inside itself."""
        add.delay(n, n)
        group(add.s(i, i) for i in range(n)).delay()
        chain(add.s(1, 1), add.s(10)).delay()
        add.apply_async((0, 0), add_to_parent=False)  # not a child
        return n

    worker = ThreadWorker(app, pool="threads", concurrency=3, hostname="canvaslocal@test")
    worker.start()
    try:
        yield Local(app, add, tsum, fanout)
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


# -- children ---------------------------------------------------------------------------------

def test_tasks_sent_from_a_task_are_its_children(local: Local) -> None:
    """Given a task that sends a task, a group and a chain, its stored children are their
    results as Celery records them (the task; the GroupResult; the chain's first step, whose
    own child is the next step the worker sent), and collect() walks them all."""
    res = local.fanout.delay(2)
    assert res.get(timeout=30) == 2
    task, grp, first = res.children
    assert isinstance(task, AsyncResult) and task.get(timeout=10) == 4
    assert isinstance(grp, GroupResult) and grp.get(timeout=10) == [0, 2]
    assert isinstance(first, AsyncResult) and first.get(timeout=10) == 2
    (second,) = first.children
    assert second.get(timeout=10) == 12 and second.children == []
    assert [value for _, value in res.collect(timeout=10)] == [2, 4, [0, 2], 2, 0, 2, 12]
    leaves = [value for r, value in res.collect(timeout=10) if not r.children]
    assert leaves == [4, 0, 2, 12]


def test_a_chain_step_records_the_next_step_as_its_child(local: Local) -> None:
    add = local.add
    res = chain(add.s(1, 2), add.s(10), add.s(100)).apply_async()
    assert res.get(timeout=30) == 113
    assert res.parent is not None and res.parent.children == [res]
    assert res.parent.parent is not None and res.parent.parent.children == [res.parent]
    assert res.children == []
