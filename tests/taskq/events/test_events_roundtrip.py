"""Events sent by a dispatcher reach a receiver on the real brokers, in clock order."""

from __future__ import annotations

import pytest
from kombu import Connection
from kombu.clocks import LamportClock

from taskq.events import EventDispatcher, EventReceiver


@pytest.fixture(params=["redis", "amqp"])
def broker(request, unique):
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return Connection(url, transport_options={"global_keyprefix": f"{unique}:"})
    return Connection(request.getfixturevalue("amqp_url"))


def test_events_arrive_with_celery_fields_and_a_rising_clock(broker, unique):
    got: list[dict] = []
    with broker as conn, Connection(conn.as_uri(include_password=True),
                                    transport_options=conn.transport_options) as send_conn, \
            EventReceiver(conn, handlers={"*": got.append}, queue_prefix=unique) as receiver:
        dispatcher = EventDispatcher(send_conn, f"{unique}@host", LamportClock())
        dispatcher.send("task-started", uuid="t1", pid=42)
        dispatcher.send("task-succeeded", uuid="t1", result="3", runtime=0.1)
        receiver.capture(limit=2, timeout=10)
    types = [e["type"] for e in got if e.get("uuid") == "t1"]
    assert types == ["task-started", "task-succeeded"]
    first = got[0]
    for field in ("hostname", "pid", "clock", "timestamp", "utcoffset", "local_received"):
        assert field in first
    assert got[0]["clock"] < got[1]["clock"]


def test_dispatcher_groups_filter_event_types(redis_url, unique):
    with Connection(redis_url, transport_options={"global_keyprefix": f"{unique}:"}) as conn:
        dispatcher = EventDispatcher(conn, "h", LamportClock(), groups={"worker"})
        assert dispatcher.send("task-started", uuid="x") is None
        assert dispatcher.send("worker-heartbeat", freq=2.0) is not None


def test_a_send_on_a_dead_connection_is_reported_not_only_logged(amqp_url):
    """The worker learns its broker connection is dead from a failed event too (before,
    every heartbeat and task event on a black-holed RabbitMQ connection waited for its own
    timeout on the loop, and the worker noticed the hole seconds later)."""
    errors: list[BaseException] = []
    conn = Connection("amqp://guest:guest@127.0.0.1:1//", connect_timeout=1)  # nothing there
    dispatcher = EventDispatcher(conn, "h", LamportClock(), on_error=errors.append)
    assert dispatcher.send("worker-heartbeat") is None
    assert len(errors) == 1
    conn.release()
