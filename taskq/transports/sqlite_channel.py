"""The channel and QoS of taskq's SQLite transport (``taskq/transports/sqlite.py``, whose
docstring has the rules): what one kombu channel does with the database and its leases.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from queue import Empty
from typing import TYPE_CHECKING, Any

from kombu.transport import virtual
from kombu.utils.json import dumps, loads

from taskq import compat
from taskq.errors import BrokerBusy
from taskq.transports.lease import LeaseChannelMixin, LeaseQoSBase
from taskq.transports.sqlite_store import Fetched, Store

if TYPE_CHECKING:
    from taskq.transports.sqlite import SQLiteSettings, Transport

__all__ = ["Channel", "Delivery", "LeaseQoS"]

logger = logging.getLogger("taskq.transports.sqlite")

#: A fetched message: (queue, payload, lease id or None when popped, row id)
Delivery = tuple[str, dict[str, Any], "str | None", int]


# -- acks -----------------------------------------------------------------------------------
class LeaseQoS(LeaseQoSBase[int]):
    """The row of every message this channel holds; the delivery tag is the lease id."""

    def _take_incoming(self, delivery_tag: str) -> int | None:
        rowid: int | None = self.channel.connection.incoming.pop(delivery_tag, None)
        return rowid

    def _settle_held(self, requeue: bool, held: list[tuple[str, int]]) -> int:
        return int(self.channel.settle(requeue, held))

    def _defer_ack(self, delivery_tag: str, lease: int) -> bool:
        transport = self.channel.connection
        if not transport.defer_acks:
            return False
        transport.pending_acks.append((lease, delivery_tag))  # in the next fetch's transaction
        return True


# -- the channel ----------------------------------------------------------------------------
class Channel(LeaseChannelMixin, virtual.Channel):
    """A virtual channel whose queues, bindings and leases live in the SQLite file."""

    QoS = LeaseQoS
    supports_fanout = True
    do_restore = False

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.store: Store = connection.store
        self.settings: SQLiteSettings = connection.settings
        self.consumer_id = uuid.uuid4().hex[:12]
        self._batches = 0
        self._no_ack_queues: set[str] = set()
        self._auto_delete: set[str] = set()
        self.maybe_ready = True  # a wake-up (or a full batch) since the last empty fetch
        self._full_batch = False

    # -- declaring ------------------------------------------------------------------------
    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        if kwargs.get("auto_delete"):
            self._auto_delete.add(queue)
        self.store.declare_queue(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return self.store.has_queue(queue)

    def exchange_declare(self, exchange: str | None = None, type: str = "direct",
                         *args: Any, **kwargs: Any) -> None:
        super().exchange_declare(exchange, type, *args, **kwargs)
        if exchange and not kwargs.get("passive"):
            self.store.declare_exchange(exchange, type or "direct")

    def exchange_delete(self, exchange: str, if_unused: bool = False, nowait: bool = False
                        ) -> None:
        self.state.exchanges.pop(exchange, None)
        self.store.delete_exchange(exchange)

    def typeof(self, exchange: str, default: str = "direct") -> Any:
        if exchange not in self.state.exchanges:
            default = self.store.exchange_type(exchange) or default
        return super().typeof(exchange, default)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        self.store.bind(exchange, routing_key, pattern, queue)

    def queue_unbind(self, queue: str, exchange: str | None = None, routing_key: str = "",
                     arguments: Any = None, **kwargs: Any) -> None:
        super().queue_unbind(queue, exchange, routing_key, arguments, **kwargs)
        self.store.unbind(exchange or "amq.direct", routing_key, queue)

    def get_table(self, exchange: str) -> list[tuple[str, str, str]]:
        return self.store.table(exchange)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False,
                     **kwargs: Any) -> None:
        if if_empty and self._size(queue):
            return
        self.store.delete_queue(queue)
        self.state.queue_bindings_delete(queue)
        self._auto_delete.discard(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        self.store.delete_queue(queue)

    def _size(self, queue: str) -> int:
        return self.store.size(queue)

    def _purge(self, queue: str) -> int:
        return self.store.purge(queue)

    # -- publishing -----------------------------------------------------------------------
    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        self.store.publish([(queue, dumps(message), None)])
        self.connection.wake.wake_all()

    def _put_fanout(self, exchange: str, message: dict[str, Any], routing_key: str,
                    **kwargs: Any) -> None:
        queues = sorted({queue for _, _, queue in self.get_table(exchange)})
        if not queues:
            return
        payload, expires = dumps(message), self.store.clock() + self.settings.fanout_ttl
        self.store.publish([(queue, payload, expires) for queue in queues])
        self.connection.wake.wake_all()

    # -- consuming ------------------------------------------------------------------------
    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        self.connection.wake.socket()  # before the first fetch: no wake-up goes missing
        self.maybe_ready = True
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = compat.consumer_queue(self, consumer_tag)
        ret = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in compat.consumed_queues(self):
            self._no_ack_queues.discard(queue)
            if queue in self._auto_delete and queue not in compat.queue_callbacks(
                    self.connection):
                try:
                    self.queue_delete(queue)
                except Exception as exc:  # a closing channel must not fail on this
                    logger.debug("deleting auto_delete queue %r failed: %r", queue, exc)
        return ret

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        fetched = self._fetch([queue], 1, no_ack={queue} if no_ack else set())
        if not fetched:
            return None
        _, payload, lease, rowid = fetched[0]
        if lease is not None:
            self.connection.incoming[lease] = rowid
        message = self.Message(payload, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _fetch(self, queues: Sequence[str], limit: int, no_ack: set[str] | None = None
               ) -> list[Delivery]:
        """Lease (or pop, for no-ack queues) up to ``limit`` messages (committing the
        transport's deferred acks in the same transaction)."""
        no_ack = self._no_ack_queues if no_ack is None else no_ack
        self._batches += 1
        acks, self.connection.pending_acks = self.connection.pending_acks, []
        try:
            rows = self.store.fetch(queues, limit, f"{self.consumer_id}.{self._batches}.",
                                    self.settings.lease_timeout, no_ack, acks)
        except BaseException:
            self.connection.pending_acks[:0] = acks
            raise
        return self._decode(rows)

    def _decode(self, rows: list[Fetched]) -> list[Delivery]:
        out: list[Delivery] = []
        unreadable: list[tuple[str, int]] = []
        for rowid, queue, redelivered, raw, lease in rows:
            try:
                payload = loads(raw)
                properties = payload["properties"]
                info = properties.setdefault("delivery_info", {})
            except Exception as exc:
                logger.error("dropped an unreadable message from queue %r (%r): %.200r",
                             queue, exc, raw)
                if lease is not None:
                    unreadable.append((lease, rowid))
                continue
            info.setdefault("routing_key", queue)
            info["redelivered"] = redelivered
            if lease is not None:
                properties["delivery_tag"] = lease  # unique per delivery, even of one message
            out.append((queue, payload, lease, rowid))
        if unreadable:
            self.settle(False, unreadable)
        return out

    def wants_fetch(self) -> bool:
        return (self.maybe_ready and not self.closed and bool(compat.consumed_queues(self))
                and self.credit() > 0)

    def credit(self) -> int:
        """How many messages to fetch now: the free prefetch window (at most a batch), or
        0 while more than half of the window is still held (fewer, larger transactions)."""
        qos = self.qos
        estimate = qos.can_consume_max_estimate()
        batch = self.settings.fetch_batch
        if estimate is None:
            return batch
        free = max(0, min(int(estimate), batch))
        held = compat.qos_held(qos)
        if held and free * 2 < min(qos.prefetch_count, batch):
            return 0
        return free

    def fetch_and_deliver(self) -> int:
        """Fetch the free prefetch window from the consumed queues and deliver it."""
        consumed = compat.consumed_queues(self)
        queues = list(consumed)
        limit = self.credit()
        if not queues or not limit or self.closed:
            return 0
        if not self._full_batch and not self.store.any_ready(queues):
            self.maybe_ready = False  # a read, no write lock: idle polls stay cheap
            return 0
        fetched = self._fetch(queues, limit)
        self._full_batch = len(fetched) >= limit
        self.maybe_ready = self._full_batch  # there may be more
        if len(queues) > 1 and fetched:  # fairness: start from the next queue next time
            consumed.append(consumed.pop(0))
        self._deliver(fetched)
        return len(fetched)

    def _deliver(self, fetched: list[Delivery]) -> None:
        """Hand messages to their consumers; release any the application never got."""
        transport = self.connection
        callbacks, incoming = compat.queue_callbacks(transport), transport.incoming
        undelivered: list[tuple[str, int]] = []
        pending = iter(fetched)
        try:
            for queue, payload, lease, rowid in pending:
                if lease is None:
                    compat.deliver(transport, payload, queue)
                    continue
                if queue not in callbacks:  # its consumer was cancelled meanwhile
                    undelivered.append((lease, rowid))
                    continue
                incoming[lease] = rowid
                try:
                    compat.deliver(transport, payload, queue)
                finally:
                    if incoming.pop(lease, None) is not None:  # nobody took it
                        undelivered.append((lease, rowid))
        finally:
            undelivered.extend((lease, rowid) for _, _, lease, rowid in pending
                               if lease is not None)
            if undelivered:
                self.settle(True, undelivered)

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> None:
        if not self.fetch_and_deliver():
            raise Empty()

    # -- leases ---------------------------------------------------------------------------
    def settle(self, requeue: bool, held: Sequence[tuple[str, int]]) -> int:
        """End the leases ``[(delivery tag, row id)]``; returns how many were still ours.
        On the event loop a locked database defers them to a later tick (counted as ours)."""
        pairs = [(rowid, tag) for tag, rowid in held]
        try:
            flags = self.store.settle(requeue, pairs)
        except BrokerBusy as exc:
            if not self.connection.defer_acks:
                raise
            self.connection.defer_settle(requeue, pairs, exc)
            return len(pairs)
        for (tag, _), flag in zip(held, flags, strict=True):
            if not flag:
                logger.debug("%s of delivery %s dropped: its lease expired and the message "
                             "went back to its queue", "requeue" if requeue else "ack", tag)
        done = sum(flags)
        if requeue and done:
            self.connection.wake.wake_all()
        return done

    def confirm_acks(self, held: Sequence[tuple[str, int]]) -> list[bool]:
        # A commit here is all or nothing and its answer cannot be lost, so an ack asked
        # about never reached the file: a lease found gone expired (one transaction for
        # all, so a failure leaves every lease for the next try).
        return [bool(flag) for flag in self.store.settle(False, [(row, tag) for tag, row in held])]

    def renew_leases(self) -> int:
        """Extend every lease this channel holds; returns how many are still held."""
        qos = compat.channel_qos(self)
        if qos is None or not qos.leases:
            return 0
        held = [(rowid, tag) for tag, rowid in qos.leases.items()]
        lost = self.store.renew(held, self.settings.lease_timeout)
        if lost:
            self._leases_lost(qos.forget(lost))
        return len(held) - len(lost)

    def _renew_held(self, held: Sequence[tuple[str, int]]) -> list[str]:
        return self.store.renew([(rowid, tag) for tag, rowid in held],
                                self.settings.lease_timeout)

    def flush_acks(self) -> None:
        self.connection.flush_acks()

    def renew_if_due(self) -> None:
        self.connection.renew_if_due()


# kombu calls these private hooks, which Channel overrides (taskq.compat).
compat.require_hooks(virtual.Channel, "_new_queue", "_has_queue", "_put", "_size", "_purge",
                     "_delete")
