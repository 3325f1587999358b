"""``taskq-stress bench redis``: fetch + ack throughput of taskq's Redis transport and kombu's.

Per transport and mode, publishes the messages (kombu's producer, untimed), then times
consuming and acking all of them one at a time:

- ``get``: ``basic_get`` + ``ack`` per message (two round trips each on both transports);
- ``consume pN``: a consumer with prefetch N draining the connection, acking in the callback
  (taskq fetches the free prefetch window in one script call).

Keys live under a fresh ``global_keyprefix`` that is deleted afterwards; nothing else on the
Redis server is touched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

from taskq.transports.redis import TRANSPORT_ALIAS

TRANSPORTS = {"kombu redis": None, "taskq redis": TRANSPORT_ALIAS}


def _publish(url: str, prefix: str, queue: Queue, count: int) -> None:
    with Connection(url, transport_options={"global_keyprefix": prefix}) as conn:
        producer = Producer(conn)
        body = {"task": "bench", "args": [1, 2], "kwargs": {}}
        for _ in range(count):
            producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                             declare=[queue], serializer="json")


def _get_and_ack(conn: Connection, queue: Queue, count: int) -> int:
    bound = queue(conn.default_channel)
    done = 0
    while done < count:
        message = bound.get()
        if message is None:
            break
        message.ack()
        done += 1
    return done


def _consume_and_ack(prefetch: int) -> Callable[[Connection, Queue, int], int]:
    def run(conn: Connection, queue: Queue, count: int) -> int:
        done = 0

        def on_message(body: Any, message: Any) -> None:
            nonlocal done
            message.ack()
            done += 1

        with Consumer(conn, [queue], callbacks=[on_message], accept=["json"],
                      prefetch_count=prefetch):
            while done < count:
                try:
                    conn.drain_events(timeout=2)
                except TimeoutError:
                    break
        return done
    return run


def measure(url: str, transport: str | None, mode: Callable[[Connection, Queue, int], int],
            count: int) -> float:
    prefix = f"bench{uuid.uuid4().hex[:10]}:"
    queue = Queue("bench", Exchange("bench"), routing_key="bench")
    try:
        _publish(url, prefix, queue, count)
        with Connection(url, transport=transport,
                        transport_options={"global_keyprefix": prefix}) as conn:
            conn.connect()
            started = time.perf_counter()
            done = mode(conn, queue, count)
            elapsed = time.perf_counter() - started
        if done != count:
            raise RuntimeError(f"consumed {done} of {count} messages")
        return count / elapsed
    finally:
        client = redis.Redis.from_url(url)
        stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if stale:
            client.delete(*stale)
        client.close()


def _modes() -> dict[str, Callable[[Connection, Queue, int], int]]:
    return {
        "get + ack": _get_and_ack,
        "consume p1 + ack": _consume_and_ack(1),
        "consume p10 + ack": _consume_and_ack(10),
        "consume p100 + ack": _consume_and_ack(100),
    }


def rows(url: str, messages: int) -> Iterator[str]:
    """A table of messages per second, one line per mode, each yielded once measured."""
    yield f"{'mode':<20}" + "".join(f"{name:>16}" for name in TRANSPORTS) + "   msgs/s"
    for label, mode in _modes().items():
        rates = [measure(url, transport, mode, messages) for transport in TRANSPORTS.values()]
        yield f"{label:<20}" + "".join(f"{rate:>16,.0f}" for rate in rates)
