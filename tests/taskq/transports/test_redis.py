"""taskq's Redis transport against the real Redis: leases, renewal, restore, interop.

Every test has its own ``global_keyprefix`` and deletes only its own keys; waits are on
conditions with deadlines (the leases here are short: a second or two).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub

from chaos import FakeClock
from taskq.errors import ConfigurationError
from taskq.transports import redis as lease_redis
from taskq.transports.lease import lease_of
from taskq.transports.redis import TRANSPORT_ALIAS

pytestmark = pytest.mark.redis

Connect = Callable[..., Connection]


@pytest.fixture
def prefix(unique: str, redis_client: Any) -> Iterator[str]:
    prefix = f"{unique}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def connect(redis_url: str, prefix: str) -> Iterator[Connect]:
    """Connections on the lease transport; ``stock=True`` for kombu's own Redis transport."""
    opened: list[Connection] = []

    def connect(stock: bool = False, **options: Any) -> Connection:
        conn = Connection(redis_url, transport=None if stock else TRANSPORT_ALIAS,
                          transport_options={"global_keyprefix": prefix, **options})
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.release()


def make_queue(name: str) -> Queue:
    return Queue(name, Exchange(name), routing_key=name)


def publish(conn: Connection, queue: Queue, bodies: list[Any], **kwargs: Any) -> None:
    producer = Producer(conn)
    for body in bodies:
        producer.publish(body, exchange=queue.exchange, routing_key=queue.routing_key,
                         declare=[queue], serializer="json", **kwargs)


