"""The broker side of the worker: connect, consume, ack, and reconnect after a loss.

One connection, registered with the loop. A connection error anywhere (a callback in the
loop, an ack, a heartbeat) lands in ``on_connection_error``: the connection's registrations
leave the loop, its generation number moves on (acks for messages of an older generation are
dropped: the broker redelivers those messages), and a reconnect is scheduled on the loop's
timer with backoff. The pool keeps running throughout.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kombu import Consumer as KombuConsumer
from kombu import Queue
from kombu.common import QoS
from kombu.exceptions import OperationalError

from taskq import compat
from taskq.errors import BrokerBusy, ConfigurationError
from taskq.publish import broker_url
from taskq.transports.lease import LeaseChannelMixin, lease_of
from taskq.urls import safe_url
from taskq.worker.acks import AmqpAcks
from taskq.worker.offload import Offload, Outcome

if TYPE_CHECKING:
    from kombu import Connection, Message

    from taskq.app import TaskQ
    from taskq.worker.loop import Loop, Registration
    from taskq.worker.request import Request

logger = logging.getLogger("taskq.worker.consumer")

RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0)  # then 2 s between attempts, so never > 2 s late
WAITING_EVERY = 10  # attempts between "waiting for the broker" lines before the first connect
MAX_BLOCKING = 2.0  # DESIGN.md: no call in the main process blocks longer than this


def _is_fatal(exc: BaseException) -> str | None:
    """A reason when ``exc`` means retrying cannot help (bad credentials, wrong vhost, ...)."""
    name = type(exc).__name__
    text = str(exc)
    if name in {"AccessRefused", "NotAllowed"} or "ACCESS_REFUSED" in text:
        return "the broker refused the credentials or virtual host; check broker_url"
    if name == "PreconditionFailed" and "inequivalent arg" in text:
        return ("a queue or exchange exists on the broker with other arguments; delete it or "
                "match its settings")
    if name in {"AuthenticationError", "AuthenticationWrongNumberOfArgsError"}:
        return "Redis refused the password; check broker_url"
    return None


def is_quorum(queue: Queue) -> bool:
    """A RabbitMQ quorum queue (``x-queue-type: quorum`` in its arguments)."""
    arguments = getattr(queue, "queue_arguments", None) or {}  # kombu sets it at run time
    return arguments.get("x-queue-type") == "quorum"


def connect_once(conn: Connection) -> None:
    """Open ``conn`` with a single attempt. kombu's ``connect()`` makes two, sleeping 2 s in
    between, which would stall the loop on every reconnect attempt (we retry on a timer)."""
    compat.ensure_connection_once(conn)


class BrokerConsumer:
    """Owns the worker's broker connection, its task consumer and its QoS."""

    def __init__(
        self,
        app: TaskQ,
        loop: Loop,
        *,
        queues: Sequence[Queue],
        prefetch: int,
        on_message: Callable[[Message], None],
        on_connected: Callable[[Connection], None],
        on_lost: Callable[[int], None],
        on_fatal: Callable[[str], None],
    ) -> None:
        self.app = app
        self.loop = loop
        self.queues = list(queues)
        self.prefetch = prefetch
        self.on_message = on_message
        self.on_connected = on_connected
        self.on_lost = on_lost
        self.on_fatal = on_fatal
        self.urls = broker_url(app.conf).split(";")
        for url in self.urls:  # a scheme no transport takes fails here, once, before any step
            app.connection(url)
        self.url_index = 0
        self.generation = 0
        self.connection: Connection | None = None
        self.qos: QoS | None = None
        self._consumer: KombuConsumer | None = None
        self._acks: AmqpAcks | None = None  # AMQP: acks deferred to the loop's tick
        # Lease transports: the acks and requeues asked for after a connection was lost, of
        # requests that came on it, for the next connection to send (see _send_carried),
        # and the leases of the acks the lost connection had not sent (or sent without an
        # answer: an early ack among them is also confirmed, see confirm_acks).
        self._late_settles: list[tuple[Message, bool]] = []  # (message, requeue)
        # (delivery tag, lease); an early ack not among them was answered (see confirm_acks).
        self._carried_acks: list[tuple[str, Any]] = []
        # The error types of the last connection's transport (see is_connection_error).
        self._error_types: tuple[type[BaseException], ...] = ()
        self.requeues_on_close = False
        self._registration: Registration | None = None
        self._attempt = 0
        self._reconnect_entry: Any = None
        # DNS is looked up off the loop before each connect (a resolver can take 5 s per
        # try); the address found is used for that connect only.
        self._dns = Offload(loop, "broker address lookup", maxsize=1)
        self._addresses: dict[str, str] = {}
        self._consuming = True
        self.connected_once = False
        self.on_consuming: Callable[[], None] | None = None  # after each (re)connect
        # Lease transports: told the requests whose lease renewal found gone (set by the
        # worker); settle_at_once for a pool that blocks the loop (no tick flushes acks).
        self.on_leases_lost: Callable[[list[str]], None] | None = None
        self.settle_at_once = False
        # Early acks answered on the loop (Redis): the worker looks at its waiting requests.
        self.on_acks_answered: Callable[[], None] | None = None
        self._loop_thread = threading.get_ident()

    @property
    def url(self) -> str:
        return self.urls[self.url_index % len(self.urls)]

    @property
    def connected(self) -> bool:
        return self.connection is not None

    # -- connecting ---------------------------------------------------------------------------
    def start(self) -> None:
        self._try_connect()

    def _try_connect(self) -> None:
        self._reconnect_entry = None
        if not self._consuming:
            return
        try:
            if self._look_up_first():
                return  # _looked_up() calls again once the address is known
            if not self._connect():
                return  # lost again while taking over: a reconnect is scheduled
        except ConfigurationError as exc:  # it says what to do; no traceback
            self.on_fatal(f"cannot consume from {safe_url(self.url)}: {exc}")
            return
        except Exception as exc:
            fatal = _is_fatal(exc)
            if fatal:
                self.on_fatal(f"cannot consume from {safe_url(self.url)}: {fatal} ({exc})")
                return
            if not self.is_connection_error(exc):
                logger.exception("starting to consume from %s failed", safe_url(self.url))
                self.on_fatal(f"cannot consume from {safe_url(self.url)}: {exc!r}")
                return
            self._teardown()
            self._schedule_reconnect(exc)
        else:
            if self._attempt or self.connected_once:
                logger.info("connected to %s again", safe_url(self.url))
            else:
                logger.info("connected to %s", safe_url(self.url))
            self._attempt = 0
            self.connected_once = True
            if self.on_consuming is not None:
                self.on_consuming()

    def _connect(self) -> bool:
        """Connect and consume; False when the connection was lost again while the old
        one's work was being taken over (torn down, a reconnect scheduled)."""
        conf = self.app.conf
        heartbeat = conf.broker_heartbeat or None
        conn = self.app.connection(self.url, heartbeat=heartbeat)
        address = self._addresses.pop(str(conn.hostname), None)
        if address is not None:
            conn.hostname = address  # looked up off the loop just now
        conn.connect_timeout = min(conf.broker_connection_timeout, MAX_BLOCKING)
        if conn.transport.driver_type == "redis":
            # redis-py answers a failed read by reconnecting and reading again, and reads
            # pub/sub sockets with no timeout (redis >= 8): in the loop, after the server
            # kills our connections, that read blocks forever. Errors must reach the loop,
            # which reconnects with its own bounded steps.
            conn.transport_options = {**(conn.transport_options or {}),
                                      "retry_on_timeout": False}
        self.connection = conn
        self._error_types = tuple(conn.connection_errors) + tuple(conn.channel_errors)
        # AMQP puts a closed channel's unacked deliveries back at once; the lease transports
        # only when the lease runs out (lifecycle.Facts.requeued_on_close).
        self.requeues_on_close = conn.transport.driver_type == "amqp"
        connect_once(conn)
        channel = conn.channel()
        if isinstance(channel, LeaseChannelMixin):
            channel.on_leases_lost = self._leases_lost
            if hasattr(channel, "on_acks_answered"):
                channel.on_acks_answered = self._acks_answered
        consumer = KombuConsumer(channel, queues=self.queues, on_message=self._on_message,
                                 no_ack=False, auto_declare=True)
        # RabbitMQ >= 3.3 reads a global prefetch as one limit for the channel (every queue
        # consumed on it), as we want. Quorum queues refuse it (540 NOT_IMPLEMENTED at
        # basic.consume): with one among the queues the prefetch is per consumer, as Celery
        # 5.5 does; a later prefetch change then reaches only consumers started after it.
        apply_global = (not conn.qos_semantics_matches_spec
                        and not any(is_quorum(q) for q in self.queues))

        def set_prefetch(prefetch_count: int) -> None:
            consumer.qos(prefetch_count=prefetch_count, apply_global=apply_global)

        self.qos = QoS(set_prefetch, self.prefetch)
        self.qos.update()
        if conn.transport.driver_type == "amqp":
            self._acks = AmqpAcks(channel)
        consumer.consume()
        self._consumer = consumer
        self.on_connected(conn)
        self._send_carried()
        if self.connection is not conn:
            return False

        def register() -> None:
            conn.register_with_event_loop(self.loop.hub)
            if heartbeat and conn.transport.driver_type == "amqp":
                self.loop.hub.call_repeatedly(heartbeat / 2.0, conn.heartbeat_check, 2.0)

        self._registration = self.loop.capture(register)
        compat.set_propagate_errors(
            self.loop.hub, tuple(conn.connection_errors) + tuple(conn.channel_errors))
        self.loop.hub.on_tick.add(self._update_qos)
        self.loop.hub.on_tick.add(self._flush_acks)
        return True

    def _look_up_first(self) -> bool:
        """Start an off-loop lookup of the broker's host name when connecting would look it
        up on the loop; True when one runs. Not for an address, a socket path, a transport
        without a host, or TLS (whose certificate check needs the name)."""
        conn = self.app.connection(self.url)
        host, port = conn.hostname, conn.port or conn.transport.default_port
        if (not host or host in self._addresses or host.startswith("socket:")
                or conn.transport.driver_type not in {"amqp", "redis"} or conn.ssl
                or self.url.split("://", 1)[0].lower() in {"amqps", "rediss"}):
            return False
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host.strip("[]"))
            return False
        if self._dns.pending():
            return True  # the lookup under way calls _try_connect when it is done

        def look_up() -> str:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            ipv4 = [info[4][0] for info in infos if info[0] == socket.AF_INET]
            return str(ipv4[0]) if ipv4 else host  # IPv6 only: left to the transport

        return self._dns.submit(f"looking up the broker host {host}", look_up,
                                lambda outcome: self._looked_up(host, outcome))

    def _looked_up(self, host: str, outcome: Outcome) -> None:
        if not self._consuming or self.connection is not None:
            return
        if not outcome.ok:
            assert outcome.error is not None
            self._schedule_reconnect(outcome.error)
            return
        self._addresses[host] = outcome.value
        self._try_connect()

    def _schedule_reconnect(self, exc: BaseException) -> None:
        delay = RECONNECT_DELAYS[min(self._attempt, len(RECONNECT_DELAYS) - 1)]
        self._attempt += 1
        if (not self.connected_once and self._attempt >= len(self.urls)
                and not self.app.conf.broker_connection_retry_on_startup):
            # As Celery: each broker URL tried once, then the worker gives up.
            self.on_fatal(f"cannot reach the broker at {safe_url(self.url)} "
                          f"({type(exc).__name__}: {exc}) and "
                          "broker_connection_retry_on_startup is off")
            return
        if len(self.urls) > 1:
            self.url_index += 1
        if not self.connected_once:
            # Not consuming yet: say so at the first attempt and now and then after it.
            level = logging.WARNING if self._attempt % WAITING_EVERY == 1 else logging.DEBUG
            logger.log(level, "waiting for the broker at %s (%s: %s); not consuming yet, "
                       "trying again in %.1f s", safe_url(self.url), type(exc).__name__, exc,
                       delay)
        else:
            logger.warning("broker %s unreachable (%s: %s); trying %s again in %.1f s",
                           safe_url(self.url), type(exc).__name__, exc, safe_url(self.url),
                           delay)
        self._reconnect_entry = self.loop.hub.call_later(delay, self._try_connect)

    def _update_qos(self) -> None:
        if self.qos is not None and self.qos.prev != self.qos.value:
            try:
                self.qos.update()
            except Exception as exc:
                self.on_connection_error(exc)

    # -- losing the connection ----------------------------------------------------------------
    def is_connection_error(self, exc: BaseException) -> bool:
        if isinstance(exc, OSError | OperationalError):
            return True
        conn = self.connection
        if conn is None:
            # Torn down already: a callback of the lost connection still queued in the hub
            # can raise its transport's error after that (py-amqp's "Socket was
            # disconnected" a few ms after the first error); it is the same lost connection.
            return isinstance(exc, self._error_types)
        return isinstance(exc, tuple(conn.connection_errors) + tuple(conn.channel_errors))

    def on_connection_error(self, exc: BaseException) -> None:
        if self.connection is None:
            return  # already torn down; a reconnect is scheduled
        fatal = _is_fatal(exc)
        if fatal:
            self.on_fatal(f"broker {safe_url(self.url)}: {fatal} ({exc})")
            return
        logger.warning("lost the broker connection to %s (%s: %s); the pool keeps running, "
                       "reserved tasks come back from the broker", safe_url(self.url),
                       type(exc).__name__, exc)
        old_generation = self.generation
        self._teardown()
        self.on_lost(old_generation)
        self._schedule_reconnect(exc)

    def _flush_acks(self) -> None:
        if self._acks is not None and self._acks.pending:
            try:
                self._acks.flush()
            except Exception as exc:
                if not self.is_connection_error(exc):
                    raise
                self.on_connection_error(exc)

    def _teardown(self) -> None:
        transport = compat.existing_transport(self.connection)
        take = getattr(transport, "take_pending_acks", None)  # lease transports
        if take is not None:
            carried = take()
            if carried:
                logger.info("%d acks not sent (or not answered) before the connection was "
                            "lost: the next connection sends them", len(carried))
                self._carried_acks.extend(carried)
        unsent = self._unsent_acks()
        if unsent:
            # Never silently: for acks_late tasks (early acks are sent before their job
            # starts) this means they may run again, as DESIGN.md's table allows.
            logger.warning("%d acks not sent before the connection was lost: those messages "
                           "come back from the broker (acks_late tasks may run again)", unsent)
        self.generation += 1
        self.loop.hub.on_tick.discard(self._update_qos)
        self.loop.hub.on_tick.discard(self._flush_acks)
        self._acks = None  # unsent acks are lost with the connection: those messages come back
        if self._registration is not None:
            self.loop.release(self._registration)
            self._registration = None
        conn, self.connection, self._consumer, self.qos = self.connection, None, None, None
        compat.set_propagate_errors(self.loop.hub, ())
        if conn is not None:
            try:
                conn.collect(socket_timeout=1.0)
            except Exception as exc:  # a dead connection may fail to close; it is gone anyway
                logger.debug("closing the lost connection failed: %r", exc)

    # -- messages -----------------------------------------------------------------------------
    def _on_message(self, message: Message) -> None:
        if self._acks is not None:
            self._acks.delivered(message.delivery_tag)
        self.on_message(message)

    def _settle(self, request: Request, action: str, fn: Callable[[], Any]) -> bool:
        if request.acknowledged:
            return True
        if request.generation != self.generation or self.connection is None:
            if action != "drop" and lease_of(request.message) is not None:
                # A lease transport: the next connection settles it (see _send_carried).
                self._late_settles.append((request.message, action == "requeue"))
                request.acknowledged = True
                self._send_carried()
                return True
            logger.debug("%s of %s[%s] dropped: its connection is gone and the broker "
                         "redelivers the message", action, request.name, request.id)
            return False
        try:
            fn()
        except Exception as exc:
            if self.is_connection_error(exc):
                self.on_connection_error(exc)
                return False
            logger.error("%s of %s[%s] failed: %r", action, request.name, request.id, exc)
            return False
        request.acknowledged = True
        if self.settle_at_once:
            self._settle_now()
        return True

    def ack(self, request: Request) -> bool:
        return self._settle(request, "ack", lambda: self._ack(request.message))

    def ack_now(self, requests: Sequence[Request]) -> list[Request]:
        """Ack ``requests`` and send the acks before returning, in one round trip for all
        (bounded by the socket timeouts): the early acks of jobs about to go to the pool
        (DESIGN.md: for early ack a task counts as running from then on). Returns those whose
        ack was sent, now ``acknowledged``. The rest stay unacked: their connection is gone
        (the broker delivers them again; on Redis and SQLite an ack whose answer was lost is
        settled by ``confirm_acks``), or the broker was busy and the acks are still queued
        (the loop's tick sends them; call again)."""
        generation = self.generation
        queued: list[Request] = []
        for request in requests:
            if request.acknowledged:
                queued.append(request)
                continue
            if request.generation != generation or self.connection is None:
                continue
            if not request.message.acknowledged:  # queued by an earlier call: not twice
                # Lease transports: until the broker answers, the ack's lease is the
                # request's (a lost answer is settled by confirm_acks on the next connection).
                lease = lease_of(request.message)
                request.ack_lease = (None if lease is None
                                     else (request.message.delivery_tag, lease))
                try:
                    self._ack(request.message)
                except Exception as exc:
                    if not self.is_connection_error(exc):
                        raise
                    if request.ack_lease is not None:  # sent at once (no loop yet), unanswered
                        self._carried_acks.append(request.ack_lease)
                    self.on_connection_error(exc)
                    return []
            queued.append(request)
        amqp = self._acks
        if not queued:
            return []
        if not self._send_acks():
            if amqp is None or not amqp.written:
                return []
            # RabbitMQ may have the acks written whole before the connection failed (an
            # AMQP ack has no answer): those tasks run here; if the broker did not get an
            # ack, it redelivers that task too (the table's "may run twice" on RabbitMQ).
            queued = [r for r in queued if r.message.delivery_tag in amqp.written]
        elif (pipelined := self._pipelined_channel()) is not None:
            # Redis on the loop: sent without waiting; the loop reads the answers and the
            # worker asks again (``on_acks_answered``). Acked are those answered.
            unanswered = pipelined.unanswered_acks()
            if unanswered:
                queued = [r for r in queued
                          if r.ack_lease is None or r.ack_lease[1] not in unanswered]
        for request in queued:
            request.acknowledged = True
        return queued

    def _send_acks(self) -> bool:
        """Send the deferred acks now; True when none is left unsent on this connection."""
        generation = self.generation
        try:
            if self._acks is not None:
                self._acks.flush()
            elif (channel := self._lease_channel()) is not None:
                pipelined = self._pipelined_channel()  # Redis: answered on the loop
                if pipelined is None or not pipelined.send_acks():
                    channel.flush_acks()
        except BrokerBusy as exc:  # the embedded broker's lock: kept, sent again later
            logger.warning("sending acks failed (%s); the tasks wait for them", exc)
            return False
        except Exception as exc:
            if not self.is_connection_error(exc):
                raise
            self.on_connection_error(exc)
            return False
        return self.generation == generation and not self._unsent_acks()

    def _pipelined_channel(self) -> Any:
        channel = self._lease_channel()
        return channel if hasattr(channel, "send_acks") else None

    def awaiting_answer(self, requests: Sequence[Request]) -> list[Request]:
        """Right after ``ack_now(requests)``: those whose early ack was sent on this
        connection and is not answered yet (``ack_now`` acknowledged the answered ones, and a
        failed send moved to a new generation); they wait for it (``on_acks_answered``)."""
        if self._pipelined_channel() is None:
            return []
        return [r for r in requests if not r.acknowledged and r.generation == self.generation
                and r.ack_lease is not None]

    def wait_for_acks(self) -> None:
        """Read the answers to the early acks sent (bounded by the socket timeout): a
        stopping worker must know which of its waiting tasks were acked."""
        channel = self._pipelined_channel()
        if channel is None:
            return
        try:
            channel.wait_for_acks()
        except Exception as exc:
            if not self.is_connection_error(exc):
                raise
            self.on_connection_error(exc)

    def _acks_answered(self) -> None:
        if self.on_acks_answered is not None:
            self.on_acks_answered()

    def _unsent_acks(self) -> int:
        if self._acks is not None:
            return len(self._acks.pending)
        transport = compat.existing_transport(self.connection)  # never create one here
        return len(getattr(transport, "pending_acks", ()))

    def drop(self, request: Request) -> bool:
        """Forget a request whose lease is gone: frees its prefetch credit, sends nothing
        (a lease channel settles nothing it no longer holds)."""
        return self._settle(request, "drop", lambda: self._reject(request.message, False))

    # -- leases across reconnects (taskq's Redis and SQLite transports) ------------------------
    def _send_carried(self) -> None:
        """Settle through this connection the acks and requeues asked for after the
        connection their requests came on was lost, and the acks that connection had not
        sent (kept for the next one if this fails)."""
        channel = self._lease_channel()
        if channel is None or not (self._late_settles or self._carried_acks):
            return
        late, self._late_settles = self._late_settles, []
        acks, self._carried_acks = self._carried_acks, []
        try:
            channel.settle_leases(acks)
            for requeue in (False, True):
                messages = [m for m, r in late if r is requeue]
                if messages:
                    channel.release_orphans(messages, requeue=requeue)
        except Exception as exc:
            if not self.is_connection_error(exc):
                raise
            self._late_settles[:0] = late  # a settle of a settled lease is a no-op
            self._carried_acks[:0] = acks
            self.on_connection_error(exc)
            return
        if late:
            logger.info("settled %d tasks of a lost connection that ended while it was down",
                        len(late))

    def _lease_channel(self) -> LeaseChannelMixin | None:
        channel = self._consumer.channel if self._consumer is not None else None
        return channel if isinstance(channel, LeaseChannelMixin) else None

    def adopt(self, requests: Sequence[Request]) -> list[Request]:
        """Renew the leases of ``requests`` (of lost connections, still in the pool) under
        this connection, whose generation they take: their acks go through it. Returns those
        whose lease is gone. A connection error propagates (the reconnect fails)."""
        channel = self._lease_channel()
        if channel is None or not requests:
            return []
        gone = {id(m) for m in channel.adopt([r.message for r in requests])}
        for request in requests:
            if id(request.message) not in gone:
                request.generation = self.generation
        lost = [r for r in requests if id(r.message) in gone]
        logger.info("took over the leases of %d tasks of the lost connection (%d were gone)",
                    len(requests) - len(lost), len(lost))
        return lost

    def confirm_acks(self, requests: Sequence[Request]) -> list[Request]:
        """Find out, through this connection, whether the early acks of ``requests`` (sent on
        a connection lost before the broker answered) were applied; ack those not applied
        yet. Returns the requests now acked (``acknowledged``, of this connection's
        generation: they run here); the others' leases expired and their messages went back
        to their queues. A connection error propagates (the reconnect fails)."""
        # An ack the lost connection had sent and seen answered was applied; only those it
        # had not sent, or sent without an answer (Redis: the script may have run), are asked.
        # (They are still carried: _send_carried runs after this, on_connected.)
        unanswered = set(self._carried_acks)
        acked = [r for r in requests if r.ack_lease is not None and r.ack_lease not in unanswered]
        ask = [r for r in requests if r.ack_lease in unanswered]
        channel = self._lease_channel()
        if ask and channel is not None:
            flags = channel.confirm_acks([r.ack_lease for r in ask if r.ack_lease is not None])
            acked += [r for r, flag in zip(ask, flags, strict=True) if flag]
        for request in acked:
            request.acknowledged = True
            request.generation = self.generation
        logger.info("confirmed the early acks of %d tasks sent as the connection was lost "
                    "(%d had expired and went back to their queues)", len(acked),
                    len(requests) - len(acked))
        return acked

    def release_orphans(self, requests: Sequence[Request]) -> None:
        """Give back now the messages of ``requests`` of lost connections that will not run
        here (AMQP requeued them when the connection closed)."""
        channel = self._lease_channel()
        if channel is None:
            return
        try:
            released = channel.release_orphans([r.message for r in requests])
        except Exception as exc:
            if not self.is_connection_error(exc):
                raise
            logger.warning("giving back %d reserved messages of the lost connection failed "
                           "(%r): they come back after their lease", len(requests), exc)
            self.on_connection_error(exc)
            return
        logger.info("gave back %d reserved messages of the lost connection (%d still held)",
                    len(requests), released)

    def _leases_lost(self, tags: list[str]) -> None:
        if self.on_leases_lost is None:
            return
        if threading.get_ident() == self._loop_thread:
            self.on_leases_lost(tags)
        else:  # renewed from the solo pool's keepalive thread
            self.loop.post(self.on_leases_lost, tags)

    def keep_leases(self) -> None:
        """Renew this connection's leases when due; called from another thread while the
        solo pool runs a task on the loop's thread (which does nothing else meanwhile)."""
        channel = self._lease_channel()
        if channel is None:
            return
        try:
            channel.renew_if_due()
        except Exception as exc:  # the loop finds a lost connection itself after the task
            logger.debug("renewing leases during a task failed: %r", exc)

    def _settle_now(self) -> None:
        """Send deferred acks now: the loop's tick may be a whole task away (solo pool)."""
        if self._acks is not None:
            self._flush_acks()
            return
        channel = self._lease_channel()
        if channel is None:
            return
        try:
            channel.flush_acks()
        except BrokerBusy as exc:  # kept; the loop's tick sends them again
            logger.warning("sending acks now failed (%s); retrying", exc)
        except Exception as exc:
            if not self.is_connection_error(exc):
                raise
            self.on_connection_error(exc)

    def _ack(self, message: Message) -> None:
        if self._acks is None:
            message.ack()
            return
        self._acks.ack(message.delivery_tag)  # sent in the loop's next tick
        compat.mark_acked(message)

    def _reject(self, message: Message, requeue: bool) -> None:
        message.reject(requeue=requeue)
        if self._acks is not None:
            self._acks.settled(message.delivery_tag)

    def reject(self, request: Request, requeue: bool) -> bool:
        return self._settle(request, "requeue" if requeue else "reject",
                            lambda: self._reject(request.message, requeue))

    def reject_raw(self, message: Message) -> None:
        """Reject (drop) a message that never became a request (invalid, unknown task)."""
        try:
            self._reject(message, False)
        except Exception as exc:
            if self.is_connection_error(exc):
                self.on_connection_error(exc)
            else:
                logger.error("rejecting an invalid message failed: %r", exc)

    def transport_name(self) -> str | None:
        if self.connection is None:
            return None
        return str(self.connection.transport.driver_name)

    def add_queue(self, name: str) -> None:
        from taskq.publish import queue_for

        if any(q.name == name for q in self.queues):
            return
        queue = queue_for(self.app.conf, name)
        self.queues.append(queue)
        if self._consumer is not None:
            try:
                self._consumer.add_queue(queue)
                self._consumer.consume()
            except Exception as exc:
                if not self.is_connection_error(exc):
                    raise
                self.on_connection_error(exc)

    def cancel_queue(self, name: str) -> None:
        self.queues = [q for q in self.queues if q.name != name]
        if self._consumer is not None:
            try:
                self._consumer.cancel_by_queue(name)
            except Exception as exc:
                if not self.is_connection_error(exc):
                    raise
                self.on_connection_error(exc)

    def hold_back(self, count: int, seconds: float) -> None:
        """Take ``count`` less prefetch for ``seconds``: messages this worker just gave back
        because it cannot start them now go to an idle consumer first, instead of straight
        back to this one (its own fetch after a reconnect would usually win the race)."""
        qos = self.qos
        if qos is None or count <= 0:
            return
        before = qos.value
        qos.decrement_eventually(count)
        taken = before - qos.value  # kombu never goes below 1 (0 would mean unlimited)
        if not taken:
            return
        self._update_qos()
        generation = self.generation

        def give_back() -> None:
            if self.qos is qos and self.generation == generation:
                qos.increment_eventually(taken)  # applied by the next tick's _update_qos

        self.loop.hub.call_later(seconds, give_back)

    def increment_prefetch(self) -> None:
        """One more credit for a message parked for its eta or rate limit."""
        if self.qos is not None:
            self.qos.increment_eventually()
            self._park(1)

    def decrement_prefetch(self) -> None:
        """A parked message went on (or away): its credit goes."""
        if self.qos is not None:
            self.qos.decrement_eventually()
            self._park(-1)

    def _park(self, delta: int) -> None:
        # The Redis transport fetches in batches under a backlog, counting what is parked
        # apart (transports/redis.py LeaseQoS.can_consume).
        channel = self._lease_channel()
        qos = compat.channel_qos(channel) if channel is not None else None
        if qos is not None and hasattr(qos, "parked"):
            qos.parked = max(0, qos.parked + delta)

    # -- stopping -----------------------------------------------------------------------------
    def stop_consuming(self) -> None:
        """Ask the broker for no more task messages (warm shutdown)."""
        self._consuming = False
        if self._reconnect_entry is not None:
            self._reconnect_entry.cancel()
            self._reconnect_entry = None
        if self._consumer is not None:
            try:
                self._consumer.cancel()
            except Exception as exc:
                if self.is_connection_error(exc):
                    self.on_connection_error(exc)

    def close(self) -> None:
        self._consuming = False
        self._dns.close(0.0)
        if self._reconnect_entry is not None:
            self._reconnect_entry.cancel()
        if self._registration is not None:
            self.loop.release(self._registration)
            self._registration = None
        conn, self.connection = self.connection, None
        if conn is not None:
            if self._acks is not None:
                try:
                    self._acks.flush()
                except Exception as exc:  # the broker redelivers what was not acked
                    logger.warning("sending the last acks failed: %r", exc)
                self._acks = None
            if self._consumer is not None:
                with contextlib.suppress(Exception):
                    self._consumer.cancel()
                self._consumer = None
            try:
                conn.release()
            except Exception as exc:
                logger.debug("closing the broker connection failed: %r", exc)


def queues_for(app: TaskQ, include: Sequence[str] | None, exclude: Sequence[str] | None
               ) -> list[Queue]:
    from taskq.publish import declared_queues, queue_for

    # As Celery: without -Q, a worker consumes every queue of task_queues when it is set.
    names = list(include or declared_queues(app.conf) or [app.conf.task_default_queue])
    excluded = set(exclude or ())
    chosen = [queue_for(app.conf, name) for name in names if name not in excluded]
    if not chosen:
        raise ConfigurationError("no queues left to consume from after -X; check -Q and -X")
    return chosen
