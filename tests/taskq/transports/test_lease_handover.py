"""What the lease transports (Redis, SQLite) offer the worker beyond kombu's API, on the real
brokers: a new connection adopts or releases the leases a lost one held, renewal reports
lost leases, and SQLite's lease deadlines do not follow the wall clock.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

import taskq  # noqa: F401 - registers the sqlite:// alias
from taskq.transports.redis import TRANSPORT_ALIAS

LEASE = 2.0

Connect = Callable[..., Connection]


@pytest.fixture(params=["redis", "sqlite"])
def connect(request: pytest.FixtureRequest, tmp_path: Path, unique: str) -> Iterator[Connect]:
    """Connections to one broker of each kind, with a short lease."""
    opened: list[Connection] = []
    if request.param == "redis":
        redis_url = request.getfixturevalue("redis_url")
        client = request.getfixturevalue("redis_client")
        prefix = f"{unique}:"

        def connect(**options: Any) -> Connection:
            conn = Connection(redis_url, transport=TRANSPORT_ALIAS, transport_options={
                "global_keyprefix": prefix, "lease_timeout": LEASE, **options})
            opened.append(conn)
            return conn
    else:
        client, prefix = None, ""

        def connect(**options: Any) -> Connection:
            conn = Connection(f"sqlite:///{tmp_path}/broker.db",
                              transport_options={"lease_timeout": LEASE, **options})
            opened.append(conn)
            return conn

    yield connect
    for conn in opened:
        conn.release()
    if client is not None:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)


def publish(conn: Connection, queue: Queue, bodies: list[Any]) -> None:
    producer = Producer(conn)
    for body in bodies:
        producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                         declare=[queue], serializer="json")


def consume(conn: Connection, queue: Queue, prefetch: int) -> list[Any]:
    inbox: list[Any] = []
    Consumer(conn, [queue], callbacks=[lambda body, message: inbox.append(message)],
             accept=["json"], prefetch_count=prefetch).consume()
    return inbox


def messages_left(conn: Connection, queue: Queue) -> int:
    """Messages queued or leased on the broker (flushing the connection's deferred acks)."""
    channel = conn.default_channel
    store = getattr(channel, "store", None)
    if store is not None:
        return int(store.read(lambda db: db.execute(
            "SELECT count(*) FROM taskq_messages WHERE queue = ?", (queue.name,)
        ).fetchone()[0]))
    client = channel._client_for_scripts()
    return int(channel._size(queue.name)) + int(client.zcard(channel.leases_key))


def drain_until(conn: Connection, done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        try:
            conn.drain_events(timeout=0.05)
        except TimeoutError:
            pass
    return True


def test_a_new_connection_adopts_running_leases_and_releases_reserved_ones(
        connect: Connect, unique: str) -> None:
    """Given a connection lost while holding three messages (one "running", two reserved),
    when a new connection adopts the first and releases the others, then the two come back
    at once (redelivered), the adopted one is kept through three leases, and acking it
    through the new connection leaves nothing on the broker."""
    queue = Queue(unique, Exchange(unique), routing_key=unique)
    old = connect()
    publish(old, queue, ["running", "reserved-1", "reserved-2"])
    held = consume(old, queue, prefetch=3)
    assert drain_until(old, lambda: len(held) == 3, 10)
    old.collect()  # lost: nothing more is said on it

    new = connect()
    again = consume(new, queue, prefetch=10)
    channel = new.default_channel
    assert channel.adopt([held[0]]) == []
    assert channel.release_orphans(held[1:]) == 2
    assert drain_until(new, lambda: len(again) == 2, LEASE / 2)  # well within the lease
    assert [m.payload for m in again] == ["reserved-1", "reserved-2"]
    assert all(m.delivery_info["redelivered"] for m in again)
    assert not drain_until(new, lambda: len(again) > 2, 3 * LEASE)  # renewed: not back
    held[0].ack()  # through the adopted lease, on the new channel
    for m in again:
        m.ack()
    assert messages_left(connect(), queue) == 0


def test_renewal_tells_the_callback_which_leases_were_lost(
        connect: Connect, unique: str) -> None:
    """Given a consumer holding two messages, when their leases run out unrenewed and
    another consumer's sweep puts them back, then the next renewal names both deliveries."""
    queue = Queue(unique, Exchange(unique), routing_key=unique)
    holder = connect()
    publish(holder, queue, ["a", "b"])
    held = consume(holder, queue, prefetch=2)
    assert drain_until(holder, lambda: len(held) == 2, 10)
    channel = holder.default_channel
    lost: list[list[str]] = []
    channel.on_leases_lost = lost.append
    other = connect()
    taken = consume(other, queue, prefetch=1)  # restores expired leases, takes one
    time.sleep(LEASE + 0.5)  # the stimulus: the holder does not renew for a whole lease
    assert drain_until(other, lambda: len(taken) == 1, 10)
    assert channel.renew_leases() == 0
    assert [sorted(tags) for tags in lost] == [sorted(m.delivery_tag for m in held)]
    assert not channel.qos.leases


CLOCK_STEP = textwrap.dedent("""
    import json, sys, time
    real = time.time
    step = [0.0]
    time.time = lambda: real() + step[0]  # before taskq is imported: what it sees as wall time
    from kombu import Connection, Consumer, Exchange, Producer, Queue
    import taskq

    url, lease = sys.argv[1], 2.0
    queue = Queue("q", Exchange("q"), routing_key="q")

    def connect():
        return Connection(url, transport_options={"lease_timeout": lease,
                                                  "restore_interval": 0.2})

    def consume(conn, inbox):
        Consumer(conn, [queue], callbacks=[lambda b, m: inbox.append(m)], accept=["json"],
                 prefetch_count=1).consume()

    def drain(conns, seconds):
        end = real() + seconds
        while real() < end:
            for c in conns:
                try:
                    c.drain_events(timeout=0.05)
                except TimeoutError:
                    pass

    out = {}
    Producer(connect()).publish("m", exchange=queue.exchange, routing_key="q",
                                declare=[queue], serializer="json")
    # Forward: a live holder renews; the wall clock jumps an hour ahead.
    holder, other = connect(), connect()
    a, b = [], []
    consume(holder, a)
    drain([holder], 1.0)
    consume(other, b)
    step[0] = 3600.0
    drain([holder, other], 3 * lease)
    out["forward_redelivered"] = len(b)
    a[0].ack() if a else None
    # Backward: a holder dies; the wall clock steps an hour back.
    step[0] = 0.0
    Producer(connect()).publish("n", exchange=queue.exchange, routing_key="q",
                                declare=[queue], serializer="json")
    dead, c = connect(), []
    consume(dead, c)
    drain([dead], 1.0)
    dead.collect()
    step[0] = -3600.0
    survivor, d = connect(), []
    consume(survivor, d)
    drain([survivor], 3 * lease + 1)
    out["backward_came_back"] = len(d)
    print(json.dumps(out), flush=True)
""")


def test_a_wall_clock_step_neither_expires_nor_immortalises_sqlite_leases(
        tmp_path: Path) -> None:
    """Given consumers in a process whose wall clock steps an hour (forward, then back),
    then a live holder keeps its lease, and a dead holder's message still comes back after
    the lease."""
    proc = subprocess.run(
        [sys.executable, "-c", CLOCK_STEP, f"sqlite:///{tmp_path}/broker.db"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = proc.stdout.strip().splitlines()[-1]
    assert result == '{"forward_redelivered": 0, "backward_came_back": 1}', proc.stderr