def drain_until(conns: list[Connection], done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        for conn in conns:
            try:
                conn.drain_events(timeout=0.05)
            except TimeoutError:
                pass
    return True


class Inbox:
    """A consumer's received messages."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    def __call__(self, body: Any, message: Any) -> None:
        self.messages.append(message)

    @property
    def bodies(self) -> list[Any]:
        return [m.payload for m in self.messages]


def consume(conn: Connection, queues: list[Queue], prefetch: int | None = None,
            no_ack: bool = False) -> Inbox:
    inbox = Inbox()
    consumer = Consumer(conn, queues, callbacks=[inbox], accept=["json"], no_ack=no_ack,
                        prefetch_count=prefetch)
    consumer.consume()
    return inbox


def keys(redis_client: Any, prefix: str) -> set[str]:
    return {k.decode()[len(prefix):] for k in redis_client.scan_iter(match=f"{prefix}*")}


def lease_count(redis_client: Any, prefix: str) -> int:
    return int(redis_client.zcard(f"{prefix}taskq:leases"))


# -- consuming what kombu publishes ---------------------------------------------------------
def test_stock_kombu_messages_are_consumed_in_order_and_acks_leave_only_kombus_bindings(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, [{"n": n} for n in range(5)])
    conn = connect()
    inbox = consume(conn, [queue])

    assert drain_until([conn], lambda: len(inbox.messages) == 5, timeout=5)
    assert inbox.bodies == [{"n": n} for n in range(5)]
    assert lease_count(redis_client, prefix) == 5 and not redis_client.exists(prefix + unique)

    for message in inbox.messages:
        message.ack()
    assert {k for k in keys(redis_client, prefix) if not k.startswith("_kombu.binding")} \
        == set()


def test_messages_published_through_the_lease_transport_keep_kombus_layout(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(), queue, ["hello"])
    assert redis_client.llen(prefix + unique) == 1  # kombu's list, LPUSHed

    stock = connect(stock=True)
    inbox = consume(stock, [queue])
    assert drain_until([stock], lambda: bool(inbox.messages), timeout=5)
    inbox.messages[0].ack()
    assert inbox.bodies == ["hello"]


def test_a_fetch_takes_the_free_prefetch_window_in_one_round_trip(
        connect: Connect, monkeypatch: pytest.MonkeyPatch, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, list(range(12)))
    fetches: list[int] = []
    real_fetch = lease_redis.Channel._fetch

    def counting_fetch(self: Any, queues: Any, limit: int, leased: Any = None) -> Any:
        got = real_fetch(self, queues, limit, leased)
        fetches.append(len(got))
        return got

    monkeypatch.setattr(lease_redis.Channel, "_fetch", counting_fetch)
    conn = connect()
    inbox = consume(conn, [queue], prefetch=5)

    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    assert (fetches, inbox.bodies) == ([5], [0, 1, 2, 3, 4])
    for message in inbox.messages:
        message.ack()
    assert drain_until([conn], lambda: len(inbox.messages) == 10, timeout=5)
    assert fetches == [5, 5]


def test_a_fetch_sent_again_after_a_lost_reply_returns_what_it_leased(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    """redis-py sends a script again on a new connection when the reply was lost with the
    old one (a cut connection). The second run returns the messages the first one leased,
    under the same lease ids, and pops nothing more (canvas suite, Redis seed 4: a message
    leased by a fetch whose reply was cut sat unseen until its lease ran out)."""
    queue = make_queue(unique)
    publish(connect(stock=True), queue, [1, 2, 3])
    channel = connect().default_channel
    keys_ = [channel.leases_key, channel.leased_key, f"{prefix}{unique}"]
    args = [2, 60_000, f"{channel.consumer_id}:0000000099:", "L"]
    first = channel._run("FETCH", keys_, args)
    again = channel._run("FETCH", keys_, args)
    assert again == first and len(first) == 1 + 2 * 3
    assert int(redis_client.llen(f"{prefix}{unique}")) == 1, "the retry popped nothing more"
    assert lease_count(redis_client, prefix) == 2


def test_messages_a_fetch_leased_when_its_reply_was_lost_come_back_at_once(
        connect: Connect, redis_client: Any, prefix: str, unique: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetch script ran (the messages are leased) and the connection was cut before its
    reply arrived: the next connection of this process requeues those leases at once,
    instead of leaving the messages unseen for a whole lease (60 s here)."""
    queue = make_queue(unique)
    publish(connect(stock=True), queue, [1, 2, 3])
    real_run = lease_redis.Channel._run

    def reply_lost(self: Any, name: str, keys_: Any, args: Any) -> Any:
        result = real_run(self, name, keys_, args)
        if name == "FETCH" and len(result) > 1:
            raise redis.ConnectionError("Connection closed by server.")
        return result

    monkeypatch.setattr(lease_redis.Channel, "_run", reply_lost)
    lost = connect(lease_timeout=60)
    with pytest.raises(redis.ConnectionError):
        lost.default_channel.basic_get(unique)
    assert lease_count(redis_client, prefix) == 1 and redis_client.llen(f"{prefix}{unique}") == 2
    monkeypatch.setattr(lease_redis.Channel, "_run", real_run)
    conn = connect(lease_timeout=60)
    inbox = consume(conn, [queue], prefetch=5)
    assert drain_until([conn], lambda: len(inbox.messages) == 3, timeout=10)
    assert sorted(inbox.bodies) == [1, 2, 3]


def test_a_celery_send_task_reaches_a_lease_transport_consumer(
        connect: Connect, prefix: str, redis_url: str, unique: str) -> None:
    celery = pytest.importorskip("celery")
    app = celery.Celery("interop", broker=redis_url, set_as_current=False)
    app.conf.update(broker_transport_options={"global_keyprefix": prefix},
                    task_default_queue=unique)
    try:
        sent = app.send_task("proj.add", (1, 2), queue=unique)
    finally:
        app.close()
    conn = connect()
    inbox = consume(conn, [make_queue(unique)])

    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    message = inbox.messages[0]
    assert (message.headers["task"], message.headers["id"]) == ("proj.add", sent.id)
    message.ack()


def test_fanout_broadcasts_reach_lease_transport_consumers(
        connect: Connect, unique: str) -> None:
    exchange = Exchange(f"{unique}.bcast", "fanout")
    queue = Queue(f"{unique}.bcast.q", exchange, auto_delete=True)
    conn = connect()
    inbox = consume(conn, [queue], no_ack=True)
    try:
        conn.drain_events(timeout=0.2)  # subscribes
    except TimeoutError:
        pass
    Producer(connect(stock=True)).publish({"cmd": "ping"}, exchange=exchange, declare=[exchange])

    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    assert inbox.bodies == [{"cmd": "ping"}]


def test_priority_lists_and_other_queues_are_fetched_while_blocked_on_the_first(
        connect: Connect, unique: str) -> None:
    first, second = make_queue(f"{unique}.a"), make_queue(f"{unique}.b")
    conn = connect()
    inbox = consume(conn, [first, second])
    try:
        conn.drain_events(timeout=0.2)  # now waiting on the first queue's main list
    except TimeoutError:
        pass
    stock = connect(stock=True)
    publish(stock, first, ["urgent"], priority=9)
    publish(stock, second, ["other queue"])

    assert drain_until([conn], lambda: len(inbox.messages) == 2, timeout=30)
    assert sorted(inbox.bodies) == ["other queue", "urgent"]


def test_no_ack_consumers_get_each_message_once_and_hold_no_lease(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, ["reply"])
    conn = connect(lease_timeout=0.3, restore_interval=0.1)
    inbox = consume(conn, [queue], no_ack=True)

    assert drain_until([conn], lambda: bool(inbox.messages), timeout=30)
    drain_until([conn], lambda: False, timeout=1.0)  # three leases more: nothing comes back
    assert inbox.bodies == ["reply"]
    assert lease_count(redis_client, prefix) == 0


# -- leases ---------------------------------------------------------------------------------
CONSUMER = textwrap.dedent("""
    import sys
    from kombu import Connection, Consumer, Exchange, Queue
    url, prefix, name, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    conn = Connection(url, transport=sys.argv[5], transport_options={
        "global_keyprefix": prefix, "lease_timeout": 3, "renew_interval": 0.25,
        "restore_interval": 0.25})
    held = []
    consumer = Consumer(conn, [Queue(name, Exchange(name), routing_key=name)],
                        callbacks=[lambda body, message: held.append(message)],
                        accept=["json"], prefetch_count=count)
    consumer.consume()
    while len(held) < count:
        try:
            conn.drain_events(timeout=0.1)
        except TimeoutError:
            pass
    print("holding", len(held), flush=True)
    while True:  # never acks; renews until killed
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            pass
""")


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def test_a_killed_consumers_20_messages_go_to_another_within_the_lease(
        connect: Connect, redis_client: Any, redis_url: str, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, list(range(20)))
    proc = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, redis_url, prefix, unique, "20", TRANSPORT_ALIAS],
        stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(proc, timeout=20).strip() == "holding 20"
        assert lease_count(redis_client, prefix) == 20
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The dead consumer's leases end at these deadlines (ms of the Redis clock, which the
    # restore compares against): none of its messages may come back before them.
    deadlines = [score for _, score in
                 redis_client.zrange(f"{prefix}taskq:leases", 0, -1, withscores=True)]
    assert len(deadlines) == 20
    conn = connect(lease_timeout=2, restore_interval=0.25)
    first_seen_ms: list[float] = []

    def all_back() -> bool:
        if inbox.messages and not first_seen_ms:
            seconds, micros = redis_client.time()
            first_seen_ms.append(seconds * 1000 + micros / 1000)
        return len(inbox.messages) == 20

    inbox = consume(conn, [queue], prefetch=20)
    # Within the lease, not kombu's visibility timeout (an hour) or its ~100 s restore sweep;
    # the deadline is generous for a loaded machine.
    assert drain_until([conn], all_back, timeout=30)
    assert sorted(inbox.bodies) == list(range(20))
    assert inbox.bodies == list(range(20))  # restored in the order they were fetched
    assert all(m.delivery_info["redelivered"] for m in inbox.messages)
    assert first_seen_ms[0] >= min(deadlines), "a message came back before its lease ended"


