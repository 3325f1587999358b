"""What the ``taskq-stress bench`` modules share: a run's rate, its broker options, filling
its queue with tasks, and deleting what it made.

Nothing of kombu or taskq is imported at the top: ``bench publish`` imports this module in
the process that times a Celery client or another tree's taskq, which must not share it
with this tree's taskq.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any


class Rated:
    """A run that did ``count`` things in ``seconds`` (mixed into the frozen run dataclasses,
    which declare both fields)."""

    count: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


_COMPILED: set[str] = set()


def compile_checkout() -> None:
    """Write the ``.pyc`` files of this checkout's ``taskq`` and ``stress`` packages, once
    per process, as ``pip install`` does for an installed package (Celery's site-packages
    have theirs): a benchmark's worker then does not compile taskq from source at every
    start, which it does in a checkout run with ``PYTHONDONTWRITEBYTECODE`` set. A package
    that cannot be written to (installed read-only) has its files already."""
    import compileall
    import importlib.util
    from pathlib import Path

    for name in ("taskq", "stress"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None or name in _COMPILED:
            continue
        _COMPILED.add(name)
        with contextlib.suppress(OSError):
            compileall.compile_dir(str(Path(spec.origin).parent), quiet=2)


def transport_options(url: str, prefix: str) -> dict[str, Any]:
    """On Redis, every key of the run under ``prefix``; other brokers take no options."""
    return {"global_keyprefix": prefix} if url.startswith("redis") else {}


def fill(url: str, options: dict[str, Any], queue: str, count: int, task: str) -> None:
    """Declare ``queue`` and publish ``count`` persistent ``task`` messages to it."""
    from kombu import Connection, Exchange, Producer, Queue

    from taskq.protocol import TaskMessage, to_wire

    q = Queue(queue, Exchange(queue, "direct"), routing_key=queue, durable=True)
    with Connection(url, transport_options=options) as conn:
        producer = Producer(conn.default_channel)
        q(conn.default_channel).declare()
        for _ in range(count):
            body, headers, props = to_wire(TaskMessage(task=task, id=str(uuid.uuid4()),
                                                       ignore_result=True))
            producer.publish(body, exchange=q.exchange, routing_key=queue, headers=headers,
                             serializer="json", delivery_mode=2, **props)


def cleanup(url: str, prefix: str, queue: str) -> None:
    """Delete what the run made: every key under its prefix on Redis, the queue elsewhere."""
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        try:
            stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if stale:
                client.delete(*stale)
        finally:
            client.close()
        return
    from kombu import Connection

    with Connection(url) as conn, contextlib.suppress(Exception):
        conn.default_channel.queue_delete(queue)


def spread(values: list[float], digits: int = 0) -> dict[str, Any]:
    """Median, range and every value of a benchmark's rounds (rounded to ``digits``)."""
    import statistics

    def r(v: float) -> float:
        return round(v, digits) if digits else round(v)

    return {"runs": len(values), "median": r(statistics.median(values)), "min": r(min(values)),
            "max": r(max(values)), "values": [r(v) for v in values]}
