"""Celery's settings on a TaskQ app (issue 16): the old upper-case names of a
``celeryconfig.py`` with a DeprecationWarning, ``task_always_eager`` and
``task_eager_propagates``, ``imports`` and ``include``."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from taskq import Task, TaskQ
from taskq.config import OLD_NAMES, SETTINGS, Config
from taskq.errors import ConfigurationError
from taskq.result import EagerResult


def test_celerys_old_names_are_read_with_a_deprecation_warning_naming_the_new_ones():
    old = types.SimpleNamespace(BROKER_URL="redis://h/1", CELERY_ACKS_LATE=True,
                                CELERYD_CONCURRENCY=3, CELERY_ROUTES={"a": "q"})
    conf = Config(environ={})
    with pytest.warns(DeprecationWarning, match="broker_url instead of BROKER_URL") as seen:
        conf.from_object(old)
    assert "worker_concurrency instead of CELERYD_CONCURRENCY" in str(seen[0].message)
    assert conf.broker_url == "redis://h/1" and conf.task_acks_late is True
    assert conf.worker_concurrency == 3 and conf.task_routes == {"a": "q"}


def test_an_old_name_beside_its_new_name_is_an_error_as_on_celery():
    both = types.SimpleNamespace(BROKER_URL="redis://a", broker_url="redis://b")
    with pytest.raises(ConfigurationError, match="both BROKER_URL and broker_url"):
        Config(environ={}).from_object(both)


def test_every_old_name_maps_to_a_setting():
    assert set(OLD_NAMES.values()) <= set(SETTINGS)


def test_task_always_eager_runs_apply_async_here_and_sends_nothing():
    app = TaskQ("eager", broker="memory://", task_always_eager=True)

    @app.task(bind=True)
    def double(self, x):
        return (x * 2, self.request.id, self.request.is_eager)

    result = double.apply_async((21,), task_id="fixed-id")
    assert isinstance(result, EagerResult)
    assert result.get() == (42, "fixed-id", True)
    assert double.delay(1).get()[0] == 2


def test_task_eager_propagates_raises_the_tasks_error():
    app = TaskQ("eager", broker="memory://", task_always_eager=True)

    @app.task
    def fails():
        raise KeyError("nope")

    assert fails.delay().state == "FAILURE"
    app.conf.task_eager_propagates = True
    with pytest.raises(KeyError, match="nope"):
        fails.delay()


def test_imports_then_include_are_imported_by_import_includes(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    for name in ("cfg_imports_a", "cfg_include_b"):
        (tmp_path / f"{name}.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = TaskQ("imp", broker="memory://", environ={})
    app.config_from_object(types.SimpleNamespace(imports=["cfg_imports_a"],
                                                 include=("cfg_include_b",)))
    app.import_includes()
    assert sys.modules["cfg_imports_a"].LOADED and sys.modules["cfg_include_b"].LOADED


def test_base_must_be_a_taskq_task_subclass():
    app = TaskQ("base", broker="memory://")
    with pytest.raises(TypeError, match=r"expected a subclass of taskq\.Task"):
        app.task(base=object)(lambda: 1)


def test_handlers_of_a_base_class_run_under_apply_and_one_that_raises_changes_nothing():
    app = TaskQ("handlers", broker="memory://")
    calls: list[tuple[str, ...]] = []

    class Noted(Task):
        def on_success(self, retval, task_id, args, kwargs):
            calls.append(("on_success", retval, task_id, self.request.id))
            raise RuntimeError("a broken handler")

        def after_return(self, status, retval, task_id, args, kwargs, einfo):
            calls.append(("after_return", status))

    @app.task(base=Noted)
    def two():
        return 2

    result = two.apply(task_id="t1")
    assert result.get() == 2 and result.state == "SUCCESS"
    assert calls == [("on_success", 2, "t1", "t1"), ("after_return", "SUCCESS")]


def test_task_annotations_set_attributes_by_name_and_for_every_task_as_celery_does():
    failures: list[str] = []

    class OnlyAdd:
        def annotate(self, task):
            return {"soft_time_limit": 7} if task.name == "ann.add" else None

    app = TaskQ("ann", broker="memory://", environ={}, task_annotations=[
        {"*": {"rate_limit": "5/s"}, "ann.add": {"acks_late": True, "rate_limit": "1/m"}},
        OnlyAdd(),
        {"ann.sub": {"on_failure": lambda exc, *args: failures.append(repr(exc))}},
    ])

    @app.task(name="ann.add")
    def add(x, y):
        return x + y

    @app.task(name="ann.sub")
    def sub(x, y):
        raise ValueError("sub")

    app.import_includes()  # as a worker starts
    assert (add.rate_limit, add.acks_late, add.soft_time_limit) == ("1/m", True, 7)
    assert (sub.rate_limit, sub.acks_late, sub.soft_time_limit) == ("5/s", False, None)
    assert sub.apply((1, 2)).state == "FAILURE"
    assert failures == ["ValueError('sub')"]


def test_a_task_annotation_naming_no_attribute_is_an_error_naming_it():
    app = TaskQ("ann", broker="memory://", environ={},
                task_annotations={"ann.add": {"rate_limt": "1/s"}})
    app.task(name="ann.add")(lambda: 1)
    with pytest.raises(ConfigurationError, match="'rate_limt' is no task attribute; did you "
                                                 "mean 'rate_limit'"):
        app.import_includes()
    with pytest.raises(ConfigurationError, match="expected a mapping of task attributes"):
        TaskQ("ann", broker="memory://", environ={}, task_annotations={"ann.add": 3})
