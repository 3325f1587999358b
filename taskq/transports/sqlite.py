"""taskq's SQLite transport for kombu: an embedded broker in one file, with leases.

``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's spelling);
the default broker when none is configured (``taskq.embedded``). Every process on the host
that opens the file shares its queues. The same lease rules as taskq's Redis transport:

- **durable publish**: a publish is one committed transaction (WAL, ``synchronous=NORMAL``:
  it survives the process being killed) before ``publish`` returns.
- **fetch = lease, in batches**: one ``BEGIN IMMEDIATE`` transaction leases up to the
  consumer's free prefetch (at most ``fetch_batch``), queue by queue, each with a deadline
  ``lease_timeout`` (60 s) ahead. The delivery tag is the lease id, unique per delivery.
- **renewal**: a live consumer extends all its leases every ``renew_interval`` (a third of
  the lease), so long ``acks_late`` tasks are never delivered twice while it lives.
- **prompt restore**: every consuming connection puts messages whose lease expired back at
  the head of their queue, marked ``redelivered``, every ``restore_interval``
  (``min(lease / 6, 5 s)``): a dead consumer's messages come back within lease + interval.
- **settling**: ack deletes; ``reject(requeue=True)`` and ``Channel.release(tags)`` put the
  message back where it is consumed next, marked redelivered; a settle for a lease that is
  gone is dropped (debug log) and never touches a lease someone else took later.
- **closing requeues nothing** but messages fetched and never handed to the application:
  what the application holds comes back when its lease runs out (the worker releases what
  it will not start). ``no_ack`` consumers pop without a lease.
- **wake-ups, not polling**: see ``sqlite_wake``. On the event loop the connection's wake
  socket is a reader and fetching happens on the loop's tick while a wake-up (or a full
  batch) says there may be more; ``drain_events`` blocks on the same socket. A fallback
  poll every ``poll_interval`` (1 s) and the lease timers stay as a safety net.
- **exchanges**: direct and topic bindings, and fanout (a broadcast is copied into every
  bound queue; copies nobody takes within ``fanout_ttl``, 60 s, are dropped, as a broadcast
  to a dead worker is lost on RabbitMQ and Redis too) live in the database, so a reply or a
  broadcast reaches queues another process declared. Queues declared ``auto_delete`` are
  deleted when their consumer is cancelled.

Not supported: message priorities (messages are consumed in publish order, requeued ones
first), queue and message TTLs (``x-expires``/``x-message-ttl``), exchange-to-exchange
bindings. The file must be on a local filesystem (SQLite's locking is unreliable over NFS).
"""

from __future__ import annotations

import logging
import os
import select
import sqlite3
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from time import monotonic, time
from typing import Any

from kombu.transport import virtual
from kombu.utils.json import dumps, loads

from taskq.errors import BrokerBusy, ConfigurationError
from taskq.transports.sqlite_store import Fetched, Store
from taskq.transports.sqlite_wake import WakeDirectory

__all__ = ["TRANSPORT", "Channel", "LeaseQoS", "SQLiteSettings", "Transport"]

TRANSPORT = "taskq.transports.sqlite:Transport"

logger = logging.getLogger("taskq.transports.sqlite")

#: A fetched message: (queue, payload, lease id or None when popped, row id)
Delivery = tuple[str, dict[str, Any], "str | None", int]


