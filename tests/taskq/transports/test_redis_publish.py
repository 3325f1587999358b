"""Publishing on taskq's Redis transport (``redis_publish``), against the real Redis.

A message routed by a direct or topic exchange goes out in one round trip, a batch in one
pipeline, and lands exactly where kombu's stock transport puts it: the same lists, the same
priority lists, the same bindings honoured, also when they change under the publisher.
Every test has its own ``global_keyprefix`` and deletes only its own keys.
"""

from __future__ import annotations

import base64
import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.utils.json import loads

from taskq.transports.redis import TRANSPORT_ALIAS
from tests.redis_commands import RedisCommands

pytestmark = pytest.mark.redis

Connect = Callable[..., Connection]
SEP = "\x06\x16"


@pytest.fixture
def prefixes(unique: str, redis_client: Any) -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def prefix(name: str) -> str:
        made.append(f"{unique}{name}:")
        return made[-1]

    yield prefix
    for p in made:
        keys = list(redis_client.scan_iter(match=f"{p}*", count=1000))
        if keys:
            redis_client.delete(*keys)


@pytest.fixture
def connect(redis_url: str) -> Iterator[Connect]:
    """``connect(prefix, stock=False)``: a connection on taskq's transport (or kombu's)."""
    opened: list[Connection] = []

    def connect(prefix: str, stock: bool = False) -> Connection:
        conn = Connection(redis_url, transport=None if stock else TRANSPORT_ALIAS,
                          transport_options={"global_keyprefix": prefix})
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.release()


def _body(raw: bytes) -> Any:
    """The body of a message as a Redis list holds it (kombu base64-encodes bodies)."""
    message = loads(raw)
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body).decode()
    return loads(body)


def _bodies(client: Any, key: str) -> list[Any]:
    """The bodies in list ``key``, oldest (next to be consumed) first."""
    return [_body(raw) for raw in reversed(client.lrange(key, 0, -1))]


