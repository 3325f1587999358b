"""What the worker's main process publishes as a courtesy (control replies, events) never
holds its event loop: no publisher confirm to wait for, no reconnecting to send it.

Against the real RabbitMQ through the chaos fault proxy, on a connection made as the worker
makes it (``broker_confirm_publish`` on, 2 s read timeout)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kombu.clocks import LamportClock

from taskq import TaskQ
from taskq.events import EventDispatcher
from taskq.worker.control import ControlNode

AMQP_PORT = 5672


@pytest.fixture
def proxy(amqp_url: str) -> Iterator[Any]:
    from chaos.proxy import FaultProxy

    with FaultProxy(f"127.0.0.1:{AMQP_PORT}") as p:
        yield p


@pytest.fixture
def conn(proxy: Any, unique: str) -> Iterator[Any]:
    app = TaskQ(unique, broker=proxy.url("amqp", "//", "guest:guest"))
    assert app.conf.broker_confirm_publish  # the worker's default: tasks it sends are confirmed
    connection = app.connection()
    connection.connect()
    yield connection
    connection.collect()  # the proxy may have cut it: close without talking to the broker


def test_an_event_is_sent_without_waiting_for_the_brokers_confirm(conn, proxy, unique):
    """Given RabbitMQ that stops answering (a busy broker, a black hole), when the worker
    sends an event, the publish returns at once. Before, each event waited for its confirm
    until the read timeout and then failed, the worker's loop standing still meanwhile."""
    dispatcher = EventDispatcher(conn, f"{unique}@host", LamportClock())
    assert dispatcher.send("worker-heartbeat", freq=2.0) is not None  # through the proxy
    proxy.blackhole()
    assert dispatcher.send("task-started", uuid="t1", pid=42) is not None


def test_a_control_reply_on_a_lost_connection_is_dropped_not_retried_in_the_loop(
        conn, proxy, unique, caplog):
    """Given the worker's connection cut and the broker unreachable, when a control command
    read just before that is answered, the reply is dropped and logged. Before, kombu's reply
    waited for the confirm, then reconnected (in the loop, behind the consumer's back) until
    the broker came back: here, never."""
    worker = SimpleNamespace(hostname=f"{unique}@host", app=SimpleNamespace(clock=LamportClock()))
    control = ControlNode(worker)  # type: ignore[arg-type]
    control.attach(conn)
    node = control.node
    assert node is not None
    proxy.down(cut=True)
    replied = threading.Event()

    def reply() -> None:
        for ticket in ("t1", "t2", "t3"):  # the first write may still go into the socket
            node.reply({worker.hostname: {"ok": "pong"}}, exchange="reply.celery.pidbox",
                       routing_key=f"{unique}.reply", ticket=ticket)
        replied.set()

    caplog.set_level("INFO", logger="taskq.worker.control")
    thread = threading.Thread(target=reply, daemon=True)
    thread.start()
    try:
        assert replied.wait(30), "the reply kept the loop's thread (reconnecting)"
        assert "a control reply to" in caplog.text and "was not sent" in caplog.text
    finally:
        proxy.up()  # lets a reply that kept retrying finish
        thread.join(30)