# -- settings -------------------------------------------------------------------------------
def _seconds(options: Mapping[str, Any], name: str, default: float, *, minimum: float = 0.0
             ) -> float:
    value = options.get(name)
    if value is None:
        return default
    problem = "expected a number of seconds"
    if not isinstance(value, bool) and isinstance(value, int | float | str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if number > minimum:
                return number
            problem = f"must be greater than {minimum:g}"
    raise ConfigurationError(f"transport option {name}={value!r}: {problem}")


@dataclass(frozen=True)
class SQLiteSettings:
    """The transport options, checked once per connection."""

    lease_timeout: float = 60.0
    renew_interval: float = 20.0
    restore_interval: float = 5.0
    poll_interval: float = 1.0
    busy_timeout: float = 2.0
    fanout_ttl: float = 60.0
    fetch_batch: int = 100

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SQLiteSettings:
        lease = _seconds(options, "lease_timeout", 60.0)
        renew = _seconds(options, "renew_interval", lease / 3)
        if renew >= lease:
            raise ConfigurationError(
                f"transport option renew_interval={renew:g} must be shorter than "
                f"lease_timeout={lease:g} (a third of it is the default)")
        return cls(
            lease_timeout=lease,
            renew_interval=renew,
            restore_interval=_seconds(options, "restore_interval", min(lease / 6, 5.0)),
            poll_interval=_seconds(options, "poll_interval", 1.0),
            busy_timeout=_seconds(options, "busy_timeout", 2.0),
            fanout_ttl=_seconds(options, "fanout_ttl", 60.0),
            fetch_batch=int(_seconds(options, "fetch_batch", 100, minimum=0.5)),
        )

    @property
    def tick(self) -> float:
        """How often renewal, restore and the fallback poll are checked for being due."""
        return min(self.poll_interval, self.renew_interval / 2, self.restore_interval / 2)


# -- acks -----------------------------------------------------------------------------------
class LeaseQoS(virtual.QoS):
    """Prefetch accounting (kombu's) plus the lease of every message this channel holds."""

    restore_at_shutdown = False  # see restore_unacked_once

    def __init__(self, channel: Channel, prefetch_count: int = 0) -> None:
        super().__init__(channel, prefetch_count)
        self.leases: dict[str, int] = {}  # delivery tag (= lease id) -> row id

    def append(self, message: Any, delivery_tag: str) -> None:
        rowid = self.channel.connection.incoming.pop(delivery_tag, None)
        if rowid is not None:
            self.leases[delivery_tag] = rowid
        super().append(message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        transport = self.channel.connection
        rowid = self.leases.pop(delivery_tag, None) if transport.defer_acks else None
        if rowid is not None:
            # On the event loop: deleted in the loop's next tick (before it waits again),
            # in the transaction of the next fetch. A crash in between redelivers the
            # message after its lease, as a crash just before the ack would.
            transport.pending_acks.append((rowid, delivery_tag))
        else:
            self._settle(False, [delivery_tag])
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self._settle(requeue, [delivery_tag])
        super().ack(delivery_tag)

    def release(self, delivery_tags: Iterable[str]) -> int:
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
            return self.channel.settle(requeue, held)
        except BaseException:
            self.leases.update(held)  # still ours: renewed until they expire or settle
            raise

    def forget(self, lease_ids: Iterable[str]) -> list[str]:
        tags = [tag for tag in lease_ids if self.leases.pop(tag, None) is not None]
        return tags

    def restore_unacked(self, client: Any = None) -> list[Any]:
        """``basic_recover(requeue=True)``: give back every message held, now."""
        self.release(list(self.leases))
        self._flush()
        return []

    def restore_unacked_once(self, stderr: Any = None) -> None:
        # kombu requeues every unacked delivery here (close, exit, after fork), running tasks
        # included. With leases a live worker renews what runs and the rest expires.
        self._on_collect.cancel()


# -- the channel ----------------------------------------------------------------------------
class Channel(virtual.Channel):
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
        payload, expires = dumps(message), time() + self.settings.fanout_ttl
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
        queue = self._tag_to_queue.get(consumer_tag)
        ret = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues.discard(queue)
            if queue in self._auto_delete and queue not in self.connection._callbacks:
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
        return (self.maybe_ready and not self.closed and bool(self._active_queues)
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
        held = len(qos._delivered) - len(qos._dirty)
        if held and free * 2 < min(qos.prefetch_count, batch):
            return 0
        return free

    def fetch_and_deliver(self) -> int:
        """Fetch the free prefetch window from the consumed queues and deliver it."""
        queues = list(self._active_queues)
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
            self._active_queues.append(self._active_queues.pop(0))
        self._deliver(fetched)
        return len(fetched)

    def _deliver(self, fetched: list[Delivery]) -> None:
        """Hand messages to their consumers; release any the application never got."""
        transport = self.connection
        callbacks, incoming = transport._callbacks, transport.incoming
        undelivered: list[tuple[str, int]] = []
        pending = iter(fetched)
        try:
            for queue, payload, lease, rowid in pending:
                if lease is None:
                    transport._deliver(payload, queue)
                    continue
                if queue not in callbacks:  # its consumer was cancelled meanwhile
                    undelivered.append((lease, rowid))
                    continue
                incoming[lease] = rowid
                try:
                    transport._deliver(payload, queue)
                finally:
                    if incoming.pop(lease, None) is not None:  # nobody took it
                        undelivered.append((lease, rowid))
        finally:
            undelivered.extend((lease, rowid) for _, _, lease, rowid in pending
                               if lease is not None)
            if undelivered:
                self.settle(True, undelivered)

    def drain_events(self, timeout: float | None = None, callback: Any = None) -> None:
        from queue import Empty

        if not self.fetch_and_deliver():
            raise Empty()

    # -- leases ---------------------------------------------------------------------------
    def settle(self, requeue: bool, held: Sequence[tuple[str, int]]) -> int:
        """End the leases ``[(delivery tag, row id)]``; returns how many were still ours."""
        flags = self.store.settle(requeue, [(rowid, tag) for tag, rowid in held])
        for (tag, _), flag in zip(held, flags, strict=True):
            if not flag:
                logger.debug("%s of delivery %s dropped: its lease expired and the message "
                             "went back to its queue", "requeue" if requeue else "ack", tag)
        done = sum(flags)
        if requeue and done:
            self.connection.wake.wake_all()
        return done

    def release(self, delivery_tags: Iterable[str]) -> int:
        """Requeue these held messages now, where they are consumed next, in order.

        For reserved messages the application will not start (warm shutdown, far eta).
        Returns how many were still held; tags without a lease are ignored.
        """
        return self.qos.release(delivery_tags)

    def renew_leases(self) -> int:
        """Extend every lease this channel holds; returns how many are still held."""
        qos = self._qos
        if qos is None or not qos.leases:
            return 0
        held = [(rowid, tag) for tag, rowid in qos.leases.items()]
        lost = self.store.renew(held, self.settings.lease_timeout)
        if lost:
            tags = qos.forget(lost)
            logger.warning("lost the lease of %d held messages (not renewed in time, they "
                           "went back to their queues and may run twice): %s",
                           len(tags), ", ".join(tags[:10]))
        return len(held) - len(lost)


# -- the transport --------------------------------------------------------------------------
_Channel = Channel


class Transport(virtual.Transport):
    """kombu transport on one SQLite file (see the module docstring)."""

    Channel = Channel
    driver_type = "sqlite"
    driver_name = "sqlite"
    default_port = None
    connection_errors = (  # type: ignore[assignment]
        *virtual.Transport.connection_errors, BrokerBusy)
    channel_errors = virtual.Transport.channel_errors

    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        self.settings = SQLiteSettings.from_options(client.transport_options or {})
        self.path = database_path(client)
        self.store = Store(self.path, busy_timeout=self.settings.busy_timeout)
        self.wake = WakeDirectory(self.path + ".wake")
        self.incoming: dict[str, int] = {}  # fetched, being delivered: tag -> row id
        self.pending_acks: list[tuple[int, str]] = []  # (row id, lease id), see LeaseQoS.ack
        self._hub: Any = None
        self._renew_due = monotonic() + self.settings.renew_interval
        self._restore_due = 0.0  # at the first chance: a dead predecessor's leases
        self._poll_due = 0.0
        self._maintenance_failing = False
        super().__init__(client, **kwargs)

    def driver_version(self) -> str:
        return sqlite3.sqlite_version

    def establish_connection(self) -> Any:
        self.store.connection()  # opens and checks the file: a clear error if unusable
        return super().establish_connection()

    def close_connection(self, connection: Any) -> None:
        try:
            self.flush_acks()
            super().close_connection(connection)
        finally:
            hub, self._hub = self._hub, None
            if hub is not None and self.wake.bound:
                try:
                    hub.remove(self.wake.socket().fileno())
                except (KeyError, ValueError, OSError):
                    pass
            self.wake.close()
            self.store.close()

    def _consuming(self) -> list[_Channel]:
        return [c for c in self.channels if c._consumers and not c.closed]

    # -- upkeep ---------------------------------------------------------------------------
    def maintain(self) -> None:
        """Renew, restore and poll when due (the loop's timer, and ``drain_events``)."""
        now = monotonic()
        try:
            if now >= self._renew_due:
                self._renew_due = now + self.settings.renew_interval
                for channel in list(self.channels):
                    if not channel.closed:
                        channel.renew_leases()
            consuming = self._consuming()
            if now >= self._restore_due and consuming:
                self._restore_due = now + self.settings.restore_interval
                restored = self.store.restore_expired()
                if restored:
                    logger.info("restored %d messages whose lease expired", restored)
                    self.wake.wake_all()
            if now >= self._poll_due:
                self._poll_due = now + self.settings.poll_interval
                for channel in consuming:
                    channel.maybe_ready = True
        except BrokerBusy as exc:
            if not self._maintenance_failing:
                logger.warning("renewing/restoring leases failed (%s); retrying", exc)
            self._maintenance_failing = True
        else:
            self._maintenance_failing = False

    @property
    def defer_acks(self) -> bool:
        return self._hub is not None

    def _fetch_ready(self) -> int:
        """Fetch and deliver where a wake-up or a full batch says there may be more; then
        commit deferred acks (they went with the first fetch, if there was one)."""
        delivered = 0
        for channel in self._consuming():
            if channel.wants_fetch():
                delivered += channel.fetch_and_deliver()
        self.flush_acks()
        return delivered

    def flush_acks(self) -> None:
        acks, self.pending_acks = self.pending_acks, []
        if acks:
            try:
                self.store.settle(False, acks)
            except BaseException:
                self.pending_acks[:0] = acks
                raise

    # -- the event loop -------------------------------------------------------------------
    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        self._hub = loop
        loop.add_reader(self.wake.socket().fileno(), self._on_readable)
        loop.on_tick.add(self._on_tick)
        loop.call_repeatedly(self.settings.tick, self.maintain)

    def _on_tick(self) -> None:
        # Runs before the loop polls. Fetching here would deliver before the loop's
        # call_soon queue runs and then block in the poll: instead, when there is something
        # to fetch, poke our own socket so the poll returns at once and the fetch happens
        # in _on_readable, where a broker socket's messages are delivered on other transports.
        if any(channel.wants_fetch() for channel in self._consuming()):
            self.wake.poke()
        else:
            self.flush_acks()  # committed before the loop waits

    def _on_readable(self) -> None:
        self._on_wake()
        self._fetch_ready()

    def _on_wake(self) -> None:
        self.wake.drain()
        for channel in self._consuming():
            channel.maybe_ready = True

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any
                     ) -> None:
        """Deliver what is ready; else wait on the wake socket (renewing, restoring and
        polling on the way) until something is, or ``timeout`` passes (``TimeoutError``)."""
        deadline = None if timeout is None else monotonic() + timeout
        sock = self.wake.socket()
        while True:
            self.maintain()
            if self._fetch_ready():
                return
            wait = self.settings.tick
            if deadline is not None:
                left = deadline - monotonic()
                if left <= 0:
                    raise TimeoutError()
                wait = min(wait, left)
            try:
                readable, _, _ = select.select([sock], [], [], wait)
            except InterruptedError:
                readable = []
            if readable:
                self._on_wake()

    @property
    def default_connection_params(self) -> dict[str, Any]:
        return {"port": None, "hostname": None}


def database_path(client: Any) -> str:
    """The file a ``sqlite://`` kombu connection names (``sqlite:///rel.db``,
    ``sqlite:////abs.db``), or a ``ConfigurationError`` saying how to write it."""
    host = client.hostname or ""
    path = client.virtual_host or ""
    if host and host not in {"localhost"}:
        raise ConfigurationError(
            f"broker URL sqlite://{host}/...: a SQLite broker is a local file; write "
            "sqlite:///relative/path.db or sqlite:////absolute/path.db")
    if not path or path in {"/", ":memory:"}:
        raise ConfigurationError(
            "broker URL sqlite://: name the database file, as sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (an in-memory database cannot be shared by processes)")
    return os.path.abspath(os.path.expanduser(path))
