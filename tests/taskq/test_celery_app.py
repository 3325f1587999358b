"""The Celery adapter's pieces without a broker: finding a Celery app with ``-A``, its
settings in taskq's names, its tasks in taskq's registry; and taskq without Celery."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

celery = pytest.importorskip("celery")

from taskq.celery_app import CeleryTask, settings_from_celery  # noqa: E402
from taskq.loading import find_app  # noqa: E402


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_package_with_a_celery_submodule_and_shared_tasks_is_found(project_dir: Path
                                                                     ) -> None:
    _write(project_dir, {
        "cproj_a/__init__.py": "",
        "cproj_a/celery.py": """
            from celery import Celery
            app = Celery("cproj_a", broker="redis://127.0.0.1:6379/5",
                         include=["cproj_a.tasks"], set_as_current=False)
            app.conf.update(task_acks_late=True, result_expires=600,
                            broker_channel_error_retry=True)
        """,
        "cproj_a/tasks.py": """
            from celery import Task, shared_task
            from .celery import app

            class Base(Task):
                pass

            @app.task(base=Base, acks_late=False, time_limit=9)
            def own(x):
                return x

            @shared_task(bind=True, max_retries=7)
            def shared(self):
                return self.request.id
        """,
    })
    app = find_app("cproj_a")
    assert find_app("cproj_a") is app  # one TaskQ app per Celery app
    own, shared = app.tasks["cproj_a.tasks.own"], app.tasks["cproj_a.tasks.shared"]
    assert isinstance(own, CeleryTask) and isinstance(shared, CeleryTask)
    assert (own.acks_late, own.time_limit) == (False, 9)
    assert (shared.acks_late, shared.max_retries) == (True, 7)
    assert app.conf.broker_url == "redis://127.0.0.1:6379/5"
    assert app.conf.result_expires == 600
    assert any(step.name == "celery" and step.ignored == ["broker_channel_error_retry"]
               for step in app.steps)


def test_module_attr_naming_a_celery_app_is_accepted(project_dir: Path) -> None:
    _write(project_dir, {"cproj_b.py": """
        from celery import Celery
        capp = Celery("cproj_b", broker="amqp://guest:guest@127.0.0.1:5672//",
                      set_as_current=False)

        @capp.task
        def f():
            return 1
    """})
    app = find_app("cproj_b:capp")
    assert "cproj_b.f" in app.tasks
    assert find_app("cproj_b") is app


def test_celery_settings_map_to_taskq_names_and_the_rest_are_named() -> None:
    capp = celery.Celery("m", set_as_current=False)
    capp.conf.update(result_expires=dt.timedelta(hours=1), worker_concurrency=0,
                     accept_content=("json", "yaml"), task_default_queue="q1",
                     task_compression="gzip", worker_prefetch_multiplier=-1)
    settings, ignored = settings_from_celery(capp.conf)
    assert settings["broker_url"] == "amqp://guest:guest@localhost:5672//"  # Celery's default
    assert settings["result_backend"] is None
    assert settings["result_expires"] == 3600.0
    assert settings["accept_content"] == ["json", "yaml"]
    assert settings["task_default_queue"] == "q1"
    assert "worker_concurrency" not in settings or settings["worker_concurrency"] is None
    assert "task_compression" in ignored
    assert any(name.startswith("worker_prefetch_multiplier (") for name in ignored)


def test_taskq_imports_no_celery_for_its_own_apps() -> None:
    code = ("import sys, taskq, taskq.cli, taskq.worker, taskq.loading, taskq.testing; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'celery'], "
            "sorted(m for m in sys.modules if m.startswith('celery'))")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_lost_task_sends_task_failure_only_when_it_is_not_requeued() -> None:
    """Celery's main process sends ``task_failure`` for a lost task unless it requeued it
    (reject_on_worker_lost), with the request on the task's stack while it runs."""
    from taskq.celery_app import from_celery
    from taskq.errors import WorkerLostError
    from taskq.protocol import TaskMessage

    capp = celery.Celery("lostsig", broker="memory://", set_as_current=False)

    @capp.task(name="lostsig.t")
    def t(x: int) -> int:
        return x

    seen: list[tuple[str, str, list[int], str | None]] = []

    def receiver(sender: object = None, task_id: str = "", exception: object = None,
                 args: list[int] | None = None, **_: object) -> None:
        seen.append((task_id, type(exception).__name__, list(args or ()), t.request.id))

    celery.signals.task_failure.connect(receiver, sender=t, weak=False)
    try:
        app = from_celery(capp)
        msg = TaskMessage(task="lostsig.t", id="id-1", args=(7,))
        for hook in app.hooks.task_lost:
            hook("id-1", "lostsig.t", WorkerLostError("gone"), True, msg)
        assert seen == []
        for hook in app.hooks.task_lost:
            hook("id-1", "lostsig.t", WorkerLostError("gone"), False, msg)
        assert seen == [("id-1", "WorkerLostError", [7], "id-1")]
        assert t.request.id is None  # popped again
    finally:
        celery.signals.task_failure.disconnect(receiver, sender=t)


def test_a_celery_tasks_throws_send_events_and_trail_are_taken() -> None:
    from taskq.celery_app import from_celery

    capp = celery.Celery("opts", broker="memory://", set_as_current=False)

    @capp.task(name="opts.t", throws=(KeyError,), send_events=False, trail=False)
    def t() -> None:
        raise KeyError("x")

    @capp.task(name="opts.plain")
    def plain() -> None:
        pass

    app = from_celery(capp)
    task, default = app.tasks["opts.t"], app.tasks["opts.plain"]
    assert (task.throws, task.send_events, task.trail) == ((KeyError,), False, False)
    assert (default.throws, default.send_events, default.trail) == ((), True, True)
