"""``taskq-stress bench consumer``: the floor under a worker's main process.

A bare kombu consumer on kombu's event loop, as the worker's is (taskq's transport on Redis,
py-amqp on RabbitMQ), receives the noop task messages ``bench drain`` uses and acks each,
with the worker's prefetch (8: -c 2, multiplier 4), and nothing else: no task protocol, no
pool, no bookkeeping. Its CPU per message is what kombu and the broker client cost on their
own; a worker's main process cannot go below it. ``--settle-each`` adds what DESIGN.md's
table makes a worker pay on Redis besides: each early ack applied (a round trip) before the
job may start.
"""

from __future__ import annotations

import resource
import time
import uuid
from dataclasses import dataclass
from typing import Any

from kombu import Connection, Consumer, Exchange, Queue
from kombu.asynchronous import Hub

from stress.bench_common import cleanup, fill, transport_options

PREFETCH = 8  # a -c 2 worker's, with the default multiplier (4)


@dataclass(frozen=True)
class ConsumerRun:
    broker: str
    messages: int
    seconds: float
    cpu_us: float  # this process's CPU (user + system) per message

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def consume_once(url: str, messages: int, timeout: float = 120.0, *,
                 settle_each: bool = False) -> ConsumerRun:
    """Fill a fresh queue with ``messages`` noop tasks, then time consuming and acking them.
    With ``settle_each`` (Redis), each ack is applied before the next message is taken, as
    an early ack must be before its job reaches a child (one SETTLE round trip per message,
    waited for); otherwise acks ride with the next fetch, as kombu sends them."""
    queue_name = f"bench.{uuid.uuid4().hex[:8]}"
    prefix = f"{queue_name}:"
    options = transport_options(url, prefix)
    transport = "taskq.transports.redis:Transport" if url.startswith("redis") else None
    try:
        fill(url, options, queue_name, messages, "bench.noop")
        queue = Queue(queue_name, Exchange(queue_name, "direct"), routing_key=queue_name,
                      durable=True)
        done = 0

        def on_message(message: Any) -> None:
            nonlocal done
            message.ack()
            if settle_each and hasattr(message.channel, "flush_acks"):
                message.channel.flush_acks()
            done += 1

        with Connection(url, transport=transport, transport_options=options) as conn:
            consumer = Consumer(conn, [queue], on_message=on_message, accept=["json"],
                                prefetch_count=PREFETCH)
            consumer.consume()
            hub = Hub()
            try:
                conn.register_with_event_loop(hub)
                deadline = time.monotonic() + timeout
                started, cpu = time.monotonic(), _cpu()
                while done < messages:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"consumed {done}/{messages} in {timeout} s")
                    hub.run_once()
                seconds, used = time.monotonic() - started, _cpu() - cpu
            finally:
                hub.close()
        return ConsumerRun(url.split("://")[0], messages, seconds, used / messages * 1e6)
    finally:
        cleanup(url, prefix, queue_name)
