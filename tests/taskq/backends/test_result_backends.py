"""Result backends on the real services: Celery's layout on Redis, rpc replies, SQLite."""

from __future__ import annotations

import json
import os
import threading
import types

import pytest

from taskq import TaskQ, states
from taskq.backends import backend_from_url
from taskq.errors import ConfigurationError, ResultBackendError, TimeoutError


@pytest.fixture
def redis_app(redis_url, unique):
    app = TaskQ("res", broker=redis_url, backend=redis_url, environ={}, result_expires=120,
                result_backend_transport_options={"global_keyprefix": f"{unique}:"},
                broker_transport_options={"global_keyprefix": f"{unique}:"})
    yield app
    app.close()


def test_redis_keeps_celery_layout_ttl_and_publishes(redis_app, redis_client, unique):
    backend = redis_app.backend
    key = f"{unique}:celery-task-meta-t1"
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    backend.mark_as_done("t1", {"n": 1})
    stored = json.loads(redis_client.get(key))
    assert stored["status"] == "SUCCESS" and stored["result"] == {"n": 1}
    assert set(stored) >= {"status", "result", "traceback", "children", "date_done", "task_id"}
    assert 0 < redis_client.ttl(key) <= 120
    message = None
    for _ in range(50):
        message = pubsub.get_message(timeout=0.1)
        if message:
            break
    assert message is not None and json.loads(message["data"])["task_id"] == "t1"
    pubsub.close()
    redis_client.delete(key)


@pytest.mark.parametrize("state", ["FAILURE", "RETRY", "REVOKED", "REJECTED"])
def test_redis_exception_states_come_back_as_exceptions(redis_app, state):
    backend = redis_app.backend
    if state == "REVOKED":
        backend.mark_as_revoked("t2")
    elif state == "REJECTED":
        backend.mark_as_rejected("t2", "no")
    else:
        backend.store_result("t2", ValueError("bad"), state, traceback="tb")
    result = redis_app.AsyncResult("t2")
    # Rejected without requeue: a terminal FAILURE with the Reject, as Celery 5.7 stores it.
    assert result.state == ("FAILURE" if state == "REJECTED" else state)
    assert isinstance(result.result, BaseException)
    if state != "RETRY":
        assert result.ready()
        with pytest.raises(type(result.result)):
            result.get(timeout=1)
        assert isinstance(result.get(timeout=1, propagate=False), BaseException)
    result.forget()
    assert redis_app.AsyncResult("t2").state == "PENDING"


def test_get_waits_on_pubsub_and_times_out(redis_app):
    result = redis_app.AsyncResult("t3")
    timer = threading.Timer(0.3, redis_app.backend.mark_as_done, ("t3", 42))
    timer.start()
    assert result.get(timeout=5) == 42
    with pytest.raises(TimeoutError, match=r"not ready after 0\.2 s"):
        redis_app.AsyncResult("never").get(timeout=0.2)


def test_unreachable_redis_backend_hides_the_password():
    app = TaskQ("res", backend="redis://:hunter2@127.0.0.1:1/0", environ={},
                result_backend_transport_options={"socket_connect_timeout": 0.5})
    with pytest.raises(ResultBackendError) as info:
        _ = app.AsyncResult("x").state
    assert "hunter2" not in str(info.value) and "**" in str(info.value)


@pytest.mark.parametrize("broker", ["amqp", "redis"])
def test_rpc_results_travel_to_the_callers_queue(broker, request, unique):
    url = request.getfixturevalue(f"{broker}_url")
    app = TaskQ("rpc", broker=url, backend="rpc://", environ={},
                broker_transport_options={"global_keyprefix": f"{unique}:"})
    backend = app.backend
    reply_to = backend.on_task_call("a")
    worker_side = types.SimpleNamespace(reply_to=reply_to, group=None, parent_id=None)
    backend.store_result("b", 2, states.SUCCESS, request=worker_side)
    backend.store_result("a", 1, states.SUCCESS, request=worker_side)
    backend.store_result("a", None, states.STARTED, request=worker_side)  # late, not ready
    assert app.AsyncResult("a").get(timeout=10) == 1
    assert app.AsyncResult("b").get(timeout=10) == 2  # kept for later
    app.close()