@pytest.mark.parametrize("loop", ["drain_events", "hub"])
def test_a_renewing_consumer_keeps_its_message_through_three_leases(
        connect: Connect, redis_client: Any, prefix: str, unique: str, loop: str) -> None:
    # Renewed every 0.2 s, a lease of 3 s survives a 2.8 s stall of this process.
    lease = 3.0
    queue = make_queue(unique)
    publish(connect(stock=True), queue, ["long task"])
    options = {"lease_timeout": lease, "renew_interval": 0.2, "restore_interval": 0.2}
    holder, other = connect(**options), connect(**options)
    held = consume(holder, [queue], prefetch=1)
    hub = Hub()
    if loop == "hub":
        holder.register_with_event_loop(hub)
        step: Callable[[], None] = hub.run_once
    else:
        def step() -> None:
            drain_until([holder], lambda: False, timeout=0.05)
    deadline = time.monotonic() + 30
    while not held.messages and time.monotonic() < deadline:
        step()
    assert held.bodies == ["long task"]
    stolen = consume(other, [queue], prefetch=1)

    until = time.monotonic() + 3.2 * lease  # a lower bound: a slow machine waits longer
    while time.monotonic() < until:
        step()
        drain_until([other], lambda: False, timeout=0.05)  # restores every 0.2 s
    assert stolen.messages == [] and held.bodies == ["long task"]

    held.messages[0].ack()
    if loop == "hub":  # on an event loop the ack goes in the loop's next tick
        assert lease_count(redis_client, prefix) == 1
        hub.run_once()
    assert lease_count(redis_client, prefix) == 0
    hub.close()


