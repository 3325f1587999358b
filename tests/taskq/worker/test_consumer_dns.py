"""The consumer looks the broker's host name up off the loop (a resolver can take seconds per
try, and the loop runs hard time limits, heartbeats and lease renewal)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from typing import Any

import pytest
from consumer_support import LoneConsumer

from taskq import TaskQ

SLOW_NAME = "slow-broker.taskq-test"


def test_the_broker_host_is_looked_up_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a broker host name whose lookup takes 2 s, when the consumer connects, then the
    lookup runs on another thread than the loop's, and the consumer connects to the address
    it found (a real Redis)."""
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1.0).close()
    except OSError:
        pytest.skip("Redis is not reachable on 127.0.0.1:6379")
    real = socket.getaddrinfo
    looked_up_in: list[str] = []

    def slow_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == SLOW_NAME:
            looked_up_in.append(threading.current_thread().name)
            time.sleep(2.0)
            host = "127.0.0.1"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    prefix = f"tqdns{uuid.uuid4().hex[:10]}"
    app = TaskQ("dns", broker=f"redis://{SLOW_NAME}:6379/0", environ={},
                broker_transport_options={"global_keyprefix": f"{prefix}:"},
                task_default_queue=prefix)
    lone = LoneConsumer(app)
    try:
        consumer = lone.connect()
        assert looked_up_in, "the slow name was never looked up"
        assert threading.main_thread().name not in looked_up_in
        assert consumer.connection is not None
        assert consumer.connection.hostname == "127.0.0.1"
    finally:
        lone.close()
        import redis

        client = redis.Redis(socket_timeout=5)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()
