"""taskq.compat against the installed kombu: each internal is there (or its fallback works).

ci/test-oldest-kombu.sh runs this file on the oldest supported kombu too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.asynchronous import Hub
from kombu.exceptions import MessageStateError
from kombu.pidbox import Mailbox
from kombu.transport import virtual

from taskq import compat
from taskq.errors import ConfigurationError


def test_a_kombu_without_an_overridden_hook_is_refused_naming_it() -> None:
    class OldChannel:
        def _get(self) -> None: ...

    compat.require_hooks(OldChannel, "_get")
    with pytest.raises(ConfigurationError, match=r"OldChannel\._brpop_start.*kombu>=5\.3"):
        compat.require_hooks(OldChannel, "_get", "_brpop_start")


def test_timer_entries_lists_what_is_scheduled_on_the_hub() -> None:
    hub = Hub()
    try:
        entry = hub.call_repeatedly(10.0, lambda: None)
        later = hub.call_later(20.0, lambda: None)
        assert {id(e) for e in compat.timer_entries(hub)} >= {id(entry), id(later)}
    finally:
        hub.close()


def test_propagate_errors_round_trips_on_a_hub() -> None:
    hub = Hub()
    try:
        assert compat.propagate_errors(hub) == ()
        compat.set_propagate_errors(hub, [OSError, KeyError])
        assert compat.propagate_errors(hub) == (OSError, KeyError)
    finally:
        hub.close()


def test_a_message_marked_acked_is_acknowledged_and_refuses_a_second_ack() -> None:
    conn = Connection("memory://")
    try:
        channel = conn.channel()
        message = channel.Message({"body": "x", "properties": {"delivery_tag": "t1"}},
                                  channel=channel)
        compat.mark_acked(message)
        assert message.acknowledged
        with pytest.raises(MessageStateError):
            message.ack()
    finally:
        conn.release()


def test_the_virtual_channel_internals_are_there() -> None:
    conn = Connection("memory://")
    try:
        channel: Any = conn.channel()
        assert compat.channel_qos(channel) is None  # not created by asking
        qos = channel.qos
        assert compat.channel_qos(channel) is qos
        compat.hold_credit(qos, "t1", object())
        assert compat.is_held(qos, "t1") and compat.qos_held(qos) == 1
        assert compat.consumed_queues(channel) == [] and not compat.has_consumers(channel)
        assert compat.consumer_queue(channel, "nobody") is None
        assert compat.queue_callbacks(channel.connection) == {}
        assert compat.existing_transport(conn) is channel.connection
        assert compat.existing_transport(Connection("memory://")) is None
        assert isinstance(channel, virtual.Channel)
    finally:
        conn.release()


def test_on_an_older_kombu_the_redis_extras_fall_back_to_its_behaviour() -> None:
    # kombu < 5.6 had no brpop_timeout (a blocking pop waited 1 s), < 5.7 no re-auth, no
    # queue expiry and no handle on its restore timer: nothing to do for those.
    old_channel: Any = SimpleNamespace()
    assert compat.brpop_timeout(old_channel) == 1.0
    compat.flush_brpop_reauth(old_channel)
    compat.refresh_queue_expiry(old_channel, ["q"])
    compat.cancel_unacked_restore(SimpleNamespace())
    assert compat.brpop_timeout(SimpleNamespace(brpop_timeout=5)) == 5.0


def test_a_missing_internal_is_named_with_what_to_install() -> None:
    with pytest.raises(ConfigurationError, match=r"_delivered.*pip install 'kombu>=5\.3,<6'"):
        compat.qos_held(SimpleNamespace(_dirty=set()))


def test_fanout_subscribers_counts_redis_subscribers_under_the_key_prefix_and_sends_them_nothing(
        redis_url: str, unique: str) -> None:
    # Given a kombu Redis connection subscribed to a fanout exchange, under a key prefix
    options = {"global_keyprefix": f"{unique}:"}
    subscriber = Connection(redis_url, transport_options=options)
    counter = Connection(redis_url, transport_options=options)
    elsewhere = Connection(redis_url, transport_options={"global_keyprefix": f"{unique}x:"})
    exchange = Exchange(f"{unique}.fan", type="fanout", durable=False)
    received: list[Any] = []
    try:
        queue = Queue(f"{unique}.q", exchange=exchange, auto_delete=True, durable=False)
        with Consumer(subscriber, [queue], callbacks=[lambda body, m: received.append(body)],
                      no_ack=True, accept=["json"]):
            deadline = time.monotonic() + 30
            # When the subscriber's poll has subscribed, the count says so ...
            while compat.fanout_subscribers(counter.default_channel, exchange.name) != 1:
                assert time.monotonic() < deadline, "the subscriber never subscribed"
                drain(subscriber, 0.1)
            # ... under its key prefix only, and the counting PUBLISHes reached no consumer
            assert compat.fanout_subscribers(elsewhere.default_channel, exchange.name) == 0
            Producer(counter.default_channel).publish({"real": 1}, exchange=exchange,
                                                      declare=[exchange])
            while not received:
                assert time.monotonic() < deadline, "the subscriber never got a message"
                drain(subscriber, 0.1)
            drain(subscriber, 0.2)
            assert received == [{"real": 1}]
    finally:
        for conn in (subscriber, counter, elsewhere):
            conn.release()


def test_fanout_subscribers_is_none_where_the_broker_cannot_count() -> None:
    conn = Connection("memory://")
    try:
        assert compat.fanout_subscribers(conn.default_channel, "celery.pidbox") is None
    finally:
        conn.release()

    def never(*args: Any) -> Any:
        raise AssertionError("published on two topics' channel")

    two_topics = SimpleNamespace(_get_publish_topic=never, conn_or_acquire=never,
                                 _fanout_compat_active=True)
    assert compat.fanout_subscribers(two_topics, "celery.pidbox") is None


def drain(conn: Connection, timeout: float) -> None:
    with contextlib.suppress(socket.timeout):
        conn.drain_events(timeout=timeout)


@pytest.fixture
def pidbox_nodes(unique: str) -> Iterator[tuple[Mailbox, list[str]]]:
    """Two pidbox nodes on kombu's in-memory transport, each answering ``hello`` with its
    name from its own thread."""
    mailbox = Mailbox(f"{unique}.box", type="fanout")
    names = [f"a@{unique}", f"b@{unique}"]
    listening = [threading.Event() for _ in names]
    stop = threading.Event()

    def serve(name: str, listens: threading.Event) -> None:
        conn = Connection("memory://", transport_options={"polling_interval": 0.01})
        try:
            node = mailbox(conn).Node(name, state=None, channel=conn.default_channel,
                                      handlers={"hello": lambda state: {"hi": name}})
            node.listen()
            listens.set()
            while not stop.is_set():
                drain(conn, 0.05)
        finally:
            conn.release()

    threads = [threading.Thread(target=serve, args=args, daemon=True)
               for args in zip(names, listening, strict=True)]
    for thread in threads:
        thread.start()
    try:
        assert all(event.wait(30) for event in listening), "a pidbox node never listened"
        yield mailbox, names
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def test_broadcast_until_stops_collecting_at_the_reply_that_is_enough(
        pidbox_nodes: tuple[Mailbox, list[str]]) -> None:
    mailbox, names = pidbox_nodes
    client = Connection("memory://", transport_options={"polling_interval": 0.01})
    try:
        # Both nodes answer; collecting ends with the first answer, long before the timeout
        replies = compat.broadcast_until(mailbox(client), "hello", lambda body: True,
                                         timeout=60)
        assert len(replies) == 1
        [(node, answer)] = replies[0].items()
        assert node in names and answer == {"hi": node}
        # Never enough: every node's answer, until none came for the timeout
        replies = compat.broadcast_until(mailbox(client), "hello", lambda body: False,
                                         timeout=1)
        assert sorted(node for reply in replies for node in reply) == sorted(names)
    finally:
        client.release()


def test_broadcast_until_returns_every_reply_where_kombu_swallows_the_callbacks_error(
        ) -> None:
    class SwallowingMailbox:
        def _broadcast(self, command: str, callback: Any, **options: Any) -> list[Any]:
            replies = [{"a@x": {}}, {"b@x": {}}]
            for body in replies:
                try:
                    callback(body)
                except Exception:
                    pass
            return replies

    assert compat.broadcast_until(SwallowingMailbox(), "hello", lambda body: True,
                                  timeout=1) == [{"a@x": {}}, {"b@x": {}}]
