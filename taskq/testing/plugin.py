"""taskq's pytest plugin (loaded through the ``pytest11`` entry point).

Override the config fixtures in your conftest; use ``taskq_app`` / ``taskq_worker`` (per test)
or their ``taskq_session_*`` versions; add ``taskq_chaos`` to aim faults at the worker and
``taskq_events`` to capture task events. Each test gets its own queue and key prefix, so
tests run in parallel under pytest-xdist.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import pytest

from taskq.app import TaskQ
from taskq.testing.workers import SubprocessWorker, ThreadWorker

LOG_TAIL = 20_000

# -- options and markers -----------------------------------------------------------------------

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("taskq")
    group.addoption("--taskq-broker", default=None, metavar="URL",
                    help="Broker for taskq test workers (default: $TASKQ_TEST_BROKER, then "
                         "taskq's embedded SQLite broker in a folder of the session's own).")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "taskq(**settings): taskq settings for this test")
    config.addinivalue_line("markers",
                            "taskq_private_broker: run this test's worker on a private Redis "
                            "(needed for taskq_chaos.restart_broker)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """A failed test that ran a subprocess worker gets the end of that worker's log in its
    report (the log file is deleted when the worker stops)."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", None) or {}
    for name in ("taskq_worker", "taskq_session_worker"):
        worker = funcargs.get(name)
        if isinstance(worker, SubprocessWorker):
            with contextlib.suppress(OSError):
                report.sections.append((f"taskq worker log ({worker.hostname}, last "
                                        f"{LOG_TAIL} bytes)", worker.read_log(tail=LOG_TAIL)))


# -- configuration fixtures that app teams override ---------------------------------------------

@pytest.fixture(scope="session")
def taskq_config() -> dict[str, Any]:
    """Settings for every test app (override in your conftest)."""
    return {}


@pytest.fixture(scope="session")
def taskq_includes() -> tuple[str, ...]:
    """Modules to import into the test app (their tasks must be registered on it)."""
    return ()


@pytest.fixture(scope="session")
def taskq_worker_pool() -> str:
    """``solo`` or ``threads`` (in-thread worker) or ``prefork`` (subprocess worker)."""
    return "solo"


@pytest.fixture(scope="session")
def taskq_worker_parameters() -> dict[str, Any]:
    """Extra worker parameters: ``concurrency``, ``ping_timeout``, ``stop_timeout``."""
    return {}


@pytest.fixture(scope="session")
def taskq_app_spec() -> str | None:
    """``module:attr`` of your own app. Needed for prefork workers (a subprocess imports it);
    with ``None`` each test gets a fresh ``TaskQ`` you add tasks to with ``@taskq_app.task``."""
    return None


@pytest.fixture(scope="session")
def taskq_broker_url(pytestconfig: pytest.Config,
                     tmp_path_factory: pytest.TempPathFactory) -> str:
    """``--taskq-broker`` or ``TASKQ_TEST_BROKER``; by default taskq's embedded SQLite broker
    in a folder of this test session's own (no server needed)."""
    url = pytestconfig.getoption("--taskq-broker") or os.environ.get("TASKQ_TEST_BROKER")
    if url:
        return str(url)
    return f"sqlite:///{tmp_path_factory.mktemp('taskq-broker') / 'broker.db'}"


# -- isolation ------------------------------------------------------------------------------------

def _isolated_settings(broker: str, name: str) -> dict[str, Any]:
    """Own queue, key prefix and result store for one test (or session)."""
    settings: dict[str, Any] = {"broker_url": broker, "task_default_queue": f"{name}.q",
                                "task_default_exchange": f"{name}.x",
                                "task_default_routing_key": f"{name}.q"}
    scheme = broker.split("://", 1)[0]
    if scheme.startswith("redis"):
        prefix = {"global_keyprefix": f"{name}:"}
        settings.update(broker_transport_options=prefix, result_backend=broker,
                        result_backend_transport_options=prefix)
    elif scheme == "sqlite":  # results beside the session's broker file
        folder = broker.split(":///", 1)[1].rsplit("/", 1)[0]
        settings["result_backend"] = f"db+sqlite:///{folder}/results.db"
    else:
        settings["result_backend"] = "rpc://"
    return settings


def _marker_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("taskq"))):
        merged.update(marker.kwargs)
    return merged


def _make_app(spec: str | None, includes: tuple[str, ...], settings: Mapping[str, Any]
              ) -> tuple[TaskQ, dict[str, Any]]:
    if spec:
        from taskq.loading import find_app

        app = find_app(spec)
        saved = app.conf.overrides()
        app.conf.override(settings)  # beats the app's own code and TASKQ_* variables
        app._reset_clients()
        app.import_includes()
        return app, saved
    app = TaskQ("taskq_test", include=includes)
    app.conf.update(settings)
    app.import_includes()
    return app, {}


def _restore(app: TaskQ, spec: str | None, saved: dict[str, Any]) -> None:
    if spec:
        app.conf.restore_overrides(saved)
    app.close()


def _env_for(settings: Mapping[str, Any]) -> dict[str, str]:
    import json

    env = {}
    for name, value in settings.items():
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        env[f"TASKQ_{name.upper()}"] = text
    return env


