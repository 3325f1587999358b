"""What taskq's lease transports (Redis, SQLite) share: the QoS that remembers each delivery's
lease and settles it, and the check of the lease timing options.

A subclass says where a fetched delivery's lease waits until kombu hands the message over
(``_take_incoming``) and how its channel settles held leases (``_settle_held``).

What the worker needs beyond kombu's channel API (``LeaseChannelMixin``):

- ``on_leases_lost``: told the delivery tags whose lease renewal found gone (they went back to
  their queues, maybe to another consumer by now), so the application drops what it has not
  started;
- ``adopt`` / ``release_orphans``: after a reconnect, the deliveries the old connection's
  channel held are still leased under their ids; the new channel renews (adopts) those whose
  tasks still run and requeues the rest at once, instead of leaving both to expire;
- ``settle_leases`` / ``confirm_acks``: the new channel sends the acks the old one had not
  sent, and finds out whether an early ack sent as the connection was lost was applied (the
  task runs here) or its lease expired (the message is back in its queue);
- ``flush_acks`` and ``renew_if_due``: a pool that runs tasks on the loop's thread (solo)
  settles at once and keeps its leases alive from another thread while a task runs.

Lease timing (when renewal and restore are due) is read from the transport's clock, the
``clock`` transport option (``time.monotonic`` by default, see ``lease_clock``), so a test can
drive it instead of waiting; the SQLite transport's lease deadlines follow that clock too
when one is given.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from kombu.transport import virtual

from taskq import compat
from taskq.errors import ConfigurationError

__all__ = ["Clock", "LeaseChannelMixin", "LeaseQoSBase", "check_renewal", "lease_clock", "lease_of"]

logger = logging.getLogger("taskq.transports")

L = TypeVar("L")  # what identifies a lease to its channel (a lease id, a row id)

Clock = Callable[[], float]


def lease_clock(options: Mapping[str, Any]) -> Clock:
    """The clock of a lease transport's timing: the ``clock`` transport option (a callable
    returning seconds, for tests that drive time as ``Loop``'s tests do), else
    ``time.monotonic``."""
    clock = options.get("clock")
    if clock is None:
        return time.monotonic
    if not callable(clock):
        raise ConfigurationError(
            f"transport option clock={clock!r}: expected a callable returning seconds "
            "(like time.monotonic); leave it out for the real clock")
    return clock


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

    def forget(self, delivery_tags: Iterable[str]) -> list[str]:
        """Drop the leases of these tags (they are gone); returns the tags that were held.
        Their prefetch credit stays taken until the application settles them (a no-op
        now), so a later delivery of the same message gets a tag of its own."""
        return [tag for tag in delivery_tags if self.leases.pop(tag, None) is not None]

    def restore_unacked(self, client: Any = None) -> list[Any]:
        """``basic_recover(requeue=True)``: give back every message held, now."""
        self.release(list(self.leases))
        compat.qos_flush(self)
        return []

    def restore_unacked_once(self, stderr: Any = None) -> None:
        # kombu requeues every unacked delivery here (on close, at exit, after fork), running
        # tasks included. The leases do it right: running tasks are renewed by a live worker,
        # the rest expire. Nothing to do.
        compat.forget_restore_at_exit(self)


LostCallback = Callable[[list[str]], None]


def lease_of(message: Any) -> Any:
    """The lease a message's own channel holds for it (None when none is held)."""
    qos = compat.channel_qos(message.channel)
    if not isinstance(qos, LeaseQoSBase):
        return None
    return qos.leases.get(message.delivery_tag)


class LeaseChannelMixin:
    """What a lease channel offers the worker beyond kombu's channel API."""

    qos: LeaseQoSBase[Any]
    on_leases_lost: LostCallback | None = None
    """Set by the consumer: called with the delivery tags whose leases renewal found gone."""

    def _renew_held(self, held: Sequence[tuple[str, Any]]) -> list[str]:
        """Extend these leases [(tag, lease)] now; returns the tags whose lease is gone."""
        raise NotImplementedError

    def _leases_lost(self, tags: list[str]) -> None:
        if not tags:
            return
        logger.warning("lost the lease of %d held messages (not renewed in time, they went "
                       "back to their queues): %s", len(tags), ", ".join(tags[:10]))
        if self.on_leases_lost is not None:
            self.on_leases_lost(tags)

    def adopt(self, messages: Sequence[Any]) -> list[Any]:
        """Take over the leases of ``messages`` delivered on another (closed) channel of the
        same broker: renewed now and from here on, settled through this channel (each
        message's ``channel`` becomes this one). Returns the messages whose lease is gone
        (or that had none): they went back to their queues."""
        held = [(m, lease_of(m)) for m in messages]
        lost = [m for m, lease in held if lease is None]
        held = [(m, lease) for m, lease in held if lease is not None]
        if not held:
            return lost
        gone = set(self._renew_held([(m.delivery_tag, lease) for m, lease in held]))
        qos = self.qos
        for message, lease in held:
            message.channel.qos.leases.pop(message.delivery_tag, None)
            if message.delivery_tag in gone:
                lost.append(message)
                continue
            qos.leases[message.delivery_tag] = lease
            compat.hold_credit(qos, message.delivery_tag, message)  # its prefetch credit, here
            message.channel = self
        return lost

    def release_orphans(self, messages: Sequence[Any], *, requeue: bool = True) -> int:
        """Requeue now, where they are consumed next, ``messages`` another (closed) channel of
        the same broker held and the application will not start; with ``requeue=False``,
        ack them instead (their tasks ended while the connection was down). Returns how many
        were still held."""
        held = []
        for message in messages:
            lease = lease_of(message)
            if lease is not None:
                message.channel.qos.leases.pop(message.delivery_tag, None)
                held.append((message.delivery_tag, lease))
        return self.settle_leases(held, requeue=requeue)

    def settle_leases(self, held: Sequence[tuple[str, Any]], *, requeue: bool = False) -> int:
        """Ack (or requeue) these leases [(delivery tag, lease)], whichever channel of the
        same broker took them (the deferred acks a lost connection did not send). Returns
        how many were still held."""
        return self.qos._settle_held(requeue, list(held)) if held else 0

    def confirm_acks(self, held: Sequence[tuple[str, Any]]) -> list[bool]:
        """Ack the leases ``held`` [(delivery tag, lease)] whose earlier ack was not answered
        before its connection was lost (it may or may not have been applied). Returns per
        lease whether it is acked now (by this call or that earlier one); False when it
        expired instead and its message went back to its queue. All or nothing: a failure
        leaves every lease as it was, so the caller may ask again."""
        raise NotImplementedError

    def flush_acks(self) -> None:
        """Send the deferred acks now."""
        raise NotImplementedError

    def renew_if_due(self) -> None:
        """Renew this channel's leases if their renewal is due. Safe from another thread
        while the loop's thread is busy in a task (the solo pool)."""
        raise NotImplementedError

    def release(self, delivery_tags: Iterable[str]) -> int:
        """Requeue these held messages now, where they are consumed next, in order.

        For reserved messages the application will not start (warm shutdown, far eta).
        Returns how many were still held; tags without a lease are ignored.
        """
        return self.qos.release(delivery_tags)