def test_renewal_is_due_on_the_transports_clock(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    # Given a held message on a connection whose clock the test drives (renewal every 20 s)
    clock = FakeClock(start=1000.0)
    queue = make_queue(unique)
    publish(connect(stock=True), queue, ["task"])
    conn = connect(lease_timeout=60, renew_interval=20, clock=clock.monotonic)
    inbox = consume(conn, [queue], prefetch=1)
    assert drain_until([conn], lambda: bool(inbox.messages), timeout=30)
    channel = inbox.messages[0].channel
    leases = f"{prefix}taskq:leases"
    [(lease_id, _)] = redis_client.zrange(leases, 0, -1, withscores=True)
    old = redis_client.time()[0] * 1000 - 1000  # a deadline renewal would move forward
    redis_client.zadd(leases, {lease_id: old})

    # When the clock has not reached the renewal yet, the lease is left alone
    clock.advance(19.5)
    channel.renew_if_due()
    assert redis_client.zscore(leases, lease_id) == old
    # When it has, the lease is extended by a whole lease (on the Redis clock)
    clock.advance(1)
    channel.renew_if_due()
    assert redis_client.zscore(leases, lease_id) >= old + 60_000


def test_an_expired_lease_comes_back_intact_and_the_old_holders_ack_is_a_no_op(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    headers = {"argsrepr": [], "big": 12345678901234567, "text": "é \" \\ /"}
    publish(connect(stock=True), queue, [{"args": [], "n": 2**60}], headers=headers)
    stale = connect(lease_timeout=0.5)
    bound = queue(stale.default_channel)
    first = bound.get()  # basic_get never renews: the lease runs out
    assert first is not None and not first.delivery_info.get("redelivered")
    conn = connect(lease_timeout=30, restore_interval=0.1)
    inbox = consume(conn, [queue])

    assert drain_until([conn], lambda: bool(inbox.messages), timeout=30)
    again = inbox.messages[0]
    assert again.payload == {"args": [], "n": 2**60}
    assert {k: again.headers[k] for k in headers} == headers
    assert again.delivery_info["redelivered"] is True

    first.ack()  # its lease is gone: dropped, and the new holder's lease is untouched
    assert lease_count(redis_client, prefix) == 1
    again.ack()
    assert lease_count(redis_client, prefix) == 0


def test_reject_with_requeue_puts_the_message_back_first_marked_redelivered(
        connect: Connect, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, ["first", "second"])
    conn = connect()
    inbox = consume(conn, [queue], prefetch=1)
    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    inbox.messages[0].reject(requeue=True)

    assert drain_until([conn], lambda: len(inbox.messages) == 2, timeout=5)
    assert inbox.bodies == ["first", "first"]
    assert inbox.messages[1].delivery_info["redelivered"] is True


def test_reject_without_requeue_deletes_the_message(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, ["poison"])
    conn = connect()
    inbox = consume(conn, [queue])
    assert drain_until([conn], lambda: bool(inbox.messages), timeout=5)
    inbox.messages[0].reject(requeue=False)
    assert lease_count(redis_client, prefix) == 0
    assert not redis_client.exists(prefix + unique, f"{prefix}taskq:leased")


def test_release_requeues_reserved_messages_at_once_in_order(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, ["a", "b", "c"])
    worker = connect(lease_timeout=60)
    inbox = consume(worker, [queue], prefetch=3)
    assert drain_until([worker], lambda: len(inbox.messages) == 3, timeout=5)

    channel = inbox.messages[0].channel
    assert channel.release([m.delivery_tag for m in inbox.messages[:2]]) == 2
    other = connect()
    taken = consume(other, [queue], prefetch=2)
    # Well before the 60 s lease would have brought them back.
    assert drain_until([other], lambda: len(taken.messages) == 2, timeout=30)
    assert taken.bodies == ["a", "b"]
    assert lease_count(redis_client, prefix) == 3  # c still held; a and b by the other
    inbox.messages[0].ack()  # released: no lease any more, dropped
    assert lease_count(redis_client, prefix) == 3


def test_closing_a_connection_requeues_nothing_the_lease_brings_it_back(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, ["running"])
    worker = connect(lease_timeout=1)
    inbox = consume(worker, [queue])
    assert drain_until([worker], lambda: bool(inbox.messages), timeout=5)
    worker.release()  # kombu's transport would requeue here, running or not
    assert redis_client.llen(prefix + unique) == 0
    assert lease_count(redis_client, prefix) == 1

    conn = connect(restore_interval=0.1)
    again = consume(conn, [queue])
    assert drain_until([conn], lambda: bool(again.messages), timeout=30)
    assert again.bodies == ["running"]


def test_consuming_on_kombus_event_loop(connect: Connect, unique: str) -> None:
    queue = make_queue(unique)
    conn = connect()
    inbox = consume(conn, [queue], prefetch=10)
    hub = Hub()
    conn.register_with_event_loop(hub)
    try:
        for _ in range(3):
            hub.run_once()  # now blocked on the queue
        publish(connect(stock=True), queue, list(range(5)))
        deadline = time.monotonic() + 5
        while len(inbox.messages) < 5 and time.monotonic() < deadline:
            hub.run_once()
        assert inbox.bodies == list(range(5))
        for message in inbox.messages:
            message.ack()
    finally:
        hub.close()


# -- options --------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "named"), [
    ({"lease_timeout": 0}, "lease_timeout"),
    ({"lease_timeout": "soon"}, "lease_timeout"),
    ({"lease_timeout": 10, "renew_interval": 10}, "renew_interval"),
    ({"restore_interval": -1}, "restore_interval"),
    ({"clock": 5}, "clock"),
])
def test_bad_lease_options_are_refused_naming_the_option(
        redis_url: str, options: dict[str, Any], named: str) -> None:
    conn = Connection(redis_url, transport=TRANSPORT_ALIAS, transport_options=options)
    with pytest.raises(ConfigurationError, match=named):
        conn.transport  # noqa: B018 - creating the transport checks the options