def _lists(client: Any, prefix: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every list under ``prefix``: name without the prefix -> its messages' (body,
    priority, exchange, routing key), head first."""
    out = {}
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        if client.type(key) != b"list":
            continue
        items = [loads(raw) for raw in client.lrange(key, 0, -1)]
        out[key.decode()[len(prefix):]] = [
            (m["body"], m["properties"].get("priority"),
             m["properties"]["delivery_info"]["exchange"],
             m["properties"]["delivery_info"]["routing_key"]) for m in items]
    return out


def _publish_all(conn: Connection, exchange: Exchange, bound: dict[str, str],
                 sends: list[tuple[str, int | None]]) -> None:
    queues = [Queue(name, exchange, routing_key=key) for name, key in bound.items()]
    for q in queues:
        q(conn.default_channel).declare()
    producer = Producer(conn.default_channel)
    for n, (key, priority) in enumerate(sends):
        producer.publish({"n": n}, exchange=exchange, routing_key=key, priority=priority,
                         serializer="json")


@pytest.mark.parametrize("kind, bound, sends", [
    ("direct", {"qa": "a", "qb": "b", "qa2": "a"},
     [("a", None), ("b", 9), ("a", 3), ("c", None), ("b", 0), ("a", 7)]),
    ("topic", {"all": "#", "a_star": "a.*", "a_any": "a.#", "b": "b.x"},
     [("a.x", None), ("a.x.y", 5), ("b.x", None), ("b.y", 2), ("a", None)]),
])
def test_messages_land_in_the_lists_kombus_own_transport_puts_them_in(
        connect, prefixes, redis_client, kind, bound, sends):
    # Given the same exchange, bindings and messages, once on kombu's transport, once here
    stock, ours = prefixes("stock"), prefixes("ours")
    exchange = Exchange(f"ex-{kind}", kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unroutable messages warn on both
        _publish_all(connect(stock, stock=True), exchange, bound, sends)
        _publish_all(connect(ours), exchange, bound, sends)
    # Then every queue and priority list holds the same messages in the same order
    expected = _lists(redis_client, stock)
    assert expected, "kombu published nothing: the test sends nothing"
    assert _lists(redis_client, ours) == expected
    assert any(SEP in name for name in expected)  # priority lists were part of it


def test_a_direct_publish_is_one_round_trip(connect, prefixes, redis_client, monkeypatch):
    prefix = prefixes("one")
    conn = connect(prefix)
    queue = Queue("q", Exchange("q"), routing_key="q")
    producer = Producer(conn.default_channel)
    producer.publish({"warm": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
    commands = RedisCommands(monkeypatch)
    for n in range(10):
        producer.publish({"n": n}, exchange=queue.exchange, routing_key="q")
    assert commands.sent == [["EVALSHA"]] * 10
    assert redis_client.llen(f"{prefix}q") == 11


def test_bindings_changed_by_another_client_are_honoured_at_the_next_publish(
        connect, prefixes, redis_client):
    # Given a publisher that has already published through exchange x (its table is cached)
    prefix = prefixes("rebind")
    publisher, other = connect(prefix), connect(prefix, stock=True)
    x = Exchange("x", "direct")
    qa, qb = Queue("qa", x, routing_key="k"), Queue("qb", x, routing_key="k")
    qa(publisher.default_channel).declare()
    producer = Producer(publisher.default_channel)
    producer.publish({"n": 1}, exchange=x, routing_key="k")
    # When another client binds qb to the same key, the next message reaches both queues
    qb(other.default_channel).declare()
    producer.publish({"n": 2}, exchange=x, routing_key="k")
    assert redis_client.llen(f"{prefix}qa") == 2
    assert redis_client.llen(f"{prefix}qb") == 1
    # And when it deletes qa (its binding goes), the next one reaches qb only, in a batch too
    qa(other.default_channel).declare()  # kombu deletes the bindings its channel declared
    qa(other.default_channel).delete()
    channel = publisher.default_channel
    with channel.buffered_publishes():
        producer.publish({"n": 3}, exchange=x, routing_key="k")
        producer.publish({"n": 4}, exchange=x, routing_key="k")
    assert redis_client.llen(f"{prefix}qa") == 0
    assert _bodies(redis_client, f"{prefix}qb") == [{"n": 2}, {"n": 3}, {"n": 4}]


def test_a_batch_is_one_pipeline_and_keeps_the_order(connect, prefixes, redis_client,
                                                       monkeypatch):
    prefix = prefixes("batch")
    conn = connect(prefix)
    queue = Queue("q", Exchange("q"), routing_key="q")
    producer = Producer(conn.default_channel)
    producer.publish({"warm": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
    redis_client.delete(f"{prefix}q")
    commands = RedisCommands(monkeypatch)
    with conn.default_channel.buffered_publishes():
        for n in range(100):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="q")
        assert commands.sent == []  # nothing goes out before the block ends
    assert commands.sent == [["EVALSHA"] * 100]
    assert _bodies(redis_client, f"{prefix}q") == [{"n": n} for n in range(100)]


def test_a_batch_whose_block_raises_sends_nothing(connect, prefixes, redis_client):
    prefix = prefixes("raises")
    conn = connect(prefix)
    queue = Queue("q", Exchange("q"), routing_key="q")
    producer = Producer(conn.default_channel)
    queue(conn.default_channel).declare()
    with pytest.raises(KeyError), conn.default_channel.buffered_publishes():
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key="q")
        raise KeyError("the caller failed half-way")
    producer.publish({"n": 2}, exchange=queue.exchange, routing_key="q")
    assert _bodies(redis_client, f"{prefix}q") == [{"n": 2}]


def test_fanout_messages_in_a_batch_still_reach_subscribers(connect, prefixes):
    prefix = prefixes("fanout")
    consumer_conn, publisher = connect(prefix, stock=True), connect(prefix)
    bcast = Exchange("bcast", "fanout")
    got: list[Any] = []
    queue = Queue("listener", bcast)
    with Consumer(consumer_conn, [queue], callbacks=[lambda body, m: got.append(body)],
                  accept=["json"], no_ack=True):
        with contextlib.suppress(TimeoutError):  # subscribes: pub/sub has no backlog
            consumer_conn.drain_events(timeout=0.3)
        bcast(publisher.default_channel).declare()  # else kombu takes it for a direct one
        producer = Producer(publisher.default_channel)
        with publisher.default_channel.buffered_publishes():
            producer.publish({"n": 1}, exchange=bcast, routing_key="")
            producer.publish({"n": 2}, exchange=bcast, routing_key="")
        for _ in range(20):
            if len(got) == 2:
                break
            try:
                consumer_conn.drain_events(timeout=0.5)
            except TimeoutError:
                pass
    assert got == [{"n": 1}, {"n": 2}]


def test_a_batch_loads_the_script_when_redis_does_not_know_it(connect, prefixes,
                                                               redis_client):
    # Given a channel whose script sha Redis has never seen (as after a Redis restart)
    prefix = prefixes("noscript")
    conn = connect(prefix)
    queue = Queue("q", Exchange("q"), routing_key="q")
    producer = Producer(conn.default_channel)
    producer.publish({"n": 0}, exchange=queue.exchange, routing_key="q", declare=[queue])
    conn.default_channel._script("PUBLISH").sha = "0" * 40
    # When a batch goes out, every message of it still arrives, once
    with conn.default_channel.buffered_publishes():
        for n in range(1, 4):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="q")
    assert _bodies(redis_client, f"{prefix}q") == [{"n": n} for n in range(4)]
