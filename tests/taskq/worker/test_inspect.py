"""The pool commands of remote control (pool_grow, pool_shrink, pool_restart, autoscale) and
the pool part of ``stats``, against a stand-in worker: they ask the pool what it declares."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from taskq import TaskQ
from taskq.pool import Pool, pool_for
from taskq.pool.threads import ThreadPool
from taskq.worker import inspect

app = TaskQ("inspecttest", broker="memory://", worker_pool_restarts=True)
noop: Any = lambda *args: None  # noqa: E731


class ResizingPool(ThreadPool):
    """A pool that declares resize, restart and autoscale, and records the calls."""

    kind = "resizing"
    supports_resize = supports_restart = supports_autoscale = True
    max_tasks = 7

    def __init__(self) -> None:
        super().__init__(app, concurrency=2, on_started=noop, on_done=noop, on_lost=noop,
                         on_unstarted=noop)
        self.calls: list[tuple[Any, ...]] = []

    def grow(self, n: int = 1) -> None:
        self.calls.append(("grow", n))
        self.concurrency += n

    def shrink(self, n: int = 1) -> None:
        self.calls.append(("shrink", n))
        self.concurrency -= n

    def restart(self, modules: Sequence[str] = (), reload: bool = False) -> None:
        self.calls.append(("restart", list(modules), reload))

    def autoscale(self, max_size: int, min_size: int) -> None:
        self.calls.append(("autoscale", max_size, min_size))


def stand_in(pool: Pool) -> Any:
    return SimpleNamespace(pool=pool, pool_kind=pool.kind, pool_size=pool.size, app=app)


def test_pool_commands_call_the_declared_methods():
    pool = ResizingPool()
    worker = stand_in(pool)
    assert inspect.pool_grow(worker, n="2") == {"ok": "pool_grow(2,) done; pool size is 4"}
    assert inspect.pool_shrink(worker, n=1)["ok"].endswith("pool size is 3")
    inspect.pool_restart(worker, modules=["appmod"], reload=1)
    inspect.autoscale(worker, max="5", min="1")
    assert pool.calls == [("grow", 2), ("shrink", 1), ("restart", ["appmod"], True),
                          ("autoscale", 5, 1)]


def test_a_pool_without_the_feature_answers_an_error_and_is_not_called():
    pool = pool_for("solo")(app, concurrency=1, on_started=noop, on_done=noop, on_lost=noop,
                            on_unstarted=noop)
    worker = stand_in(pool)
    for command, kwargs in [("pool_grow", {}), ("pool_shrink", {}), ("pool_restart", {}),
                            ("autoscale", {"max": 2, "min": 1})]:
        reply = getattr(inspect, command)(worker, **kwargs)
        assert reply == {"error": f"the solo pool does not support {command}"}


def test_pool_restart_is_refused_unless_worker_pool_restarts_is_on_as_on_celery():
    pool = ResizingPool()
    worker = stand_in(pool)
    worker.app = TaskQ("inspecttest", broker="memory://")  # worker_pool_restarts: default
    reply = inspect.pool_restart(worker, modules=["appmod"])
    assert reply["error"].startswith("Pool restarts not enabled: set worker_pool_restarts")
    assert pool.calls == []


def test_stats_reads_max_tasks_from_the_pool_then_the_setting():
    worker = stand_in(ResizingPool())
    assert inspect._pool_stats(worker)["max-tasks-per-child"] == 7
    solo = pool_for("solo")(app, concurrency=1, on_started=noop, on_done=noop, on_lost=noop,
                            on_unstarted=noop)
    assert inspect._pool_stats(stand_in(solo))["max-tasks-per-child"] == "N/A"


def test_registered_leaves_out_the_builtin_tasks_unless_asked_as_celery_does():
    """Every app has celery.accumulate (Task.replace sends it after a group) and celery.map,
    celery.starmap and celery.chunks (task.map, task.starmap, task.chunks); `inspect
    registered` names them only with builtins=True, as Celery's worker answers."""
    own = TaskQ("registeredtest", broker="memory://", environ={})
    own.task(name="registeredtest.add")(lambda x, y: x + y)
    worker = SimpleNamespace(app=own)
    assert inspect.registered(worker) == ["registeredtest.add"]
    assert inspect.registered(worker, builtins=True) == [
        "celery.accumulate", "celery.chunks", "celery.map", "celery.starmap",
        "registeredtest.add"]


def test_registered_with_taskinfoitems_answers_in_celerys_form():
    own = TaskQ("infotest", broker="memory://", environ={})
    own.task(name="infotest.add", rate_limit="10/s")(lambda x, y: x + y)
    own.task(name="infotest.sub", routing_key="rk")(lambda x, y: x - y)
    worker = SimpleNamespace(app=own)
    # Celery's default items: exchange, routing_key, rate_limit (those the task has)
    assert inspect.registered(worker) == ["infotest.add [rate_limit=10/s]",
                                          "infotest.sub [routing_key=rk]"]
    assert inspect.registered(worker, taskinfoitems=["name"]) == [
        "infotest.add [name=infotest.add]", "infotest.sub [name=infotest.sub]"]


def test_conf_and_report_answer_with_a_celery_apps_settings_and_bug_report():
    celery = pytest.importorskip("celery")
    from taskq.celery_app import from_celery

    capp = celery.Celery("confrep", broker="memory://", set_as_current=False)
    capp.conf.worker_hijack_root_logger = False
    app = from_celery(capp)
    worker = SimpleNamespace(app=app, hostname="n@h", pool_kind="solo", pool_size=lambda: 1,
                             dispatched={}, ready=[], acking={}, held={})
    conf = inspect.conf(worker)
    assert conf["worker_hijack_root_logger"] is False
    assert inspect.conf(worker, with_defaults=True)["enable_utc"] is True
    assert "software -> celery:" in inspect.report(worker)["ok"]