def test_sqlite_backend_stores_expires_and_forgets(tmp_path, monkeypatch):
    app = TaskQ("db", backend=f"db+sqlite:///{tmp_path}/r.db", environ={}, result_expires=60)
    backend = app.backend
    backend.mark_as_done("t", [1, 2])
    assert app.AsyncResult("t").get(timeout=1) == [1, 2]
    backend.mark_as_failure("f", KeyError("k"))
    assert isinstance(app.AsyncResult("f").result, KeyError)
    import time as time_module

    real = time_module.time
    monkeypatch.setattr("taskq.backends.database.time.time", lambda: real() + 61)
    assert app.AsyncResult("t").state == "PENDING"
    monkeypatch.undo()
    backend.forget("f")
    assert app.AsyncResult("f").state == "PENDING"


def test_sqlite_backend_from_two_processes(tmp_path):
    import multiprocessing

    url = f"db+sqlite:///{tmp_path}/r.db"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_store_many, args=(url, prefix)) for prefix in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    app = TaskQ("db", backend=url, environ={})
    assert all(app.AsyncResult(f"{p}{i}").get(timeout=1) == i for p in "ab" for i in range(50))


def _store_many(url: str, prefix: str) -> None:
    app = TaskQ("db", backend=url, environ={})
    for i in range(50):
        app.backend.mark_as_done(f"{prefix}{i}", i)


def test_no_backend_says_how_to_configure_one():
    # An explicit broker: with none at all, results go to the embedded results.db.
    app = TaskQ("none", broker="memory://", environ={})
    app.backend.mark_as_done("x", 1)  # storing is a no-op
    with pytest.raises(ResultBackendError, match="set result_backend"):
        app.AsyncResult("x").get(timeout=1)


def test_unsupported_backend_url_hides_the_password():
    app = TaskQ("x", backend="mongodb://u:pw@host/db", environ={})
    with pytest.raises(ConfigurationError) as info:
        backend_from_url(app, app.conf.result_backend)
    assert "pw@" not in str(info.value) and "redis://" in str(info.value)


def test_sqlite_backend_used_from_a_thread_while_the_process_forks(tmp_path):
    """The worker's main process stores a lost task's FAILURE from its offload thread while
    its loop forks pool children; each child (which, like a pool child, replaces the fds it
    inherited) must still store its own results. A connection open across the fork broke
    the children's SQLite ("disk I/O error", "database is locked")."""
    from taskq.pool.child import _release_inherited_fds

    app = TaskQ("db", backend=f"db+sqlite:///{tmp_path}/r.db", environ={})
    app.backend.limit_blocking(2.0)
    stop = threading.Event()
    stored: list[int] = []

    def parent_stores() -> None:
        i = 0
        while not stop.is_set():
            app.backend.mark_as_failure(f"parent-{i}", KeyError(i))
            stored.append(i)
            i += 1

    thread = threading.Thread(target=parent_stores, daemon=True)
    thread.start()
    failed: list[int] = []
    try:
        for k in range(20):
            pid = os.fork()
            if pid == 0:  # the child: as a pool child does, then store
                code = 1
                try:
                    _release_inherited_fds({0, 1, 2})
                    for j in range(5):
                        app.backend.mark_as_done(f"child-{k}-{j}", j)
                    code = 0
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                failed.append(k)
    finally:
        stop.set()
        thread.join(30)
    assert not failed, f"children that could not store their results: {failed}"
    assert stored, "the parent's thread stored nothing"
    assert app.AsyncResult("child-19-4").get(timeout=1) == 4


def test_switching_a_locked_sqlite_file_to_wal_waits_for_the_lock(tmp_path):
    """Another process holding the file (as when two processes create the results database
    at once) makes SQLite refuse the switch to WAL at once, busy timeout or not: the
    connection hook retries until the lock is gone instead of failing the backend."""
    import sqlite3
    import threading

    from taskq.backends.database import _sqlite_pragmas

    path = tmp_path / "r.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release() -> None:
        released.wait(10)
        holder.execute("COMMIT")

    thread = threading.Thread(target=release)
    thread.start()
    conn = sqlite3.connect(path, timeout=0)  # no busy handler: a lock is refused at once
    try:
        threading.Timer(0.2, released.set).start()
        _sqlite_pragmas(conn, None)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        released.set()
        thread.join(10)
        conn.close()
        holder.close()
