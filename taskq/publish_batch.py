"""Sending many task messages at once (``TaskQ.publish_batch``, ``send_many``, groups, chords).

Inside a batch every message is published through one producer as usual (kombu's
``Producer.publish``: the same serialization, properties and declarations), and the
transport's channel holds the sending back:

- **Redis** (taskq's transport): the channel buffers the routed messages and sends them in
  one pipeline when the batch ends (``redis_publish``): one round trip for the batch.
- **RabbitMQ with publisher confirms** (taskq's default): the first message is confirmed
  as usual, which tells the batch the channel's delivery tag; the others are written
  without waiting, and the batch waits once, at its end, until the broker has confirmed
  every one (a nack raises, as a single publish does).
- Other transports publish each message at once.

A batch whose block raises sends nothing on Redis; on RabbitMQ what was written is sent
(AMQP has no way to take it back). An error while sending leaves the batch's delivery
uncertain: messages before the failure may have been sent (a retry may duplicate them).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

__all__ = ["Buffer", "buffer_for"]

_CONFIRM_TIMEOUT = 30.0  # seconds the broker may take to confirm a whole batch


class Buffer(Protocol):
    def start(self) -> None: ...
    def flush(self) -> None: ...
    def discard(self) -> None: ...


class _Immediate:
    """A transport that cannot batch: each message went out when it was published."""

    def start(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def discard(self) -> None:
        pass


class _RedisBuffer:
    """taskq's Redis channel holds the messages and sends them in one pipeline."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def start(self) -> None:
        self.channel.start_buffering()

    def flush(self) -> None:
        self.channel.send_buffered()

    def discard(self) -> None:
        self.channel.discard_buffered()


class _ConfirmBatch:
    """py-amqp channel in confirm mode: write without waiting, wait for all confirms once."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.first_tag: int | None = None
        self.written = 0  # after the first
        self.upto = 0  # every tag <= upto is confirmed
        self.single: set[int] = set()  # confirmed one by one above upto
        self.nacked = False
        self._confirming = channel.basic_publish  # basic_publish_confirm, bound

    def start(self) -> None:
        channel = self.channel
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.basic_publish = self._publish

    def _stop(self) -> None:
        channel = self.channel
        channel.basic_publish = self._confirming
        channel.events["basic_ack"].discard(self._on_ack)
        channel.events["basic_nack"].discard(self._on_nack)

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        if self.first_tag is None:  # the first message's own confirm: its tag
            self.first_tag = self.upto = int(delivery_tag)
        elif multiple:
            self.upto = max(self.upto, int(delivery_tag))
        else:
            self.single.add(int(delivery_tag))
        while self.upto + 1 in self.single:
            self.upto += 1
            self.single.discard(self.upto)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self.nacked = True

    def _publish(self, *args: Any, **kwargs: Any) -> Any:
        if self.first_tag is None:
            return self._confirming(*args, **kwargs)
        kwargs.pop("confirm_timeout", None)
        ret = self.channel._basic_publish(*args, **kwargs)
        self.written += 1
        return ret

    def flush(self) -> None:
        from amqp import spec
        from amqp.exceptions import MessageNacked

        try:
            if self.first_tag is not None:
                last = self.first_tag + self.written
                deadline = time.monotonic() + _CONFIRM_TIMEOUT
                while self.upto < last and not self.nacked:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(
                            f"the broker confirmed {self.upto - self.first_tag + 1} of "
                            f"{self.written + 1} messages in {_CONFIRM_TIMEOUT:g} s")
                    self.channel.wait([spec.Basic.Ack, spec.Basic.Nack], timeout=left)
            if self.nacked:
                raise MessageNacked()
        finally:
            self._stop()

    def discard(self) -> None:
        self._stop()


def buffer_for(channel: Any) -> Buffer:
    """How ``channel`` (a producer's) batches: see the module docstring."""
    if callable(getattr(channel, "start_buffering", None)):
        return _RedisBuffer(channel)
    confirming = getattr(channel, "basic_publish_confirm", None)
    if confirming is not None and getattr(channel, "basic_publish", None) == confirming:
        return _ConfirmBatch(channel)
    return _Immediate()