def test_lease_defaults_follow_the_lease_timeout() -> None:
    default = lease_redis.LeaseSettings.from_options({})
    assert (default.lease_timeout, default.renew_interval, default.restore_interval) \
        == (60.0, 20.0, 5.0)
    short = lease_redis.LeaseSettings.from_options({"lease_timeout": 3})
    assert (short.renew_interval, short.restore_interval) == (1.0, 0.5)


# -- deferred acks on an event loop ---------------------------------------------------------
def test_on_a_loop_acks_are_sent_together_with_the_next_fetch_or_tick_or_close(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    queue = make_queue(unique)
    publish(connect(stock=True), queue, list(range(9)))
    conn = connect()
    inbox = consume(conn, [queue], prefetch=3)
    hub = Hub()
    conn.register_with_event_loop(hub)
    calls: list[str] = []
    for channel in conn.transport.channels:
        run = channel._run

        def counting_run(name: str, keys: Any, args: Any, run: Any = run) -> Any:
            calls.append(name)
            return run(name, keys, args)

        channel._run = counting_run  # type: ignore[method-assign]

    def deliver(count: int) -> list[Any]:
        deadline = time.monotonic() + 5
        while len(inbox.messages) < count and time.monotonic() < deadline:
            hub.run_once()
        return inbox.messages[count - 3:count]

    # Acked between ticks: one script for the three in the loop's next tick (a SETTLE, or the
    # FETCH when the reply to the wait for messages is already there).
    for message in deliver(3):
        message.ack()
    assert lease_count(redis_client, prefix) == 3
    calls.clear()
    hub.run_once()
    assert calls in (["SETTLE"], ["SETTLE", "FETCH"], ["FETCH"])
    assert lease_count(redis_client, prefix) == len(inbox.messages) - 3  # the next ones
    # Acks pending when a fetch runs go in the fetch's script.
    for message in deliver(6):
        message.ack()
    calls.clear()
    assert conn.default_channel.basic_get(unique) is not None
    assert calls == ["FETCH"] and lease_count(redis_client, prefix) == 1
    # Closing sends what is still pending.
    for message in deliver(8)[1:]:
        message.ack()
    conn.release()
    assert lease_count(redis_client, prefix) == 1  # the basic_get delivery, never acked
    hub.close()


def test_collecting_a_lost_connection_sends_nothing_and_drops_the_deferred_acks(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    # collect() is what the worker calls on a connection it lost: talking to a Redis that may
    # be black-holed would block the loop, so the acks are left to the leases.
    queue = make_queue(unique)
    publish(connect(stock=True), queue, [1, 2])
    conn = connect(lease_timeout=1, restore_interval=0.2)
    inbox = consume(conn, [queue], prefetch=2)
    hub = Hub()
    conn.register_with_event_loop(hub)
    deadline = time.monotonic() + 5
    while len(inbox.messages) < 2 and time.monotonic() < deadline:
        hub.run_once()
    for message in inbox.messages:
        message.ack()
    conn.collect()
    hub.close()
    assert lease_count(redis_client, prefix) == 2
    again = connect(lease_timeout=1, restore_interval=0.2)
    redelivered = consume(again, [queue], prefetch=2)
    assert drain_until([again], lambda: len(redelivered.messages) == 2, timeout=30)
    assert all(m.delivery_info["redelivered"] for m in redelivered.messages)



def _drop_on_first_delivery(dropping: Connection, queue: Queue) -> list[Any]:
    """Consume a batch of 5 on an event loop, as the worker does, and drop the connection
    from inside the first message's callback (what the worker's consumer does with a
    connection it found lost); returns the bodies delivered."""
    seen: list[Any] = []

    def drop_on_first(body: Any, message: Any) -> None:
        seen.append(body)
        dropping.collect()

    Consumer(dropping, [queue], callbacks=[drop_on_first], accept=["json"],
             prefetch_count=5).consume()
    hub = Hub()
    dropping.register_with_event_loop(hub)
    try:
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            hub.run_once()
    finally:
        hub.close()
    return seen


def test_a_connection_dropped_by_a_consumer_mid_batch_leaves_the_rest_to_their_leases(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    """On an event loop, as the worker consumes: the worker drops a connection it found lost
    from inside a message callback, while the rest of the fetched batch waits to be
    delivered. Those were then settled on the closed channel and the loop died of an
    AttributeError (canvas suite, Redis). Now they are not delivered and their leases bring
    all five back to another consumer."""
    queue = make_queue(unique)
    publish(connect(stock=True), queue, list(range(5)))
    assert _drop_on_first_delivery(connect(lease_timeout=1), queue) == [0]
    assert redis_client.llen(prefix + unique) == 0 and lease_count(redis_client, prefix) == 5

    conn = connect(restore_interval=0.1)
    again = consume(conn, [queue])
    assert drain_until([conn], lambda: len(again.messages) == 5, timeout=30)
    assert sorted(again.bodies) == [0, 1, 2, 3, 4]


def test_the_rest_of_a_batch_a_consumer_dropped_comes_back_with_the_next_fetch(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    """As above, with a lease far longer than the test: the four messages of the batch that
    were never delivered come back as soon as this process fetches through its next
    connection (canvas suite, Redis seed 3: one such message sat leased for a whole lease
    and the cell deadlocked); the one delivered to the dropped consumer keeps its lease."""
    queue = make_queue(unique)
    publish(connect(stock=True), queue, list(range(5)))
    assert _drop_on_first_delivery(connect(lease_timeout=60), queue) == [0]
    assert lease_count(redis_client, prefix) == 5

    conn = connect(lease_timeout=60)
    again = consume(conn, [queue])
    assert drain_until([conn], lambda: len(again.messages) == 4, timeout=10)
    assert sorted(again.bodies) == [1, 2, 3, 4]
    assert lease_count(redis_client, prefix) == 5  # 4 leased again here, 0 still leased


def test_confirming_acks_tells_an_applied_ack_from_an_expired_lease(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    """Three early acks whose replies were lost with a connection: the first reached Redis,
    the second did not (its lease is still held), the third did not and its lease expired
    (another consumer's restore put the message back). The next connection acks what is
    still held and says which are acked: the first two, not the third, whose message is
    back in its queue."""
    queue = make_queue(unique)
    publish(connect(stock=True), queue, ["applied", "held", "expired"])
    lost = connect(lease_timeout=60)
    messages = [lost.default_channel.basic_get(unique) for _ in range(3)]
    leases = [(m.delivery_tag, lease_of(m)) for m in messages]
    assert None not in dict(leases).values()
    assert [m.payload for m in messages] == ["applied", "held", "expired"]
    lost.default_channel.settle_leases(leases[:1])  # the ack whose reply was lost
    redis_client.zadd(f"{prefix}taskq:leases", {leases[2][1]: 0})  # ran out, unrenewed
    assert connect().default_channel.restore_expired() == 1

    assert connect().default_channel.confirm_acks(leases) == [True, True, False]
    assert lease_count(redis_client, prefix) == 0
    conn = connect(lease_timeout=60)
    inbox = consume(conn, [queue])
    assert drain_until([conn], lambda: len(inbox.messages) == 1, timeout=10)
    assert inbox.bodies == ["expired"]


# -- early acks answered on the loop (redis_acks.AckPipe) ------------------------------------
def _delivered_on_loop(conn: Connection, queue: Queue, count: int) -> tuple[Hub, Inbox]:
    inbox = consume(conn, [queue], prefetch=count)
    hub = Hub()
    conn.register_with_event_loop(hub)
    deadline = time.monotonic() + 30
    while len(inbox.messages) < count and time.monotonic() < deadline:
        hub.run_once()
    assert len(inbox.messages) == count
    return hub, inbox


def _consuming_channel(conn: Connection) -> Any:
    return next(c for c in conn.transport.channels if c.active_queues)


def _acked_and_answered(channel: Any, hub: Hub, message: Any) -> float:
    """Ack ``message`` through the ack pipe (which connects and loads its script) and turn
    the loop until the answer is read; returns a deadline 30 s from the start (generous:
    busy cores)."""
    message.ack()
    assert channel.send_acks()
    deadline = time.monotonic() + 30
    while channel.unanswered_acks() and time.monotonic() < deadline:
        hub.run_once()
    assert not channel.unanswered_acks()
    return deadline


def test_the_ack_pipe_writes_its_scripts_as_redis_py_would():
    """The pipe packs EVALSHA itself (redis-py's packer cost a third of an ack); the bytes
    must be what redis-py writes for the same command, whatever the leases hold."""
    from types import SimpleNamespace

    from redis.connection import Encoder, PythonRespSerializer

    from taskq.transports.redis_acks import AckPipe

    script = SimpleNamespace(sha="a" * 40)
    keys = ["p:leases", "p:leased", "p:expired"]
    pipe = AckPipe(None, None, script, keys, chunk=10, timeout=1.0,  # type: ignore[arg-type]
                   clock=time.monotonic, give_back=print, on_answer=print, on_answered=print)
    packer = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
    for chunk in ([("t1", "lease-1")], [("t1", "l1"), ("t2", "l\u00e92"), ("t3", "x" * 70)]):
        expected = b"".join(packer.pack("EVALSHA", script.sha, 3, *keys, "ack",
                                        *(lease for _, lease in chunk)))
        assert pipe._pack(chunk) == expected
    script.sha = "b" * 40  # loaded again on a new connection (a restarted Redis)
    assert pipe._pack([("t", "l")]) == b"".join(packer.pack("EVALSHA", script.sha, 3, *keys,
                                                            "ack", "l"))


def test_early_acks_are_sent_without_waiting_and_answered_on_the_loop(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    """Given three deliveries acked on an event loop, when the acks are sent with
    ``send_acks``, then Redis applies them while the loop has not read the answer yet (the
    sender did not wait for it), and the loop's next turns read it and say so."""
    queue = make_queue(unique)
    publish(connect(stock=True), queue, [1, 2, 3])
    conn = connect()
    hub, inbox = _delivered_on_loop(conn, queue, 3)
    channel = _consuming_channel(conn)
    answered: list[int] = []
    channel.on_acks_answered = lambda: answered.append(1)
    try:
        for message in inbox.messages:
            message.ack()
        assert channel.send_acks()
        assert len(channel.unanswered_acks()) == 3
        wait_for = time.monotonic() + 30
        while lease_count(redis_client, prefix) and time.monotonic() < wait_for:
            time.sleep(0.01)  # Redis runs the script; nothing here reads its answer
        assert lease_count(redis_client, prefix) == 0
        assert len(channel.unanswered_acks()) == 3 and not answered
        while channel.unanswered_acks() and time.monotonic() < wait_for:
            hub.run_once()
        assert not channel.unanswered_acks() and answered
    finally:
        conn.release()
        hub.close()


def _kill_connection(redis_client: Any, sock: Any) -> None:
    host, port = sock.getsockname()[:2]
    assert redis_client.client_kill_filter(addr=f"{host}:{port}") == 1


def test_early_acks_whose_answer_is_lost_with_the_connection_are_deferred_again(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    """Given an ack connection that Redis closed, when acks are sent on it, then the
    connection error reaches the caller and the acks are deferred again, unanswered: they
    may or may not have been applied, so the consumer carries them to the next connection
    (which asks; ``confirm_acks``), never counts them as done."""
    queue = make_queue(unique)
    publish(connect(stock=True), queue, [1, 2, 3])
    conn = connect()
    hub, inbox = _delivered_on_loop(conn, queue, 3)
    channel = _consuming_channel(conn)
    try:
        deadline = _acked_and_answered(channel, hub, inbox.messages[0])
        assert not channel.unanswered_acks()
        _kill_connection(redis_client, channel._ack_pipe._conn._sock)
        for message in inbox.messages[1:]:
            message.ack()
        with pytest.raises(redis.ConnectionError):
            channel.send_acks()
            while time.monotonic() < deadline:  # the write may pass; the read fails
                hub.run_once()
        pending = conn.transport.pending_acks
        assert [tag for tag, _ in pending] == [m.delivery_tag for m in inbox.messages[1:]]
        assert not channel._ack_pipe.unanswered()
    finally:
        conn.transport.pending_acks.clear()
        conn.release()
        hub.close()


def test_an_early_ack_unanswered_past_the_socket_timeout_is_a_lost_connection() -> None:
    """Given acks sent to a Redis that stopped answering (frozen, as a half-open socket
    looks), when the transport's clock passes the socket timeout, then the lease upkeep
    raises a connection error (the worker reconnects) and the acks are deferred again;
    the loop never waited meanwhile."""
    from chaos.brokers import LocalRedis

    clock = FakeClock(100.0)
    with LocalRedis() as broker:
        queue = make_queue("acks-frozen")
        with Connection(broker.url) as stock:
            publish(stock, queue, [1, 2])
        conn = Connection(broker.url, transport=TRANSPORT_ALIAS,
                          transport_options={"clock": clock.monotonic})
        hub, inbox = _delivered_on_loop(conn, queue, 2)
        channel = _consuming_channel(conn)
        try:
            _acked_and_answered(channel, hub, inbox.messages[0])
            broker.pause()
            inbox.messages[1].ack()
            assert channel.send_acks()
            channel.maintain_leases()  # within the timeout: nothing to say yet
            clock.advance(channel.socket_timeout + 0.5)
            with pytest.raises(redis.TimeoutError, match="did not answer 1 early acks"):
                channel.maintain_leases()
            assert [tag for tag, _ in conn.transport.pending_acks] == \
                [inbox.messages[1].delivery_tag]
        finally:
            broker.resume()
            conn.transport.pending_acks.clear()
            conn.collect()
            hub.close()


def test_an_idle_ack_connection_the_server_closed_is_dropped_not_polled(
        connect: Connect, redis_client: Any, prefix: str, unique: str) -> None:
    """Given the ack connection idle (every answer read), when the server closes it (its
    idle ``timeout``, a proxy's), then the loop drops it instead of finding a readable EOF
    at every turn, and the next acks go out on a new connection."""
    queue = make_queue(unique)
    publish(connect(stock=True), queue, [1, 2])
    conn = connect()
    hub, inbox = _delivered_on_loop(conn, queue, 2)
    channel = _consuming_channel(conn)
    try:
        deadline = _acked_and_answered(channel, hub, inbox.messages[0])
        pipe = channel._ack_pipe
        _kill_connection(redis_client, pipe._conn._sock)
        while pipe._conn._sock is not None and time.monotonic() < deadline:
            hub.run_once()
        assert pipe._conn._sock is None
        inbox.messages[1].ack()
        assert channel.send_acks()
        while channel.unanswered_acks() and time.monotonic() < deadline:
            hub.run_once()
        assert not channel.unanswered_acks() and lease_count(redis_client, prefix) == 0
    finally:
        conn.release()
        hub.close()


def test_an_early_ack_script_that_fails_is_a_lost_connection() -> None:
    """Given a Redis that answers an ack script with an error (here NOSCRIPT: its script
    cache was flushed), when the loop reads it, then it is a connection error (the worker
    reconnects) and the acks are deferred again: what the script applied is not known, so
    the next connection asks, as for an answer lost with its connection."""
    from chaos.brokers import LocalRedis

    with LocalRedis() as broker:
        queue = make_queue("acks-noscript")
        with Connection(broker.url) as stock:
            publish(stock, queue, [1, 2])
        conn = Connection(broker.url, transport=TRANSPORT_ALIAS)
        hub, inbox = _delivered_on_loop(conn, queue, 2)
        channel = _consuming_channel(conn)
        admin = redis.Redis.from_url(broker.url)
        try:
            deadline = _acked_and_answered(channel, hub, inbox.messages[0])
            admin.script_flush()
            inbox.messages[1].ack()
            assert channel.send_acks()
            with pytest.raises(redis.ConnectionError, match="early ack script failed"):
                while time.monotonic() < deadline:
                    hub.run_once()
            assert [tag for tag, _ in conn.transport.pending_acks] == \
                [inbox.messages[1].delivery_tag]
        finally:
            admin.close()
            conn.transport.pending_acks.clear()
            conn.collect()
            hub.close()
