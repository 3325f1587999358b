"""Which errors the consumer takes for its lost connection, on a real RabbitMQ."""

from __future__ import annotations

import socket
import uuid

import pytest
from amqp.exceptions import RecoverableConnectionError
from consumer_support import LoneConsumer

from taskq import TaskQ


def test_an_error_of_the_lost_connection_raised_after_the_teardown_is_still_its_own() -> None:
    """Given a consumer on RabbitMQ whose connection was lost and torn down, when a callback
    of that connection still queued in the hub raises py-amqp's RecoverableConnectionError
    ("Socket was disconnected"), then the consumer takes it for the lost connection (the
    worker goes on reconnecting) instead of an unknown error (the worker's main process
    died of it: kill-connections seed 4)."""
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1.0).close()
    except OSError:
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    name = f"tqerr{uuid.uuid4().hex[:10]}"
    app = TaskQ("errors", broker="amqp://guest:guest@127.0.0.1:5672//", environ={},
                task_default_queue=name)
    lone = LoneConsumer(app)
    try:
        consumer = lone.connect()
        consumer.on_connection_error(ConnectionResetError("cut"))
        assert lone.lost and consumer.connection is None
        assert consumer.is_connection_error(RecoverableConnectionError("Socket was disconnected"))
        assert not consumer.is_connection_error(ValueError("a bug"))
    finally:
        with app.connection() as conn:
            conn.channel().queue_delete(name)
        lone.close()
