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
  socket is a reader: a wake-up marks its channels and the fetch runs in that reader, where
  other transports deliver too (the loop's tick pokes the socket itself when a full batch
  or freed prefetch leaves more to fetch). ``drain_events`` blocks on the same socket. A
  fallback poll every ``poll_interval`` (1 s) and the lease timers stay as a safety net.
- **acks on the loop** are committed in the loop's next tick, before it waits again, in the
  transaction of the next fetch when there is one (fewer transactions); outside a loop at
  once.
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
from collections.abc import Mapping
from dataclasses import dataclass
from time import monotonic
from typing import Any

from kombu.transport import virtual

from taskq import compat
from taskq.errors import BrokerBusy, ConfigurationError
from taskq.transports.lease import check_renewal, lease_clock
from taskq.transports.sqlite_channel import Channel, LeaseQoS
from taskq.transports.sqlite_channel import Channel as _Channel  # Transport.Channel shadows
from taskq.transports.sqlite_store import Store
from taskq.transports.sqlite_wake import WakeDirectory

__all__ = ["TRANSPORT", "Channel", "LeaseQoS", "SQLiteSettings", "Transport"]

TRANSPORT = "taskq.transports.sqlite:Transport"

logger = logging.getLogger("taskq.transports.sqlite")


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
        check_renewal(lease, renew)
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


# -- the transport --------------------------------------------------------------------------
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
        options = client.transport_options or {}
        self.settings = SQLiteSettings.from_options(options)
        self.path = database_path(client)
        # Renewal, restore and the fallback poll are timed on self.clock. An injected clock
        # (a test's) also carries the lease deadlines in the file, under the clock id
        # "injected" (shared by every injected clock): a process on the real clock that
        # opens the file expires those leases, as after a reboot.
        self.clock = lease_clock(options)
        if options.get("clock") is None:
            self.store = Store(self.path, busy_timeout=self.settings.busy_timeout)
        else:
            self.store = Store(self.path, busy_timeout=self.settings.busy_timeout,
                               clock=self.clock, clock_id="injected")
        self.wake = WakeDirectory(self.path + ".wake")
        self.incoming: dict[str, int] = {}  # fetched, being delivered: tag -> row id
        self.pending_acks: list[tuple[int, str]] = []  # (row id, lease id), see LeaseQoS.ack
        self.pending_requeues: list[tuple[int, str]] = []  # requeues a locked database held up
        self._busy_until = 0.0  # after BrokerBusy on the loop: retry the database then
        self._hub: Any = None
        self._renew_due = self.clock() + self.settings.renew_interval
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
        return [c for c in self.channels if compat.has_consumers(c) and not c.closed]

    # -- upkeep ---------------------------------------------------------------------------
    def renew_if_due(self) -> None:
        """Renew every channel's leases when due (also from another thread while the loop's
        thread runs a task: the store serialises its connection)."""
        now = self.clock()
        if now >= self._renew_due:
            self._renew_due = now + self.settings.renew_interval
            for channel in list(self.channels):
                if not channel.closed:
                    channel.renew_leases()

    def maintain(self) -> None:
        """Renew, restore and poll when due (the loop's timer, and ``drain_events``)."""
        now = self.clock()
        try:
            self.renew_if_due()
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
        """Commit the deferred acks (and requeues a locked database held up)."""
        acks, self.pending_acks = self.pending_acks, []
        requeues, self.pending_requeues = self.pending_requeues, []
        if not acks and not requeues:
            return
        try:
            flags = self.store.settle(False, acks) if acks else []
            if requeues and sum(self.store.settle(True, requeues)):
                self.wake.wake_all()
        except BaseException:
            self.pending_acks[:0] = acks  # sent again: a settle of a settled lease is a no-op
            self.pending_requeues[:0] = requeues
            raise
        for (_, lease), held in zip(acks, flags, strict=True):
            if not held:
                logger.debug("ack of delivery %s dropped: its lease expired and the message "
                             "went back to its queue", lease)

    def take_pending_acks(self) -> list[tuple[str, int]]:
        """The deferred acks not committed yet [(delivery tag, row id)], no longer this
        transport's to send (a lost connection's: the consumer carries them to the next)."""
        acks, self.pending_acks = self.pending_acks, []
        return [(tag, row) for row, tag in acks]

    def defer_settle(self, requeue: bool, held: list[tuple[int, str]], exc: BrokerBusy
                     ) -> None:
        """A settle on the loop found the database locked: keep it for a later tick instead
        of treating the stall as a lost connection (which would drop every reservation)."""
        (self.pending_requeues if requeue else self.pending_acks).extend(held)
        self._on_busy(exc)

    # -- a locked database on the loop: retried in place ----------------------------------
    def _busy(self) -> bool:
        return monotonic() < self._busy_until

    def _on_busy(self, exc: BrokerBusy) -> None:
        if not self._busy_until:
            logger.warning("%s; retrying in place (reservations and acks are kept)", exc)
        self._busy_until = monotonic() + min(1.0, self.settings.poll_interval)

    def _on_db_ok(self) -> None:
        if self._busy_until and not self._busy():
            logger.info("the broker database %r is writable again", self.path)
            self._busy_until = 0.0

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
        if self._busy():
            return  # the database was locked a moment ago: the next tick tries again
        if any(channel.wants_fetch() for channel in self._consuming()):
            self.wake.poke()
            return
        try:
            self.flush_acks()  # committed before the loop waits
        except BrokerBusy as exc:
            self._on_busy(exc)
        else:
            self._on_db_ok()

    def _on_readable(self) -> None:
        self._on_wake()
        if self._busy():
            return
        try:
            self._fetch_ready()
        except BrokerBusy as exc:  # kept: the fetch and the acks are retried on a later tick
            self._on_busy(exc)
        else:
            self._on_db_ok()

    def _on_wake(self) -> None:
        self.wake.drain()
        for channel in self._consuming():
            channel.maybe_ready = True

    def drain_events(self, connection: Any, timeout: float | None = None, **kwargs: Any
                     ) -> None:
        """Deliver what is ready; else wait on the wake socket (renewing, restoring and
        polling on the way) until something is, or ``timeout`` passes (``TimeoutError``)."""
        deadline = None if timeout is None else monotonic() + timeout
        # poll, not select: select() fails for fd numbers >= 1024 (a busy process has them)
        poller = select.poll()
        poller.register(self.wake.socket(), select.POLLIN)
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
            if poller.poll(max(1, round(wait * 1000))):
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
