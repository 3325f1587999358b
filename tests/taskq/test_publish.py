"""Publishing on the real brokers: what lands in the queue is exactly the Celery message."""

from __future__ import annotations

import datetime as dt
import socket
import sys

import pytest
from kombu import Consumer

from taskq import BrokerUnreachable, ConfigurationError, TaskQ
from taskq.protocol import decode
from taskq.publish import queue_for


@pytest.fixture(params=["redis", "amqp"])
def app(request, unique):
    if request.param == "redis":
        app = TaskQ("pub", broker=request.getfixturevalue("redis_url"), environ={},
                    broker_transport_options={"global_keyprefix": f"{unique}:"},
                    task_default_queue=unique)
    else:
        app = TaskQ("pub", broker=request.getfixturevalue("amqp_url"), environ={},
                    task_default_queue=unique)
    yield app
    with app.connection() as conn:
        for name in (unique, f"{unique}.other"):
            try:
                queue_for(app.conf, name)(conn.default_channel).delete()
            except Exception:
                pass
    app.close()


def drain(app, queue_name, count=1, timeout=10.0):
    messages = []
    with app.connection() as conn:
        queue = queue_for(app.conf, queue_name)
        with Consumer(conn, [queue], callbacks=[lambda b, m: messages.append(m)],
                      accept=["json"]):
            deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
            while len(messages) < count and dt.datetime.now() < deadline:
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
        for m in messages:
            m.ack()
    return [decode(m.body, content_type=m.content_type, content_encoding=m.content_encoding,
                   headers=m.headers, properties=m.properties, accept=["json"])
            for m in messages], messages


def test_apply_async_lands_as_one_celery_message(app, unique):
    @app.task(name="pub.add")
    def add(a, b):
        return a + b

    before = dt.datetime.now(dt.UTC)
    result = add.apply_async((1, 2), {}, countdown=30, expires=600, time_limit=9,
                             soft_time_limit=5, headers={"tenant": "acme"}, retries=0)
    [msg], [raw] = drain(app, unique)
    assert msg.task == "pub.add" and msg.id == result.id
    assert raw.properties["correlation_id"] == result.id
    assert list(msg.args) == [1, 2] and msg.kwargs == {}
    assert msg.eta is not None and msg.eta.tzinfo is not None
    assert 29 <= (msg.eta - before).total_seconds() <= 35
    assert msg.expires is not None and (msg.expires - before).total_seconds() > 590
    assert (msg.time_limit, msg.soft_time_limit) == (9, 5)
    assert msg.headers["tenant"] == "acme"
    assert raw.delivery_info["routing_key"] == unique


def test_queue_option_and_routes(app, unique):
    other = f"{unique}.other"
    app.conf.update(task_routes={"pub.routed": {"queue": other}})
    app.send_task("pub.direct", queue=other)
    app.send_task("pub.routed")
    msgs, _ = drain(app, other, count=2)
    assert sorted(m.task for m in msgs) == ["pub.direct", "pub.routed"]


def test_a_changed_default_queue_setting_routes_the_next_send(app, unique):
    """Publishing keeps the queue it built for a name (issue 17) only while the settings
    that shape it stay the same."""
    other = f"{unique}.other"
    app.send_task("pub.first")
    app.conf.update(task_default_queue=other)
    app.send_task("pub.second")
    assert [m.task for m in drain(app, other)[0]] == ["pub.second"]
    assert [m.task for m in drain(app, unique)[0]] == ["pub.first"]


def test_parent_and_root_ids_come_from_the_running_task(app, unique):
    @app.task(name="pub.child")
    def child():
        return None

    @app.task(name="pub.parent", bind=True)
    def parent(self):
        return child.delay().id

    parent.apply(task_id="root-1")
    [msg], _ = drain(app, unique)
    assert (msg.parent_id, msg.root_id) == ("root-1", "root-1")


def test_before_publish_hook_can_replace_the_message(app, unique):
    seen_after = []
    app.hooks.before_task_publish.append(
        lambda msg, routing: msg.evolve(headers={**msg.headers, "stamped": True}))
    app.hooks.after_task_publish.append(lambda msg, routing: seen_after.append((msg, routing)))
    app.send_task("pub.any", (1,))
    [msg], _ = drain(app, unique)
    assert msg.headers["stamped"] is True
    assert seen_after[0][0].headers["stamped"] is True
    assert seen_after[0][1]["queue"] == unique


def test_amqp_publishes_with_confirms(amqp_url, unique):
    app = TaskQ("pub", broker=amqp_url, environ={}, task_default_queue=unique)
    with app.producer() as producer:
        assert producer.channel.connection.client.transport_options["confirm_publish"] is True
    app.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("scheme", ["amqp://guest:secret@127.0.0.1:{port}//",
                                    "redis://:secret@127.0.0.1:{port}/0"])
def test_unreachable_broker_is_a_clear_error_without_the_password(scheme):
    url = scheme.format(port=closed_port())
    app = TaskQ("pub", broker=url, environ={}, broker_connection_timeout=1,
                task_publish_retry_policy={"max_retries": 1, "interval_start": 0,
                                           "interval_step": 0.1, "interval_max": 0.1})
    with pytest.raises(BrokerUnreachable) as info:
        app.send_task("x.y")
    text = str(info.value)
    assert "secret" not in text and "**" in text and "unreachable" in text


def test_bad_broker_scheme_is_a_configuration_error():
    app = TaskQ("pub", broker="nosuch://host", environ={})
    with pytest.raises(ConfigurationError, match="broker_url"):
        app.send_task("x.y")


def test_autodiscover_imports_tasks_modules(tmp_path, monkeypatch, unique):
    pkg, nop, broken = f"{unique}a", f"{unique}b", f"{unique}c"
    for name in (pkg, nop, broken):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / pkg / "tasks.py").write_text("LOADED = True\n")
    (tmp_path / broken / "tasks.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = TaskQ("disc", environ={})
    app.autodiscover_tasks([pkg, nop])
    assert sys.modules[f"{pkg}.tasks"].LOADED
    with pytest.raises(ModuleNotFoundError, match="does_not_exist_anywhere"):
        app.autodiscover_tasks([broken])
