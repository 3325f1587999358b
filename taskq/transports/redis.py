"""taskq's Redis transport for kombu: fetch and lease in one atomic step, renewed leases.

kombu's own Redis transport takes a message with BRPOP and only then records it as unacked:
a worker killed in between loses it, and the unacked messages of a dead worker come back only
after the visibility timeout (an hour by default). Here:

- a consumer blocks with ``BLMOVE`` from the queue into its own *inflight* list (atomic), then
  a Lua script moves what it took into a *lease* and fetches more in the same round trip, up
  to the prefetch window (batching);
- a lease lasts ``lease_timeout`` seconds (default 60) and a live consumer renews every lease
  it holds every ``lease_timeout / 3`` s: a long ``acks_late`` task is never delivered twice
  while its worker stays connected;
- every consumer restores expired leases, and the inflight lists of dead consumers, every
  ``restore_interval`` s (default 5): a dead worker's messages come back within about
  ``lease_timeout + restore_interval``;
- closing a channel requeues nothing (kombu's requeues everything, running tasks included):
  the worker gives back reserved messages itself (``reject(requeue=True)``), and what it
  held when it died comes back when the lease ends.

Publishing is kombu's: queues are the same Redis lists, so Celery and taskq clients publish
to a taskq worker unchanged. Select it with ``Connection(url, transport=Transport)``; taskq
does for ``redis://`` broker URLs.
"""

from __future__ import annotations

import json
import logging
import uuid
from time import monotonic
from typing import Any

from kombu.transport import redis as kredis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from taskq.transports import redis_lua

logger = logging.getLogger("taskq.transports.redis")

DEFAULT_LEASE = 60.0
DEFAULT_RESTORE_INTERVAL = 5.0
RESTORE_BATCH = 500


class LeaseQoS(kredis.QoS):
    """Acks settle leases; nothing is written to kombu's unacked hash."""

    restore_at_shutdown = False

    def append(self, message: Any, delivery_tag: str) -> None:
        virtual.QoS.append(self, message, delivery_tag)  # in memory only: the lease exists

    def ack(self, delivery_tag: str) -> None:
        self.channel._settle(delivery_tag, requeue=False)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel._settle(delivery_tag, requeue=requeue)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        self._delivered.clear()  # leases expire on their own; see the module docstring

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        self.channel._restore_expired()


