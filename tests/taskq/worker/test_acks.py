"""Deferred AMQP acks (taskq.worker.acks) against the real RabbitMQ.

What matters: every acked message is gone from the queue after one flush, a message not acked
(reserved, running with acks_late) is never swept up by a multiple ack, and a rejected one
does not stop the run of acks behind it from going as one frame.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from taskq.worker.acks import AmqpAcks

pytestmark = pytest.mark.amqp


class Recorder:
    """The real channel, with its basic_ack calls written down."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.calls: list[tuple[int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.calls.append((tag, multiple))
        self.channel.basic_ack(tag, multiple=multiple)


@pytest.fixture
def queue(amqp_url: str, unique: str) -> Iterator[Queue]:
    q = Queue(unique, Exchange(unique), routing_key=unique, auto_delete=False)
    yield q
    with Connection(amqp_url) as conn:
        q(conn.default_channel).delete()


def fill(url: str, queue: Queue, count: int) -> None:
    with Connection(url) as conn:
        producer = Producer(conn)
        for n in range(count):
            producer.publish(n, exchange=queue.exchange, routing_key=queue.routing_key,
                             declare=[queue], serializer="json")


def receive(conn: Connection, queue: Queue, count: int) -> list[Any]:
    got: list[Any] = []
    channel = conn.channel()
    consumer = Consumer(channel, [queue], callbacks=[lambda body, m: got.append(m)],
                        accept=["json"], prefetch_count=count)
    consumer.consume()
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        conn.drain_events(timeout=1)
    assert len(got) == count
    return got


def left_in_queue(url: str, queue: Queue) -> list[int]:
    """What a fresh consumer gets: the messages never acked (redelivered after close)."""
    bodies = []
    with Connection(url) as conn:
        channel = conn.channel()
        while (message := queue(channel).get(no_ack=True)) is not None:
            bodies.append(message.payload)
    return sorted(bodies)


@contextlib.contextmanager
def delivered(url: str, queue: Queue, count: int
              ) -> Iterator[tuple[list[Any], list[int], AmqpAcks, Recorder]]:
    """``count`` messages delivered on a live channel, known to an ``AmqpAcks``."""
    fill(url, queue, count)
    with Connection(url) as conn:
        messages = receive(conn, queue, count)
        recorder = Recorder(messages[0].channel)
        acks = AmqpAcks(recorder)
        tags = [m.delivery_tag for m in messages]
        for tag in tags:
            acks.delivered(tag)
        yield messages, tags, acks, recorder


def test_a_run_of_acks_at_the_head_goes_as_one_frame_and_holes_are_kept(
        amqp_url: str, queue: Queue) -> None:
    with delivered(amqp_url, queue, 8) as (messages, tags, acks, recorder):
        # 0-3 acked, 4 still running (acks_late), 5 acked, 6 rejected, 7 acked.
        for i in (0, 1, 2, 3, 5, 7):
            acks.ack(tags[i])
        messages[6].reject(requeue=False)
        acks.settled(tags[6])

        assert acks.flush() == 3
        assert recorder.calls == [(tags[3], True), (tags[5], False), (tags[7], False)]
        assert list(acks.unsettled) == [tags[4]] and not acks.pending
        assert acks.flush() == 0  # nothing left to send
    # Closing the connection returns what was not acked: only the running one.
    assert left_in_queue(amqp_url, queue) == [4]


def test_behind_an_unacked_head_acks_go_one_by_one_and_none_is_lost(
        amqp_url: str, queue: Queue) -> None:
    with delivered(amqp_url, queue, 5) as (_messages, tags, acks, recorder):
        for tag in tags[1:]:
            acks.ack(tag)
        assert acks.flush() == 4
        assert recorder.calls == [(tag, False) for tag in tags[1:]]
        acks.ack(tags[0])
        assert acks.flush() == 1
        assert not acks.unsettled
    assert left_in_queue(amqp_url, queue) == []


def test_a_flush_cut_off_by_a_lost_connection_says_which_acks_it_wrote(
        amqp_url: str, queue: Queue) -> None:
    """The connection fails after the first frame (a multiple ack of 0-2) went out: the
    broker has those acks (it does not deliver them again), and ``written`` names them, so
    the worker runs their tasks instead of taking them for redelivered (they would be lost)."""
    with delivered(amqp_url, queue, 5) as (_messages, tags, acks, recorder):
        for i in (0, 1, 2, 4):
            acks.ack(tags[i])
        real_ack = recorder.basic_ack

        def fail_after_the_first(tag: int, multiple: bool = False) -> None:
            if recorder.calls:
                raise ConnectionResetError("connection lost (test)")
            real_ack(tag, multiple)

        recorder.basic_ack = fail_after_the_first  # type: ignore[method-assign]
        with pytest.raises(ConnectionResetError):
            acks.flush()
        assert acks.written == set(tags[:3])
    assert left_in_queue(amqp_url, queue) == [3, 4]
