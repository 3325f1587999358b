"""Transports in a process with more than 1,024 open files (issue 13 #4): ``select()`` fails
for fd numbers >= 1024, so waiting on a socket must use ``poll``."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

import taskq  # noqa: F401 - registers the sqlite:// alias
from taskq.transports.redis import Channel as RedisChannel
from tests.fd_support import many_open_fds


def test_sqlite_drain_events_waits_on_a_wake_socket_numbered_past_1023(tmp_path: Path) -> None:
    queue = Queue("jobs", Exchange("jobs"), routing_key="jobs")
    url = f"sqlite:///{tmp_path}/broker.db"
    got: list[object] = []
    with many_open_fds(), Connection(url) as conn, Connection(url) as sender:
        Consumer(conn, [queue], callbacks=[lambda body, message: (got.append(body),
                                                                  message.ack())],
                 accept=["json"]).consume()
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.05)  # idle: it waits on its wake socket
        assert conn.transport.wake.socket().fileno() >= 1024

        Producer(sender).publish("hello", exchange=queue.exchange,
                                 routing_key=queue.routing_key, declare=[queue],
                                 serializer="json")
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=1)
    assert got == ["hello"]


def test_redis_reply_waiting_sees_a_reply_on_a_socket_numbered_past_1023() -> None:
    with many_open_fds():
        ours, server = socket.socketpair()
        try:
            assert ours.fileno() >= 1024
            channel = SimpleNamespace(_in_poll=SimpleNamespace(_sock=ours))
            assert RedisChannel.reply_waiting(channel) is False  # type: ignore[arg-type]
            server.sendall(b"*1\r\n")
            assert RedisChannel.reply_waiting(channel) is True  # type: ignore[arg-type]
        finally:
            ours.close()
            server.close()
