"""What taskq's lease transports (Redis, SQLite) share: the QoS that remembers each delivery's
lease and settles it, and the check of the lease timing options.

A subclass says where a fetched delivery's lease waits until kombu hands the message over
(``_take_incoming``) and how its channel settles held leases (``_settle_held``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Generic, TypeVar

from kombu.transport import virtual

from taskq.errors import ConfigurationError

__all__ = ["LeaseChannelMixin", "LeaseQoSBase", "check_renewal"]

logger = logging.getLogger("taskq.transports")

L = TypeVar("L")  # what identifies a lease to its channel (a lease id, a row id)


def check_renewal(lease: float, renew: float) -> None:
    if renew >= lease:
        raise ConfigurationError(
            f"transport option renew_interval={renew:g} must be shorter than "
            f"lease_timeout={lease:g} (a third of it is the default)")


class LeaseQoSBase(virtual.QoS, Generic[L]):
    """Prefetch accounting (kombu's) plus the lease of every message this channel holds."""

    restore_at_shutdown = False  # see restore_unacked_once

    def __init__(self, channel: Any, prefetch_count: int = 0) -> None:
        super().__init__(channel, prefetch_count)
        self.leases: dict[str, L] = {}  # delivery tag -> lease

    def _take_incoming(self, delivery_tag: str) -> L | None:
        raise NotImplementedError

    def _settle_held(self, requeue: bool, held: list[tuple[str, L]]) -> int:
        raise NotImplementedError

    def _defer_ack(self, delivery_tag: str, lease: L) -> bool:
        """Queue this ack for the channel's next round trip; False to settle it now."""
        return False

    def append(self, message: Any, delivery_tag: str) -> None:
        lease = self._take_incoming(delivery_tag)
        if lease is not None:
            self.leases[delivery_tag] = lease
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        # On an event loop the ack is deferred to the loop's next tick (before it waits
        # again), riding with the next fetch when there is one: one round trip for many acks.
        # A crash in between redelivers the message after its lease, as a crash just before
        # an immediate ack would. The prefetch credit is freed now.
        lease = self.leases.get(delivery_tag)
        if lease is not None and self._defer_ack(delivery_tag, lease):
            del self.leases[delivery_tag]
        else:
            self._settle(False, [delivery_tag])
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._settle(requeue, [delivery_tag])
        super().ack(delivery_tag)

    def release(self, delivery_tags: Iterable[str]) -> int:
        """Give these deliveries back to be consumed next (marked redelivered)."""
        tags = list(delivery_tags)
        released = self._settle(True, tags)
        for tag in tags:
            super().ack(tag)
        return released

    def _settle(self, requeue: bool, tags: Sequence[str]) -> int:
        held = [(tag, self.leases.pop(tag)) for tag in tags if tag in self.leases]
        if len(held) < len(tags):
            logger.debug("%s of %d deliveries dropped: this channel holds no lease for them",
                         "requeue" if requeue else "ack", len(tags) - len(held))
        if not held:
            return 0
        try:
            return self._settle_held(requeue, held)
        except BaseException:
            self.leases.update(held)  # still ours: renewed until they expire or settle
            raise

    def restore_unacked(self, client: Any = None) -> list[Any]:
        """``basic_recover(requeue=True)``: give back every message held, now."""
        self.release(list(self.leases))
        self._flush()
        return []

    def restore_unacked_once(self, stderr: Any = None) -> None:
        # kombu requeues every unacked delivery here (on close, at exit, after fork), running
        # tasks included. The leases do it right: running tasks are renewed by a live worker,
        # the rest expire. Nothing to do.
        self._on_collect.cancel()


class LeaseChannelMixin:
    """What a lease channel offers the worker beyond kombu's channel API."""

    qos: LeaseQoSBase[Any]

    def release(self, delivery_tags: Iterable[str]) -> int:
        """Requeue these held messages now, where they are consumed next, in order.

        For reserved messages the application will not start (warm shutdown, far eta).
        Returns how many were still held; tags without a lease are ignored.
        """
        return self.qos.release(delivery_tags)