def _start_worker(app: TaskQ, spec: str | None, settings: Mapping[str, Any], pool: str,
                  params: Mapping[str, Any], name: str) -> ThreadWorker | SubprocessWorker:
    hostname = f"{name}@{socket.gethostname()}"
    params = dict(params)
    if pool in ("solo", "threads"):
        return ThreadWorker(app, pool=pool, concurrency=int(params.pop("concurrency", 2)),
                            hostname=hostname, **params).start()
    if not spec:
        raise pytest.UsageError(
            "a prefork test worker runs in a subprocess, which must import your app: "
            "override the taskq_app_spec fixture with 'yourmodule:app'")
    return SubprocessWorker(app, spec, pool=pool, concurrency=int(params.pop("concurrency", 2)),
                            hostname=hostname, env=_env_for(settings), **params).start()


def _stop(worker: ThreadWorker | SubprocessWorker) -> None:
    if isinstance(worker, SubprocessWorker):
        worker.close()
    else:
        worker.stop()


# -- per-test fixtures ----------------------------------------------------------------------------

@pytest.fixture
def taskq_test_name() -> str:
    return f"taskqt{uuid.uuid4().hex[:10]}"


@pytest.fixture
def taskq_settings(request: pytest.FixtureRequest, taskq_broker_url: str,
                   taskq_config: dict[str, Any], taskq_test_name: str) -> dict[str, Any]:
    broker = taskq_broker_url
    if "taskq_chaos" in request.fixturenames:
        broker = request.getfixturevalue("taskq_chaos").broker_url
    settings = dict(taskq_config)
    settings.update(_marker_settings(request))
    settings.update(_isolated_settings(broker, taskq_test_name))
    if "taskq_events" in request.fixturenames:
        settings["worker_send_task_events"] = True
    return settings


@pytest.fixture
def taskq_app(taskq_app_spec: str | None, taskq_includes: tuple[str, ...],
              taskq_settings: dict[str, Any]) -> Iterator[TaskQ]:
    app, saved = _make_app(taskq_app_spec, taskq_includes, taskq_settings)
    yield app
    _restore(app, taskq_app_spec, saved)


@pytest.fixture
def taskq_worker(request: pytest.FixtureRequest, taskq_app: TaskQ,
                 taskq_app_spec: str | None, taskq_settings: dict[str, Any],
                 taskq_worker_pool: str, taskq_worker_parameters: dict[str, Any],
                 taskq_test_name: str) -> Iterator[ThreadWorker | SubprocessWorker]:
    pool = _marker_settings(request).get("worker_pool", taskq_worker_pool)
    worker = _start_worker(taskq_app, taskq_app_spec, taskq_settings, pool,
                           taskq_worker_parameters, taskq_test_name)
    if "taskq_chaos" in request.fixturenames:
        request.getfixturevalue("taskq_chaos").attach(taskq_app, worker.hostname)
    yield worker
    _stop(worker)


@pytest.fixture
def taskq_chaos(request: pytest.FixtureRequest, taskq_broker_url: str) -> Iterator[Any]:
    from taskq.testing.faults import TaskqChaos

    private = request.node.get_closest_marker("taskq_private_broker") is not None
    chaos = TaskqChaos(taskq_broker_url, private_broker=private)
    yield chaos
    chaos.close()


class EventCapture:
    """Task events seen during a test, from the events stream."""

    def __init__(self, app: TaskQ) -> None:
        from taskq.events import EventReceiver

        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._conn = app.connection()
        self._receiver = EventReceiver(self._conn, handlers={"*": self.events.append})
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="taskq-events")
        self._thread.start()
        self._ready.wait(10)  # consuming before the test sends anything

    def _run(self) -> None:
        self._receiver.start()
        self._ready.set()
        self._receiver.capture(stop=self._stop.is_set)
        self._receiver.close()

    def of(self, task_id: str) -> list[str]:
        from taskq.testing.helpers import events_of

        return events_of(list(self.events), task_id)

    def wait_for(self, task_id: str, kind: str, timeout: float = 10.0) -> list[str]:
        from chaos import wait_until

        wait_until(lambda: kind in self.of(task_id), timeout=timeout,
                   what=f"event {kind} of {task_id}")
        return self.of(task_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.release()


@pytest.fixture
def taskq_events(taskq_app: TaskQ) -> Iterator[EventCapture]:
    capture = EventCapture(taskq_app)
    yield capture
    capture.close()


# -- session fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def taskq_session_settings(taskq_broker_url: str, taskq_config: dict[str, Any]
                           ) -> dict[str, Any]:
    settings = dict(taskq_config)
    settings.update(_isolated_settings(taskq_broker_url, f"taskqs{uuid.uuid4().hex[:10]}"))
    return settings


@pytest.fixture(scope="session")
def taskq_session_app(taskq_app_spec: str | None, taskq_includes: tuple[str, ...],
                      taskq_session_settings: dict[str, Any]) -> Iterator[TaskQ]:
    app, saved = _make_app(taskq_app_spec, taskq_includes, taskq_session_settings)
    yield app
    _restore(app, taskq_app_spec, saved)


@pytest.fixture(scope="session")
def taskq_session_worker(taskq_session_app: TaskQ, taskq_app_spec: str | None,
                         taskq_session_settings: dict[str, Any], taskq_worker_pool: str,
                         taskq_worker_parameters: dict[str, Any]
                         ) -> Iterator[ThreadWorker | SubprocessWorker]:
    name = f"taskqs{uuid.uuid4().hex[:10]}"
    worker = _start_worker(taskq_session_app, taskq_app_spec, taskq_session_settings,
                           taskq_worker_pool, taskq_worker_parameters, name)
    yield worker
    _stop(worker)
