"""taskq's Redis transport for kombu: every delivery is a lease that a live consumer renews.

kombu's own Redis transport pops a message with BRPOP and only then records it as unacked
(a consumer killed in between loses it), restores unacked messages only after the visibility
timeout (an hour by default, swept every ~100 s), and requeues everything on channel close,
tasks still running included. Here (the scripts and the keys are in ``redis_lua``):

- **fetch = lease, atomically, in batches.** One Lua script pops up to the consumer's free
  prefetch from its lists, in kombu's order (queue by queue at each priority step), and leases
  each message under a unique lease id with a deadline on the Redis clock.
- **blocking without taking.** Between fetches the consumer waits with
  ``BLMOVE list list RIGHT RIGHT``: a pop and push onto the same end of the same list, so it
  blocks until the list has a message and takes nothing. A message never sits in a reply or
  a private list, so nothing is lost when a consumer dies or closes while waiting. BLMOVE
  watches one list: the default-priority list of the first queue (where Celery and taskq
  clients publish). When there are others to watch (priority lists, other queues), the wait
  ends every ``fetch_poll_interval`` (50 ms) and the fetch script looks at all of them; with a
  single list it waits up to kombu's ``brpop_timeout`` (1 s). Several idle consumers of one
  queue all wake for a message; one gets it.
- **renewal.** A live consumer extends all its leases in one script every ``renew_interval``
  (default a third of ``lease_timeout``, 60 s): long ``acks_late`` tasks are never delivered
  twice while their worker is connected. Renewal never revives a lease that is gone; it
  tells the channel's ``on_leases_lost`` (the worker drops what it has not started).
- **reconnects.** A new channel ``adopt``s the leases of messages an old (lost) channel
  delivered and the application still runs, and ``release_orphans`` requeues the rest at
  once (``lease.LeaseChannelMixin``). A fetch whose reply was lost with its connection may
  have leased messages nobody here received: the next fetch of this process on the same
  Redis requeues those lease ids at once (their ids are known before the script runs), and
  the fetch script run again with the same ids returns what it leased the first time.
- **prompt restore.** Every consuming channel moves messages whose lease expired back to the
  head of their list every ``restore_interval`` (default ``min(lease / 6, 5 s)``), marked
  ``redelivered``: a dead worker's messages come back within ``lease + restore_interval``.
- **settling.** An ack deletes the lease; an ack or reject for a lease that is gone is dropped
  (logged at debug), never an error, and can never touch a lease someone else took later.
  ``reject(requeue=True)`` and ``Channel.release(tags)`` put messages back where they are
  consumed next, in order, marked ``redelivered`` (as AMQP puts a requeued message back).
- **closing requeues nothing.** The transport cannot tell a reserved message from a running
  ``acks_late`` task, so it lets both lease out: the worker gives back what it never started
  (``release``/``reject``), and what a lost connection held comes back after the lease.
  Messages fetched but never handed to the application are released at once.
- ``no_ack`` consumers (result and reply queues) pop without a lease.

Fanout (pub/sub) and the queue layout are kombu's, so Celery and taskq clients on kombu's
stock transport publish to consumers on this one unchanged, and the other way round.
Publishing to a direct or topic exchange takes one round trip (kombu's takes two) and
batches take one pipeline: ``redis_publish``. Renewal and restore
run on the event loop's timers after ``register_with_event_loop`` and inside
``drain_events`` otherwise (whose waits are cut to ``maintenance_tick``); a program that holds
messages without doing either loses its leases. ``visibility_timeout`` is ignored: with
renewal, no timeout has to outlast the longest task. Needs Redis >= 6.2; no Sentinel or
cluster.

Select it with ``Connection(url, transport=TRANSPORT)`` (taskq does for ``redis://``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import select
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kredis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from taskq import compat
from taskq.errors import ConfigurationError
from taskq.transports import redis_lua
from taskq.transports.lease import (
    Clock,
    LeaseChannelMixin,
    LeaseQoSBase,
    check_renewal,
    lease_clock,
)
from taskq.transports.redis_acks import AckPipe
from taskq.transports.redis_publish import PublishChannelMixin

__all__ = ["TRANSPORT", "TRANSPORT_ALIAS", "Channel", "LeaseQoS", "LeaseSettings", "Transport"]

TRANSPORT_ALIAS = "taskq.transports.redis:Transport"
TRANSPORT = TRANSPORT_ALIAS

logger = logging.getLogger("taskq.transports.redis")

_CHUNK = 1000  # lease ids per script call: bounds the time Redis spends in one script

# Leases a fetch may have taken whose reply was lost with its connection: nobody here got
# those messages, so the next channel of this process on the same Redis and keys requeues
# them at once (otherwise they would sit unseen until their leases ran out). Keyed by
# server and leases key; the ids are the batch's prefix and 1..limit (``redis_lua.FETCH``).
_UNCERTAIN: dict[str, list[str]] = {}
_RESTORE_ROUNDS = 10  # restore batches per maintenance pass at most


# -- settings -------------------------------------------------------------------------------
def _number(options: Mapping[str, Any], name: str, default: float, *, minimum: float = 0.0
            ) -> float:
    value = options.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigurationError(
            f"transport option {name}={value!r}: expected a number of seconds")
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(
            f"transport option {name}={value!r}: expected a number of seconds") from None
    if number <= minimum:
        raise ConfigurationError(
            f"transport option {name}={value!r}: must be greater than {minimum:g}")
    return number


@dataclass(frozen=True)
class LeaseSettings:
    """The lease transport options, checked once per connection."""

    lease_timeout: float = 60.0
    renew_interval: float = 20.0
    restore_interval: float = 5.0
    fetch_batch: int = 100
    fetch_poll_interval: float = 0.05
    restore_batch: int = 100

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LeaseSettings:
        lease = _number(options, "lease_timeout", 60.0)
        renew = _number(options, "renew_interval", lease / 3)
        check_renewal(lease, renew)
        restore = _number(options, "restore_interval", min(lease / 6, 5.0))
        batch = _number(options, "fetch_batch", 100, minimum=0.5)
        poll = _number(options, "fetch_poll_interval", 0.05)
        restore_batch = _number(options, "restore_batch", 100, minimum=0.5)
        return cls(lease, renew, restore, int(batch), poll, int(restore_batch))

    @property
    def lease_ms(self) -> int:
        return max(1, int(self.lease_timeout * 1000))

    @property
    def maintenance_tick(self) -> float:
        """How often renewal and restore are checked for being due."""
        return min(1.0, self.renew_interval / 2, self.restore_interval / 2)


# -- acks -----------------------------------------------------------------------------------
class LeaseQoS(LeaseQoSBase[str]):
    """The lease id of every message this channel holds (see ``lease.LeaseQoSBase``)."""

    parked = 0  # delivered, held back by the worker (eta, rate limit): see can_consume

    def can_consume(self) -> bool:
        # Fetch in batches while the queue has a backlog (the last fetch got all it asked
        # for): a worker holding more than half its prefetch has work in hand, and fetching
        # the moment one credit frees would make every message a round trip. Messages that
        # trickle in are taken as they come, up to the whole prefetch.
        # Messages the worker parked (an eta, a rate limit) hold credit it raised the
        # prefetch for: the half is taken of the rest, or a worker parking many would stop
        # fetching with credit free and nothing to run.
        pcount = self.prefetch_count
        if not pcount:
            return True
        held = compat.qos_held(self)
        if held >= pcount:
            return False
        base = pcount - self.parked
        if not self.channel._backlog or base <= 0:
            return True
        return held - self.parked <= base - max(1, base // 2)

    def _take_incoming(self, delivery_tag: str) -> str | None:
        lease: str | None = self.channel._incoming.pop(delivery_tag, None)
        return lease

    def _settle_held(self, requeue: bool, held: list[tuple[str, str]]) -> int:
        return int(self.channel._settle("requeue" if requeue else "ack", held))

    def _defer_ack(self, delivery_tag: str, lease: str) -> bool:
        transport = self.channel.connection
        if transport.hub is None:
            return False
        transport.pending_acks.append((delivery_tag, lease))
        return True


# -- the channel ----------------------------------------------------------------------------
class Channel(LeaseChannelMixin, PublishChannelMixin, kredis.Channel):
    """kombu's Redis channel with leased deliveries (see the module docstring)."""

    QoS = LeaseQoS  # type: ignore[assignment]

    # Bounded blocking (DESIGN.md); transport options override these.
    socket_timeout = 2.0  # type: ignore[assignment]
    socket_connect_timeout = 2.0  # type: ignore[assignment]
    health_check_interval = 10

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.QoS = LeaseQoS  # also with ack_emulation=False: leases are the point
        self.lease: LeaseSettings = self.connection.lease
        self.clock: Clock = self.connection.clock
        self.consumer_id = uuid.uuid4().hex[:16]
        self._batches = 0
        self._backlog = False  # the last fetch got as many as it asked for (LeaseQoS)
        # Fetched and being delivered: tag -> lease id. Per transport, as kombu's consumer
        # callbacks are: the QoS of whichever channel a message is delivered to takes it.
        self._incoming: dict[str, str] = self.connection.incoming
        self._no_ack_queues: set[str] = set()
        self._plans: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
        self._peek_single = False
        self._scripts_client: redis.Redis | None = None
        self._renew_due = self.clock() + self.lease.renew_interval
        self._uncertain_at: str | None = None  # _uncertain_key(), once known
        self._restore_due = 0.0  # at the first chance: a dead predecessor's leases
        self._maintenance_failing = False
        self._redis_errors = tuple(self.connection.channel_errors)
        self._ack_pipe: AckPipe | None = None  # early acks answered on the loop
        self.on_acks_answered: Callable[[], None] | None = None  # set by the consumer
        self.leases_key = f"{self.global_keyprefix}taskq:leases"
        self.leased_key = f"{self.global_keyprefix}taskq:leased"
        self.expired_key = f"{self.global_keyprefix}taskq:expired"

    # -- scripts --------------------------------------------------------------------------
    def _client_for_scripts(self) -> redis.Redis:
        # A plain client on the channel's pool: never self.client, whose connection may be
        # waiting for a BLMOVE reply, and never kombu's prefixing client (keys are full here).
        pool = self.pool
        client = self._scripts_client
        if client is None or client.connection_pool is not pool:
            client = self._scripts_client = redis.Redis(connection_pool=pool)
        return client

    def _script(self, name: str) -> Any:
        scripts = self.connection.scripts
        script = scripts.get(name)
        if script is None:
            script = scripts[name] = self._client_for_scripts().register_script(
                getattr(redis_lua, name))
        return script

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._script(name)(keys=list(keys), args=list(args),
                                  client=self._client_for_scripts())

    # -- consuming ------------------------------------------------------------------------
    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def _basic_cancel(self, consumer_tag: str) -> Any:
        queue = compat.consumer_queue(self, consumer_tag)
        ret = super()._basic_cancel(consumer_tag)
        if queue is not None and queue not in compat.consumed_queues(self):
            self._no_ack_queues.discard(queue)
        return ret

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        fetched = self._fetch([queue], 1, leased=not no_ack)
        if not fetched:
            return None
        _, lease, payload = fetched[0]
        if lease:
            self._incoming[self._tag_for(payload, lease)] = lease
        message = self.Message(payload, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        fetched = self._fetch([queue], 1)
        if not fetched:
            raise Empty()
        _, lease, payload = fetched[0]
        if lease:
            self._incoming[self._tag_for(payload, lease)] = lease
        return payload

    def _plan(self, queues: Sequence[str]) -> tuple[list[str], list[str]]:
        """The lists to fetch from, in kombu's BRPOP order, and the queue of each."""
        key = tuple(queues)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) > 64:
                self._plans.clear()
            pairs = [(self.global_keyprefix + compat.list_key(self, queue, pri), queue)
                     for pri in self.priority_steps for queue in queues]
            unique = list(dict.fromkeys(pairs))
            plan = self._plans[key] = ([k for k, _ in unique], [q for _, q in unique])
        return plan

    def _fetch(self, queues: Sequence[str], limit: int, leased: bool | None = None
               ) -> list[tuple[str, str, dict[str, Any]]]:
        """Pop and lease up to ``limit`` messages: [(queue, lease id or '', payload)]."""
        lists, owners = self._plan(queues)
        if leased is None:
            modes = "".join("N" if q in self._no_ack_queues else "L" for q in owners)
        else:
            modes = ("L" if leased else "N") * len(lists)
        self._batches += 1
        prefix = f"{self.consumer_id}:{self._batches:010d}:"
        self._release_uncertain()
        try:
            with self.connection.taking_acks(_CHUNK) as acks:
                flat = self._run("FETCH", [self.leases_key, self.leased_key, *lists],
                                 [limit, self.lease.lease_ms, prefix, modes,
                                  *(lease for _, lease in acks)])
        except (redis.RedisError, OSError):
            if "L" in modes:  # the script may have run: its leases are ours to give back
                self._leave_uncertain(f"{prefix}{n:06d}" for n in range(1, limit + 1))
            raise
        compat.refresh_queue_expiry(self, queues)
        fetched: list[tuple[str, str, dict[str, Any]]] = []
        unreadable: list[tuple[str, str]] = []
        if int(flat[0]):
            logger.debug("%d deferred acks dropped: their leases expired and the messages "
                         "went back to their queues", int(flat[0]))
        for i in range(1, len(flat), 3):
            queue, lease, raw = owners[int(flat[i]) - 1], bytes_to_str(flat[i + 1]), flat[i + 2]
            try:
                payload = loads(bytes_to_str(raw))
                if "delivery_tag" not in payload["properties"]:
                    raise KeyError("properties.delivery_tag")
            except Exception as exc:
                logger.error("dropped an unreadable message from queue %r (%r): %.200r",
                             queue, exc, raw)
                if lease:
                    unreadable.append(("", lease))
                continue
            fetched.append((queue, lease, payload))
        if unreadable:
            self._settle("ack", unreadable)
        return fetched

    def _uncertain_key(self) -> str:
        """This channel's key in ``_UNCERTAIN``: its server and leases key (read once)."""
        if self._uncertain_at is None:
            kwargs = self.client.connection_pool.connection_kwargs
            where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
            self._uncertain_at = f"{where}/{kwargs.get('db', 0)}/{self.leases_key}"
        return self._uncertain_at

    def _leave_uncertain(self, ids: Iterable[str]) -> None:
        """Leave these lease ids to the next fetch of this process on the same Redis."""
        _UNCERTAIN.setdefault(self._uncertain_key(), []).extend(ids)

    def _release_uncertain(self) -> None:
        """Requeue the leases an earlier fetch of this process may have taken before its
        reply was lost (a lease that is not there is left alone)."""
        key = self._uncertain_key()  # kept from the first fetch on, for after a close
        if not _UNCERTAIN:
            return
        ids = _UNCERTAIN.pop(key, None)
        if not ids:
            return
        try:
            held = self._settle("requeue", [("", lease) for lease in ids])
        except BaseException:
            self._leave_uncertain(ids)
            raise
        if held:
            logger.warning("requeued %d messages a fetch had leased when its reply was lost "
                           "with the connection", held)

    def _tag_for(self, payload: dict[str, Any], lease: str) -> str:
        """The payload's delivery tag, made unique among the deliveries this channel holds."""
        properties = payload["properties"]
        tag = properties["delivery_tag"]
        qos = compat.channel_qos(self)
        if tag in self._incoming or (qos is not None and compat.is_held(qos, tag)):
            # The same message twice (published twice, or requeued and fetched again before
            # the first delivery was settled): kombu tracks deliveries by tag.
            tag = properties["delivery_tag"] = f"{tag}~{lease}"
        return str(tag)

    def _credit(self) -> int:
        estimate = self.qos.can_consume_max_estimate()
        batch = self.lease.fetch_batch
        return batch if estimate is None else max(0, min(int(estimate), batch))

    def _fetch_and_deliver(self) -> bool:
        cycle = compat.queue_cycle(self)
        queues = cycle.consume(len(self.active_queues))
        limit = self._credit()
        if not queues or not limit:
            return False
        fetched = self._fetch(queues, limit)
        self._backlog = len(fetched) >= limit
        for queue in dict.fromkeys(q for q, _, _ in fetched):
            cycle.rotate(queue)
        self._deliver_fetched(fetched)
        return bool(fetched)

    def _deliver_fetched(self, fetched: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Hand messages to their consumers; release any the application never got."""
        transport = self.connection
        callbacks = compat.queue_callbacks(transport)
        undelivered: list[tuple[str, str]] = []
        pending = iter(fetched)
        try:
            for queue, lease, payload in pending:
                if not lease:
                    compat.deliver(transport, payload, queue)
                    continue
                tag = self._tag_for(payload, lease)
                if queue not in callbacks:  # its consumer was cancelled meanwhile
                    undelivered.append((tag, lease))
                    continue
                self._incoming[tag] = lease
                try:
                    compat.deliver(transport, payload, queue)
                finally:
                    if self._incoming.pop(tag, None) is not None:  # nobody took it
                        undelivered.append((tag, lease))
        finally:
            undelivered.extend((self._tag_for(p, lease), lease)
                               for _, lease, p in pending if lease)
            if undelivered:
                self._settle("requeue", undelivered)

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = compat.queue_cycle(self).consume(len(self.active_queues))
        if not queues:
            return
        lists, _ = self._plan(queues)
        self._peek_single = len(lists) == 1
        wait = compat.brpop_timeout(self)
        if not self._peek_single:
            wait = min(wait, self.lease.fetch_poll_interval)
        if timeout is not None:
            wait = min(wait, timeout)
        connection = compat.client_connection(self.client)
        compat.set_polling_connection(self, connection)
        compat.mark_brpop_sent(self)
        # Blocks until the list has a message and takes none (see the module docstring).
        connection.send_command("BLMOVE", lists[0], lists[0], "RIGHT", "RIGHT", f"{wait:g}")

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = compat.read_reply(self.client, "BLMOVE", **options)
            except self.connection_errors:
                compat.client_connection(self.client).disconnect()
                raise
        finally:
            compat.set_polling_connection(self, None)
            compat.flush_brpop_reauth(self)
        self.maintain_leases()  # drain_events users renew here too
        if (reply is not None or not self._peek_single) and self.active_queues \
                and self.qos.can_consume() and self._fetch_and_deliver():
            return True
        self.flush_acks()  # the loop's tick left them for this fetch (Transport._flush_acks)
        raise Empty()

    def reply_waiting(self) -> bool:
        """Whether the reply to our BLMOVE is there to read (in this loop iteration)."""
        sock = compat.connection_socket(compat.polling_connection(self))
        if sock is None:
            return False
        try:  # poll, not select: select() fails for fd numbers >= 1024
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    # -- leases ---------------------------------------------------------------------------
    def _settle(self, mode: str, held: Sequence[tuple[str, str]]) -> int:
        """End the leases of ``held`` [(delivery tag, lease id)]; returns how many were ours."""
        if self.connection is None:
            # Closed meanwhile (a consumer's callback closed its connection while a fetched
            # batch was being delivered): no client is left to settle with; raising here
            # would take the worker's loop down. Messages to requeue (never delivered) are
            # left to the next fetch of this process on the same Redis, which requeues them
            # at once; the rest end with their leases, as for a lost connection.
            if mode == "requeue" and self._uncertain_at is not None:  # it has fetched
                self._leave_uncertain(lease for _, lease in held)
                logger.info("%d deliveries go back to their queues with the next fetch: the "
                            "connection was closed before they were requeued", len(held))
            else:
                logger.info("%d deliveries go back to their queues after their lease: the "
                            "connection was closed before they were settled (%s)", len(held),
                            mode)
            return 0
        return self._settled(mode, held, self._run_settle(mode, held))

    @staticmethod
    def _settled(mode: str, held: Sequence[tuple[str, str]], flags: Sequence[Any]) -> int:
        """How many of ``held`` the SETTLE flags say were ours; logs the others."""
        done = 0
        for (tag, lease), flag in zip(held, flags, strict=True):
            if int(flag):
                done += 1
            else:
                logger.debug("%s of delivery %s dropped: its lease %s expired and the "
                             "message went back to its queue", mode, tag, lease)
        return done

    def _run_settle(self, mode: str, held: Sequence[tuple[str, str]]) -> list[int]:
        """The SETTLE script's flags for ``held``, in chunks of ``_CHUNK`` leases."""
        flags: list[int] = []
        for start in range(0, len(held), _CHUNK):
            flags.extend(int(flag) for flag in self._run(
                "SETTLE", [self.leases_key, self.leased_key, self.expired_key],
                [mode, *(lease for _, lease in held[start:start + _CHUNK])]))
        return flags

    def confirm_acks(self, held: Sequence[tuple[str, str]]) -> list[bool]:
        return [flag != 2 for flag in self._run_settle("confirm", held)]

    def flush_acks(self) -> None:
        """Send the transport's deferred acks (see ``LeaseQoSBase.ack``)."""
        with self.connection.taking_acks() as acks:
            if acks:
                self._settle("ack", acks)

    # -- early acks, answered on the loop (redis_acks) -------------------------------------
    def send_acks(self) -> bool:
        """Send the transport's deferred acks without waiting for the answer, which the loop
        reads (then ``on_acks_answered()``). False when there is no loop to read it: use
        ``flush_acks``. A connection error propagates (the unanswered acks stay deferred)."""
        transport = self.connection
        if transport.hub is None or self.closed:
            return False
        acks, transport.pending_acks = transport.pending_acks, []
        if acks:
            self._acks_pipe().send(acks)
        return True

    def unanswered_acks(self) -> set[str]:
        """The lease ids of acks deferred or sent and not answered yet."""
        pending = {lease for _, lease in self.connection.pending_acks}
        if self._ack_pipe is not None:
            pending |= self._ack_pipe.unanswered()
        return pending

    def wait_for_acks(self) -> None:
        """Send the deferred acks and read every answer due (bounded by the socket
        timeout): for a worker about to stop, which must know what was acked."""
        self.flush_acks()
        if self._ack_pipe is not None:
            self._ack_pipe.wait()

    def _acks_pipe(self) -> AckPipe:
        pipe = self._ack_pipe
        if pipe is None:
            transport = self.connection

            def give_back(acks: list[tuple[str, str]]) -> None:
                transport.pending_acks[:0] = acks

            def answered() -> None:
                if self.on_acks_answered is not None:
                    self.on_acks_answered()

            pipe = self._ack_pipe = AckPipe(
                self.pool, transport.hub, self._script("SETTLE"),
                [self.leases_key, self.leased_key, self.expired_key], chunk=_CHUNK,
                timeout=float(self.socket_timeout or 2.0), clock=self.clock,
                give_back=give_back, on_answer=functools.partial(self._settled, "ack"),
                on_answered=answered)
        return pipe

    def give_back_unanswered_acks(self) -> None:
        """A lost connection: what was sent without an answer is deferred again (the
        consumer carries it to the next connection, which asks whether it was applied)."""
        if self._ack_pipe is not None:
            self._ack_pipe.take()

    def renew_leases(self) -> int:
        """Extend every lease this channel holds; returns how many are still held. The
        tags of leases found gone go to ``on_leases_lost``."""
        qos = compat.channel_qos(self)
        if qos is None or not qos.leases:
            return 0
        held = list(qos.leases.items())
        lost = self._renew_held(held)
        if lost:
            self._leases_lost(qos.forget(lost))
        return len(held) - len(lost)

    def _renew_held(self, held: Sequence[tuple[str, str]]) -> list[str]:
        tag_of = {lease: tag for tag, lease in held}
        ids = list(tag_of)
        lost: list[str] = []
        for start in range(0, len(ids), _CHUNK):
            lost.extend(tag_of[bytes_to_str(x)] for x in self._run(
                "RENEW", [self.leases_key], [self.lease.lease_ms, *ids[start:start + _CHUNK]]))
        return lost

    def renew_if_due(self) -> None:
        now = self.clock()
        if now >= self._renew_due:
            self.renew_leases()
            self._renew_due = now + self.lease.renew_interval

    def restore_expired(self) -> int:
        """Move messages whose lease expired (anyone's) back to their queues."""
        restored = 0
        for _ in range(_RESTORE_ROUNDS):
            moved = int(self._run("RESTORE", [self.leases_key, self.leased_key,
                                              self.expired_key],
                                  [self.lease.restore_batch, redis_lua.EXPIRED_KEPT_MS]))
            restored += moved
            if moved < self.lease.restore_batch:
                break
        if restored:
            logger.info("restored %d messages whose lease expired", restored)
        return restored

    def maintain_leases(self) -> None:
        """Renew and restore when due.

        A connection error propagates: on the event loop it is a lost connection and the
        consumer reconnects (a Redis that answers no script within the socket timeout is as
        good as gone, and retrying would stall the loop for that timeout every tick). A Redis
        error (scripts refused when out of memory, ...) is logged and retried next tick.
        """
        if self._ack_pipe is not None:
            self._ack_pipe.check()  # an early ack unanswered for too long: a lost connection
        now = self.clock()
        try:
            if now >= self._renew_due:
                self.renew_leases()
                self._renew_due = now + self.lease.renew_interval
            if now >= self._restore_due and self.active_queues:
                self.restore_expired()
                self._restore_due = now + self.lease.restore_interval
        except self._redis_errors as exc:
            if not self._maintenance_failing:
                logger.warning("renewing/restoring leases failed (%r); retrying", exc)
            self._maintenance_failing = True
        else:
            self._maintenance_failing = False

    def close(self) -> None:
        # A pending BLMOVE holds no message: drop it instead of reading it (kombu reads its
        # BRPOP reply here, blocking for up to brpop_timeout).
        compat.set_polling_connection(self, None)
        if not self.closed and self.connection.pending_acks:
            try:
                self.flush_acks()
            except Exception as exc:  # the leases run out and the messages come back
                logger.warning("%d acks not sent before closing (%r): those messages come "
                               "back after their lease", len(self.connection.pending_acks),
                               exc)
                self.connection.pending_acks.clear()
        if self._ack_pipe is not None:
            self._ack_pipe.close()
            self._ack_pipe = None
        super().close()


class LeasePoller(kredis.MultiChannelPoller):
    """kombu's poller, with lease upkeep in place of kombu's unacked restore."""

    def __init__(self, tick: float) -> None:
        super().__init__()
        self.tick = tick
        self._lease_tref: Any = None

    def maintain(self) -> None:
        for channel in compat.poller_channels(self):
            if not channel.closed:
                channel.maintain_leases()

    def maybe_restore_messages(self) -> None:
        self.maintain()

    def on_poll_init(self, poller: Any) -> None:
        self.poller = poller

    def get(self, callback: Any, timeout: float | None = None) -> Any:
        # drain_events: never wait longer than a tick, so held leases are renewed in time
        # (Transport.drain_events loops until its own timeout).
        self.maintain()
        if timeout is None or timeout > self.tick:
            timeout = self.tick
        return super().get(callback, timeout)


class Transport(kredis.Transport):
    """kombu's Redis transport with leased deliveries (see the module docstring)."""

    Channel = Channel

    def __init__(self, client: Any, **kwargs: Any) -> None:
        self.lease = LeaseSettings.from_options(client.transport_options or {})
        self.clock = lease_clock(client.transport_options or {})
        self.scripts: dict[str, Any] = {}
        self.incoming: dict[str, str] = {}
        self.pending_acks: list[tuple[str, str]] = []  # (delivery tag, lease id)
        self.binding_tables: dict[str, Any] = {}  # exchange -> its table as last seen
        self.hub: Any = None  # the event loop, once registered: acks are deferred to its tick
        super().__init__(client, **kwargs)
        self.cycle = LeasePoller(self.lease.maintenance_tick)  # type: ignore[assignment]

    @contextlib.contextmanager
    def taking_acks(self, limit: int | None = None) -> Iterator[list[tuple[str, str]]]:
        """The oldest deferred acks (up to ``limit``), put back if sending them fails."""
        acks = self.pending_acks[:limit]
        del self.pending_acks[:len(acks)]
        try:
            yield acks
        except BaseException:
            self.pending_acks[:0] = acks
            raise

    def take_pending_acks(self) -> list[tuple[str, str]]:
        """The deferred acks not sent yet [(delivery tag, lease id)], no longer this
        transport's to send (a lost connection's: the consumer carries them to the next)."""
        for channel in self.channels:
            channel.give_back_unanswered_acks()
        acks, self.pending_acks = self.pending_acks, []
        return acks

    def _collect(self, connection: Any) -> None:
        # kombu's Connection.collect (a lost connection, a fork): close without talking to
        # Redis, which may be gone or black-holed. The worker took the deferred acks first
        # (take_pending_acks); any left are dropped and come back after their leases.
        for channel in self.channels:
            channel.give_back_unanswered_acks()
        if self.pending_acks:
            logger.debug("dropped %d deferred acks with the lost connection",
                         len(self.pending_acks))
            self.pending_acks.clear()
        self.close_connection(connection)

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle = self.cycle
        assert isinstance(cycle, LeasePoller)
        compat.cancel_unacked_restore(cycle)  # kombu's sweep: LeasePoller.maintain replaces it
        if cycle._lease_tref is not None:
            cycle._lease_tref.cancel()
        cycle._lease_tref = loop.call_repeatedly(cycle.tick, cycle.maintain)
        self.hub = loop
        loop.on_tick.add(self._flush_acks)

    def _flush_acks(self) -> None:
        # Before the loop waits: whatever the fetches of this iteration did not carry, unless
        # a BLMOVE reply is already waiting: then the fetch (or _brpop_read without one)
        # sends them in this iteration.
        if not self.pending_acks:
            return
        channels = [channel for channel in self.channels if not channel.closed]
        if not channels or any(channel.reply_waiting() for channel in channels):
            return
        try:
            channels[0].flush_acks()
        except tuple(self.channel_errors) as exc:  # kept, sent again next tick
            logger.warning("sending %d acks failed (%r); retrying", len(self.pending_acks),
                           exc)


# kombu calls these private hooks, which the classes above override (taskq.compat).
compat.require_hooks(kredis.Channel, "_get", "_brpop_start", "_brpop_read", "_basic_cancel")
compat.require_hooks(kredis.MultiChannelPoller, "get", "on_poll_init", "maybe_restore_messages")