class Channel(kredis.Channel):
    QoS = LeaseQoS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = self.connection.client.transport_options
        self.lease_timeout = float(options.get("lease_timeout", DEFAULT_LEASE))
        self.renew_interval = float(options.get("renew_interval", self.lease_timeout / 3))
        self.restore_interval = float(options.get(
            "restore_interval", min(DEFAULT_RESTORE_INTERVAL, self.lease_timeout / 6)))
        self.consumer_id = uuid.uuid4().hex
        prefix = self.global_keyprefix or ""
        self._p = prefix
        self._leases = f"{prefix}taskq.leases"
        self._deadlines = f"{prefix}taskq.deadlines"
        self._inflights = f"{prefix}taskq.inflights"
        self._alive = f"{prefix}taskq.alive.{self.consumer_id}"
        self._blocking_qkey: str | None = None
        self._next_renew = 0.0
        self._next_restore = 0.0

    # -- keys -----------------------------------------------------------------------------------
    def _qkey(self, queue: str, pri: int = 0) -> str:
        return self._p + self._q_for_pri(queue, pri)

    def _inflight(self, qkey: str) -> str:
        return f"{self._p}taskq.inflight.{self.consumer_id}.{qkey}"

    def _queue_of(self, qkey: str) -> str:
        name = qkey[len(self._p):] if self._p and qkey.startswith(self._p) else qkey
        return name.rsplit(self.sep, 1)[0]

    def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        # Never on self.client's connection: a BLMOVE may be waiting for its reply there.
        with self.conn_or_acquire() as client:
            return client.execute_command("EVAL", script, len(keys), *keys, *args)

    # -- consuming ------------------------------------------------------------------------------
    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> Any:
        members = [f"{self.consumer_id}\t{self._qkey(queue, pri)}"
                   for pri in self.priority_steps]
        self._eval(redis_lua.REGISTER, [self._alive, self._inflights],
                   [int(self.lease_timeout * 1000), *members])
        return super().basic_consume(queue, *args, **kwargs)

    def _fetch(self, inflight_qkey: str | None, max_n: int) -> list[tuple[str, str, str]]:
        queues = [self._qkey(q, pri) for pri in self.priority_steps
                  for q in self._queue_cycle.consume(len(self.active_queues))]
        keys = [self._leases, self._deadlines, self._alive,
                self._inflight(inflight_qkey) if inflight_qkey else ""]
        args = [int(self.lease_timeout * 1000), max(max_n, 0), inflight_qkey or "", *queues]
        flat = self._eval(redis_lua.FETCH, keys, args)
        out = []
        for i in range(0, len(flat), 3):
            out.append((bytes_to_str(flat[i]), bytes_to_str(flat[i + 1]),
                        bytes_to_str(flat[i + 2])))
        return out

    def _deliver_fetched(self, fetched: list[tuple[str, str, str]]) -> None:
        for qkey, raw, _tag in fetched:
            queue = self._queue_of(qkey)
            self._queue_cycle.rotate(queue)
            self.connection._deliver(json.loads(raw), queue)

    def _room(self) -> int:
        estimate = self.qos.can_consume_max_estimate()
        return 100 if estimate is None else int(estimate)

    def _brpop_start(self, timeout: float | None = None) -> None:
        self._maintain()
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        qkey = self._qkey(queues[0])
        self._blocking_qkey = qkey
        block = timeout if timeout is not None else self.brpop_timeout
        if len(self.active_queues) > 1:
            block = max(0.1, min(block or 1.0, 1.0 / len(self.active_queues)))
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        # BLMOVE is atomic: the message is in our inflight list from this instant on.
        self.client.connection.send_command("BLMOVE", qkey, self._inflight(qkey), "RIGHT",
                                            "LEFT", block or 0)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()
        qkey, self._blocking_qkey = self._blocking_qkey, None
        if item is None:
            # Nothing on the queue we blocked on: others may have some (several queues).
            fetched = self._fetch(None, min(self._room(), 100)) if len(
                self.active_queues) > 1 else []
        else:
            fetched = self._fetch(qkey, max(self._room() - 1, 0))
        if not fetched:
            raise kredis.Empty()
        self._deliver_fetched(fetched)
        return True

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        self._maintain()
        with self.conn_or_acquire():
            queues = [self._qkey(queue, pri) for pri in self.priority_steps]
            keys = [self._leases, self._deadlines, self._alive, ""]
            flat = self._eval(redis_lua.FETCH, keys,
                              [int(self.lease_timeout * 1000), 1, "", *queues])
        if not flat:
            raise kredis.Empty()
        return json.loads(bytes_to_str(flat[1]))

    # -- leases ---------------------------------------------------------------------------------
    def _settle(self, delivery_tag: str, requeue: bool) -> None:
        settled = self._eval(redis_lua.SETTLE, [self._leases, self._deadlines],
                             [delivery_tag, "1" if requeue else "0"])
        if not settled:
            logger.debug("delivery %s: lease already gone (restored elsewhere); nothing to %s",
                         delivery_tag, "requeue" if requeue else "ack")

    def release(self, delivery_tags: list[str]) -> None:
        """Requeue reserved, never started messages now (warm shutdown, eta tasks)."""
        for tag in delivery_tags:
            self.qos.reject(tag, requeue=True)

    def renew(self) -> int:
        """Extend every lease this channel holds (called on a timer by the worker's loop)."""
        tags = list(self.qos._delivered)
        renewed = self._eval(redis_lua.RENEW, [self._leases, self._deadlines, self._alive],
                             [int(self.lease_timeout * 1000), *tags])
        return int(renewed or 0)

    def _restore_expired(self) -> int:
        restored = self._eval(redis_lua.RESTORE, [self._leases, self._deadlines, self._inflights],
                              [RESTORE_BATCH, self._p])
        if restored:
            logger.info("restored %d messages whose lease expired", restored)
        return int(restored or 0)

    def _maintain(self) -> None:
        """Renew and restore when due (the loop's timers do it too; this covers sync use)."""
        now = monotonic()
        if now >= self._next_renew:
            self._next_renew = now + self.renew_interval
            self.renew()
        if now >= self._next_restore:
            self._next_restore = now + self.restore_interval
            self._restore_expired()

    def close(self) -> None:
        if self._in_poll:
            # A BLMOVE in flight: let its reply arrive (into our inflight list) and lease
            # it, so it is delivered or expires, never stranded.
            try:
                self._brpop_read()
            except (kredis.Empty, *self.connection_errors):
                pass
        super().close()


class Transport(kredis.Transport):
    Channel = Channel
    driver_name = "redis"

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle: Any = self.cycle

        def maintain() -> None:
            # A connection error here propagates: the worker's loop treats it as a lost
            # connection and reconnects (a black-holed broker is noticed this way too).
            for channel in list(cycle._channels):
                if isinstance(channel, Channel) and not channel.closed:
                    channel._maintain()

        loop.call_repeatedly(1.0, maintain)


TRANSPORT = "taskq.transports.redis:Transport"
