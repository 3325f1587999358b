"""The canvas on an in-process worker: taskq's embedded SQLite broker and SQL results in a
temporary folder, a threads-pool worker in this process. No servers, so these run anywhere
and fast; the same behaviours run on real brokers in test_canvas.py and, against Celery, in
test_interop_canvas.py."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from taskq import TaskQ
from taskq.canvas import chain, chord, group
from taskq.errors import ConfigurationError
from taskq.result import AsyncResult, GroupResult, result_from_tuple
from taskq.task import Task
from taskq.testing.workers import ThreadWorker

sys.path.insert(0, str(Path(__file__).resolve().parent / "worker"))
from e2e_support import wait_until


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

    _replacing_tasks(app, add, tsum)
    worker = ThreadWorker(app, pool="threads", concurrency=3, hostname="canvaslocal@test")
    worker.start()
    try:
        yield Local(app, add, tsum, fanout)
    finally:
        worker.stop()
        app.close()


RECORDED: list[Any] = []  # what local.record was called with (the worker is in this process)


def _replacing_tasks(app: TaskQ, add: Task, tsum: Task) -> None:
    """Tasks that replace themselves, as in Celery's own integration tests."""

    @app.task(name="local.boom")
    def boom(*args: Any) -> None:
        raise ValueError("boom")

    @app.task(name="local.collect")
    def collect(values: list[Any]) -> list[Any]:
        return list(values)

    @app.task(name="local.record")
    def record(value: Any, tag: str) -> None:
        RECORDED.append([value, tag])

    @app.task(name="local.add_replaced", bind=True)
    def add_replaced(self: Task, x: int, y: int) -> Any:
        return self.replace(add.s(x, y))

    @app.task(name="local.add_to_all", bind=True)
    def add_to_all(self: Task, nums: list[int], val: int) -> Any:
        return self.replace(group(add.s(n, val) for n in nums))

    @app.task(name="local.replace_with_chain", bind=True)
    def replace_with_chain(self: Task, x: int, y: int) -> Any:
        return self.replace(chain(add.s(x, y), add.s(100)))

    @app.task(name="local.replace_with_boom", bind=True)
    def replace_with_boom(self: Task, *args: Any) -> Any:
        return self.replace(chain(add.s(1, 1), boom.s()))

    @app.task(name="local.replace_twice", bind=True)
    def replace_twice(self: Task, x: int, y: int) -> Any:
        return self.replace(add_replaced.s(x, y))

    @app.task(name="local.nesting", bind=True)
    def nesting(self: Task, *args: Any) -> int:
        return self.request.replaced_task_nesting

    @app.task(name="local.replace_with_nesting", bind=True)
    def replace_with_nesting(self: Task, depth: int) -> Any:
        if depth:
            return self.replace(replace_with_nesting.s(depth - 1))
        return self.replace(nesting.s())


def _t(local: Local, name: str) -> Task:
    return local.app.tasks[f"local.{name}"]


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


# -- Task.replace -----------------------------------------------------------------------------

def test_a_replaced_task_ends_with_its_replacements_result(local: Local) -> None:
    """The replacement takes the replaced task's id: the caller's result gets its value;
    a group's results arrive as one list (celery.accumulate), a chain's last value."""
    res = _t(local, "add_replaced").delay(1, 2)
    assert res.get(timeout=30) == 3
    assert _t(local, "add_to_all").delay([1, 2, 3], 10).get(timeout=30) == [11, 12, 13]
    assert _t(local, "replace_with_chain").delay(1, 2).get(timeout=30) == 103
    assert _t(local, "replace_twice").delay(2, 3).get(timeout=30) == 5
    assert _t(local, "replace_with_nesting").delay(2).get(timeout=30) == 3


def test_a_replaced_step_keeps_its_chain_going(local: Local) -> None:
    add, tsum = local.add, local.tsum
    res = chain(add.s(1, 1), _t(local, "add_replaced").s(5), add.s(10)).apply_async()
    assert res.get(timeout=30) == 17
    assert res.parent is not None and res.parent.get(timeout=5) == 7
    res = chain(_t(local, "add_to_all").si([1, 2], 10), tsum.s(),
                _t(local, "replace_with_chain").s(0)).apply_async()
    assert res.get(timeout=30) == 123


def test_replaced_chord_parts_count_once_and_in_their_place(local: Local) -> None:
    header = [_t(local, "add_replaced").s(1, 1), _t(local, "add_to_all").s([1], 1),
              _t(local, "replace_with_chain").s(1, 1), local.add.s(4, 4)]
    res = chord(header, _t(local, "collect").s()).apply_async()
    assert res.get(timeout=30) == [2, [2], 102, 8]
    group_res = group(_t(local, "add_replaced").s(1, 1), local.add.s(2, 2)).apply_async()
    assert group_res.get(timeout=30) == [2, 4]


def test_a_replaced_tasks_callbacks_and_errbacks_follow_the_replacement(local: Local
                                                                        ) -> None:
    record = _t(local, "record")
    RECORDED.clear()
    sig = _t(local, "add_replaced").s(1, 2)
    sig.link(record.s("linked"))
    assert sig.apply_async().get(timeout=30) == 3
    sig = _t(local, "replace_with_boom").s()
    sig.link_error(record.s("errback"))
    res = sig.apply_async()
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=30)
    wait_until(lambda: len(RECORDED) >= 2, 10, "the callback and the errback")
    assert len(RECORDED) == 2 and [3, "linked"] in RECORDED and [res.id, "errback"] in RECORDED


def test_replace_run_eagerly_returns_the_replacements_value(local: Local) -> None:
    assert _t(local, "add_replaced").apply((1, 2)).get() == 3
    assert _t(local, "replace_with_chain").apply((1, 2)).get() == 103
    assert _t(local, "add_to_all").apply(([1, 2], 10)).get() == [11, 12]


def test_replace_refuses_what_cannot_replace_a_task(local: Local) -> None:
    app = local.app
    errors: list[Any] = []

    @app.task(name="local.bad_replace", bind=True)
    def bad_replace(self: Task, how: str) -> Any:
        sig = chain() if how == "empty" else local.add.s(1, 1).set(chord={"task": "x"})
        try:
            return self.replace(sig)
        except ConfigurationError as exc:
            errors.append(str(exc))
            return how

    assert bad_replace.apply(("empty",)).get() == "empty"
    assert bad_replace.apply(("chord",)).get() == "chord"
    assert "empty chain" in errors[0] and "part of a chord" in errors[1]
    with pytest.raises(RuntimeError, match="outside a worker"):
        _t(local, "add_replaced")(1, 2)


def test_calling_a_chain_or_a_group_sends_it_as_on_celery(monkeypatch: Any) -> None:
    """``chain(a, b)()`` and ``group(a, b)()`` are their apply_async(), as Celery's; taskq
    ran them here, as a task signature runs when called, and failed: 'celery.chain' is not
    a task of the app."""
    from taskq.canvas import Signature

    app = TaskQ("calls", broker="memory://", environ={})
    sent: list[tuple[str, Any, Any]] = []

    def apply_async(self: Any, args: Any = None, kwargs: Any = None, **options: Any) -> str:
        sent.append((self.name, tuple(args or ()), options))
        return self.name

    monkeypatch.setattr(Signature, "apply_async", apply_async)
    a, b = Signature("calls.a", app=app), Signature("calls.b", app=app)
    assert chain(a, b)(1) == "celery.chain"
    assert group(a, b)(2, countdown=5) == "celery.group"
    assert sent == [("celery.chain", (1,), {}), ("celery.group", (2,), {"countdown": 5})]
