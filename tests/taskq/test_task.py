"""Tasks called directly and with apply(): the worker's semantics, no broker needed."""

from __future__ import annotations

import pytest

from taskq import Ignore, MaxRetriesExceededError, Reject, TaskQ


@pytest.fixture
def app():
    return TaskQ("t", broker="memory://", environ={})


def test_calling_a_task_runs_it_here(app):
    @app.task
    def add(a, b):
        return a + b

    assert add(2, 3) == 5
    assert add.name.endswith(".add")


def test_names_follow_module_main_or_explicit(app):
    def fn():
        return 1

    fn.__module__ = "__main__"
    assert app.task(fn).name == "t.fn"
    assert app.task(name="custom")(lambda: 1).name == "custom"


def test_apply_gives_success_and_failure_results(app):
    @app.task
    def div(a, b):
        return a / b

    ok = div.apply((6, 3))
    assert (ok.state, ok.get()) == ("SUCCESS", 2)
    bad = div.apply((1, 0))
    assert bad.state == "FAILURE" and bad.failed()
    assert isinstance(bad.result, ZeroDivisionError)
    assert "ZeroDivisionError" in bad.traceback
    with pytest.raises(ZeroDivisionError):
        bad.get()
    assert isinstance(bad.get(propagate=False), ZeroDivisionError)
    with pytest.raises(ZeroDivisionError):
        div.apply((1, 0), throw=True)


def test_bound_tasks_see_their_request(app):
    @app.task(bind=True)
    def who(self, x):
        r = self.request
        return {"id": r.id, "args": list(r.args), "retries": r.retries,
                "headers": dict(r.headers), "eager": r.is_eager, "root": r.root_id}

    seen = who.apply((1,), task_id="tid", headers={"tenant": "acme"}).get()
    assert seen == {"id": "tid", "args": [1], "retries": 0, "headers": {"tenant": "acme"},
                    "eager": True, "root": "tid"}
    assert who.request.id is None  # outside a call the request is empty


def test_retry_reruns_with_retries_counted(app):
    attempts = []

    @app.task(bind=True, max_retries=3)
    def flaky(self):
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(countdown=10)
        return "ok"

    assert flaky.apply().get() == "ok"
    assert attempts == [0, 1, 2]


def test_retry_past_max_reraises_the_exception_or_max_retries(app):
    @app.task(bind=True, max_retries=1)
    def always(self, with_exc):
        exc = KeyError("gone") if with_exc else None
        raise self.retry(exc=exc, countdown=0)

    assert isinstance(always.apply((True,)).result, KeyError)
    assert isinstance(always.apply((False,)).result, MaxRetriesExceededError)


def test_autoretry_backoff_follows_celery(app):
    @app.task(autoretry_for=(IOError,), retry_backoff=True, retry_jitter=False,
              retry_backoff_max=5, max_retries=10)
    def net():
        raise OSError("down")

    assert [net.backoff_countdown(n) for n in range(5)] == [1, 2, 4, 5, 5]
    attempts = []

    @app.task(bind=True, autoretry_for=(OSError,), max_retries=2, retry_jitter=False)
    def io(self):
        attempts.append(self.request.retries)
        raise OSError("still down")

    result = io.apply()
    assert attempts == [0, 1, 2] and isinstance(result.result, OSError)


def test_ignore_and_reject_states(app):
    @app.task
    def ignored():
        raise Ignore()

    @app.task
    def rejected():
        raise Reject("bad input", requeue=False)

    assert ignored.apply().state == "IGNORED"
    assert rejected.apply().state == "REJECTED"


def test_link_callbacks_run_with_the_result(app):
    seen = []

    @app.task
    def double(x):
        return x * 2

    @app.task
    def record(*args):
        seen.append(args)

    double.apply((4,), link=record.s("tag"))
    double.apply((5,), link=record.si("fixed"))
    assert seen == [(8, "tag"), ("fixed",)]


