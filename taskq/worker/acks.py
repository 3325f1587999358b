"""Deferred acks on an AMQP channel: sent once per loop tick, many in one frame when they can.

An ack of a task message costs a frame, a write and work on the broker. The worker acks
through ``AmqpAcks.ack`` instead; before the loop waits again (its ``on_tick``), ``flush``
sends what piled up: the longest run of acks at the head of the channel's unsettled
deliveries as one ``basic.ack(multiple=True)``, the rest one by one. ``multiple`` acks every
outstanding delivery up to a tag, so it is only used where every delivery up to that tag is
being acked: deliveries still reserved, running (``acks_late``) or waiting for an eta break
the run. A rejected delivery leaves the unsettled set at once (rejects are never deferred).

A crash between ``ack`` and the flush redelivers those messages, as a crash just before an
immediate ack would; the window is one loop iteration. Redis and SQLite defer acks in their
own transports (``taskq.transports.lease``).
"""

from __future__ import annotations

import itertools
from typing import Any

__all__ = ["AmqpAcks"]


class AmqpAcks:
    """The unsettled deliveries of one AMQP channel and the acks not sent yet."""

    __slots__ = ("channel", "pending", "unsettled", "written")

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.unsettled: dict[int, None] = {}  # delivery tags in delivery (= tag) order
        self.pending: set[int] = set()
        # The tags the last flush wrote whole before it failed: RabbitMQ may have them (an
        # AMQP ack has no answer), so their tasks count as acked (see Consumer.ack_now).
        self.written: set[int] = set()

    def delivered(self, tag: int) -> None:
        self.unsettled[tag] = None

    def settled(self, tag: int) -> None:
        """``tag`` was rejected (or acked) directly."""
        self.unsettled.pop(tag, None)
        self.pending.discard(tag)

    def ack(self, tag: int) -> None:
        self.pending.add(tag)

    def flush(self) -> int:
        """Send the pending acks; returns how many frames that took. When a write fails,
        ``written`` holds the tags of the frames written before it."""
        pending = self.pending
        self.written = set()
        if not pending:
            return 0
        self.pending = set()
        unsettled = self.unsettled
        head = list(itertools.takewhile(pending.__contains__, unsettled))
        frames = 0
        if len(head) > 1:
            self.channel.basic_ack(head[-1], multiple=True)
            self.written.update(head)
            frames += 1
            for tag in head:
                del unsettled[tag]
                pending.discard(tag)
        for tag in sorted(pending):
            self.channel.basic_ack(tag)
            self.written.add(tag)
            unsettled.pop(tag, None)
            frames += 1
        return frames