def test_link_error_gets_the_failed_task_id(app):
    seen = []

    @app.task
    def fail():
        raise ValueError("x")

    @app.task
    def on_error(task_id):
        seen.append(task_id)

    fail.apply(task_id="f1", link_error=on_error.s())
    assert seen == ["f1"]


def test_an_errbacks_style_is_told_by_what_its_stored_arguments_leave_as_on_celery(app):
    """Celery 5.7 binds an errback's stored arguments first: ``old(request_id, label)``
    with ``label`` stored by keyword gets the task id (Celery's
    test_mutable_errback_with_stored_arguments[old-style-kwargs]; taskq called it with
    (request, exc, traceback) and it raised), with ``label`` stored by position too, and
    ``new(request, exc, traceback, label)`` gets the request."""
    seen = []

    @app.task
    def fail():
        raise ValueError("x")

    @app.task
    def old(request_id, label):
        seen.append(("old", request_id, label))

    @app.task
    def new(request, exc, traceback, label):
        seen.append(("new", request.id, type(exc).__name__, label))

    fail.apply(task_id="f1", link_error=old.s(label="by-keyword"))
    fail.apply(task_id="f2", link_error=old.s("by-position"))
    fail.apply(task_id="f3", link_error=new.s("stored"))
    assert seen == [("old", "f1", "by-keyword"), ("old", "f2", "by-position"),
                    ("new", "f3", "ValueError", "stored")]


def test_unknown_options_are_rejected_with_a_suggestion(app):
    with pytest.raises(TypeError, match="unknown task option 'queu'; did you mean 'queue'"):
        app.task(queu="x")(lambda: 1)

    @app.task
    def add(a, b):
        return a + b

    with pytest.raises(TypeError, match="did you mean 'countdown'"):
        add.apply_async((1, 2), countdwn=3)


def test_bad_arguments_fail_before_publishing(app):
    @app.task
    def add(a, b):
        return a + b

    with pytest.raises(TypeError):
        add.delay(1, 2, 3)  # memory:// is never reached: the call is checked first


def test_retry_outside_a_worker_raises(app):
    @app.task(bind=True)
    def t(self):
        return self.retry()

    with pytest.raises(RuntimeError, match="outside a worker"):
        t()


class _Published(Exception):
    """Raised by a before_task_publish hook: the message is caught, never sent."""


def _published(app: TaskQ, call) -> object:
    def catch(msg, routing):
        raise _Published(msg)

    app.hooks.before_task_publish.append(catch)
    try:
        with pytest.raises(_Published) as caught:
            call()
    finally:
        app.hooks.before_task_publish.remove(catch)
    return caught.value.args[0]


def test_a_tasks_expires_is_its_calls_default_as_on_celery(app):
    import datetime as dt

    @app.task(expires=60)
    def t():
        return 1

    before = dt.datetime.now(dt.UTC)
    msg = _published(app, t.delay)
    assert before + dt.timedelta(seconds=59) <= msg.expires <= before + dt.timedelta(
        seconds=61)
    assert _published(app, lambda: t.apply_async(expires=600)).expires >= before + (
        dt.timedelta(seconds=599))


def test_typing_false_sends_calls_the_signature_would_refuse(app):
    @app.task(typing=False)
    def loose(a):
        return a

    assert _published(app, lambda: loose.delay(1, 2, x=3)).args == (1, 2)


def test_a_tasks_store_errors_even_if_ignored_beats_the_setting(tmp_path):
    from taskq.protocol import TaskMessage
    from taskq.trace import execute

    app = TaskQ("t", broker="memory://", backend=f"db+sqlite:///{tmp_path}/r.db", environ={})

    @app.task(ignore_result=True, store_errors_even_if_ignored=True)
    def kept():
        raise ValueError("kept")

    @app.task(ignore_result=True)
    def dropped():
        raise ValueError("dropped")

    for task in (kept, dropped):
        execute(task, TaskMessage(task=task.name, id=f"id-{task.__name__}"))
    assert app.backend.get_task_meta("id-kept")["status"] == "FAILURE"
    assert app.backend.get_task_meta("id-dropped")["status"] == "PENDING"
