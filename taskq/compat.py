"""Every use taskq makes of kombu, py-amqp and redis-py internals, one function each.

taskq's worker and transports need a few things those libraries keep private: the entries on
the hub's timer, a message's acknowledged state, the virtual transport's per-queue callbacks
and prefetch bookkeeping, the Redis channel's BRPOP machinery and fanout topics, the pidbox's
reply collection. They are reached only through
the functions below, so that a new kombu breaks here, in one file, and each function says
which versions it was checked against and what it does when the internal is missing: a
fallback where kombu's old behaviour is the right one, else a ``ConfigurationError`` naming
the version to install. The supported range is pyproject's (``kombu>=5.3,<6``); CI runs the
transport and worker tests on its oldest and newest kombu (``ci/test-oldest-kombu.sh``).

Each internal was looked up in the sources of kombu 5.3.0, 5.3.4, 5.3.7, 5.4.0, 5.4.2, 5.5.0,
5.5.4, 5.6.0, 5.6.2 and 5.7.0. CI tests 5.3.4 (the oldest the test extras install with:
Celery 5.4 needs it) and the newest; 5.3.0 passed the transport tests once by hand.

Hooks: taskq's transports also *override* private methods that kombu calls (the Redis
channel's ``_get``, ``_brpop_start``, ``_brpop_read``, ``_basic_cancel``; the virtual
channel's ``_new_queue``, ``_has_queue``, ``_put``, ``_size``, ``_purge``, ``_delete``; the
Redis poller's ``get``, ``on_poll_init``, ``maybe_restore_messages``). An override of a hook
kombu renamed would silently never run, so the transports check theirs at import with
``require_hooks``. Three more have no definition on kombu's base classes to check against:
``Transport._collect`` (``Connection.collect`` looks it up, with a fallback), and the SQLite
channel's ``_queue_bind`` and ``_put_fanout`` (called by ``Channel.queue_bind`` and the
fanout exchange of kombu's virtual transport, 5.3 to 5.7); the transport tests cover them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, MutableMapping, MutableSequence
from typing import Any

from taskq.errors import ConfigurationError

__all__ = [
    "brpop_timeout",
    "broadcast",
    "broadcast_until",
    "cancel_unacked_restore",
    "channel_qos",
    "client_connection",
    "connection_socket",
    "consumed_queues",
    "consumer_queue",
    "deliver",
    "ensure_connection_once",
    "existing_transport",
    "fanout_subscribers",
    "flush_brpop_reauth",
    "forget_restore_at_exit",
    "has_consumers",
    "hold_credit",
    "is_held",
    "list_key",
    "mark_acked",
    "mark_brpop_sent",
    "poller_channels",
    "polling_connection",
    "propagate_errors",
    "qos_flush",
    "qos_held",
    "queue_callbacks",
    "queue_cycle",
    "read_reply",
    "refresh_queue_expiry",
    "require_hooks",
    "set_polling_connection",
    "set_propagate_errors",
    "timer_entries",
    "without_publisher_confirms",
]


def _missing(what: str, since: str) -> ConfigurationError:
    return ConfigurationError(
        f"this kombu has no {what}, which taskq relies on ({since}); install a supported "
        "kombu (pip install 'kombu>=5.3,<6') or report the version you have")


def _private(obj: Any, name: str, why: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise _missing(f"{type(obj).__name__}.{name}", why) from None


def require_hooks(base: type, *names: str) -> None:
    """Refuse to run on a kombu whose ``base`` lacks a private method taskq overrides (an
    override kombu no longer calls would be dead code, silently). Every hook taskq overrides
    is there in kombu 5.3.0 to 5.7.0."""
    missing = [name for name in names if not callable(getattr(base, name, None))]
    if missing:
        raise _missing(f"{base.__module__}.{base.__qualname__}.{', '.join(missing)}",
                       "its transports override them")


# -- the event loop (kombu.asynchronous) ------------------------------------------------------
def timer_entries(hub: Any) -> list[Any]:
    """The timer entries (``kombu.asynchronous.timer.Entry``) scheduled on ``hub``.

    Through ``Timer.queue``, the public snapshot of the timer's heap (kombu 5.3 to 5.7); the
    loop used to read the heap itself, ``Timer._queue``. Each item is kombu's
    ``scheduled(eta, priority, entry)`` tuple."""
    timer = hub.timer
    try:
        items = timer.queue
    except AttributeError:
        raise _missing("Timer.queue", "the loop records the timers a connection adds, to "
                       "cancel them when it is lost") from None
    return [item[2] for item in items]


def propagate_errors(hub: Any) -> tuple[type[BaseException], ...]:
    """``Hub.propagate_errors``: the errors the hub's loop lets escape instead of logging
    them ("Error in timer"). Undocumented; kombu 5.3 to 5.7 set it to ``()`` in
    ``Hub.__init__``. ``Hub.create_loop`` reads it once, when the loop generator starts, so
    a change reaches errors only through a new generator (``Loop.iterate_handling``)."""
    errors: tuple[type[BaseException], ...] = getattr(hub, "propagate_errors", ())
    return errors


def set_propagate_errors(hub: Any, errors: Iterable[type[BaseException]]) -> None:
    """Set ``Hub.propagate_errors`` (see ``propagate_errors``): a connection's errors must
    reach the consumer, which reconnects, instead of being logged by the hub's timer."""
    hub.propagate_errors = tuple(errors)


# -- connections and messages (kombu) ---------------------------------------------------------
def ensure_connection_once(conn: Any) -> None:
    """Open ``conn`` with a single attempt, never sleeping.

    ``Connection.connect()`` makes two attempts with 2 s between them. The private
    ``Connection._ensure_connection(max_retries=0, reraise_as_library_errors=False)`` (kombu
    5.3 to 5.7) makes one and raises the transport's own error. Without it (a kombu that
    renamed it), ``connect()``: correct, but a failed attempt then stalls the caller 2 s."""
    ensure = getattr(conn, "_ensure_connection", None)
    if ensure is None:
        conn.connect()
    else:
        ensure(max_retries=0, reraise_as_library_errors=False)


def existing_transport(conn: Any) -> Any:
    """The transport ``conn`` has made, or None: ``Connection._transport`` (kombu 5.3 to 5.7;
    the public ``Connection.transport`` would create one). None when it is missing."""
    return getattr(conn, "_transport", None)


def mark_acked(message: Any) -> None:
    """Record ``message`` as acked without sending anything (the worker sends the ack itself,
    later, with others): ``Message._state = "ACK"``, which ``Message.acknowledged`` reads and
    which makes a second ``ack()`` raise ``MessageStateError`` (kombu 5.3 to 5.7, a slot of
    ``kombu.message.Message``)."""
    if not hasattr(message, "_state"):
        raise _missing("Message._state", "deferred AMQP acks mark the message acked")
    message._state = "ACK"


def broadcast(mailbox: Any, command: str, **options: Any) -> Any:
    """Send a broadcast command through a ``kombu.pidbox.Mailbox``: ``Mailbox._broadcast``
    (kombu 5.3 to 5.7, Celery's control goes through it too; there is no public method with
    the reply collection)."""
    send = getattr(mailbox, "_broadcast", None)
    if send is None:
        raise _missing("Mailbox._broadcast", "remote control and mingle send through it")
    return send(command, **options)


class _Enough(Exception):
    """Raised from the reply callback of ``broadcast_until`` to stop collecting."""


def broadcast_until(mailbox: Any, command: str, enough: Callable[[Any], bool], *,
                    timeout: float, **options: Any) -> list[Any]:
    """Broadcast ``command`` and collect the replies until ``enough(reply)`` is true for one
    of them (that reply included), or until none came for ``timeout`` seconds; the replies,
    in the order they came.

    kombu has no way to stop ``Mailbox._broadcast(reply=True)`` before its timeout, so the
    reply callback raises and the exception is caught here: ``Mailbox._collect`` (kombu 5.3
    to 5.7) calls the callback from its consumer's ``on_message``, inside
    ``Connection.drain_events``, which lets the exception out; its ``with consumer`` block
    and ``finally`` cancel the reply consumer on the way. A kombu that caught callback
    errors instead would collect on until no reply came for ``timeout`` seconds, the
    behaviour without ``enough``: every reply is still returned."""
    replies: list[Any] = []

    def on_reply(body: Any) -> None:
        replies.append(body)
        if enough(body):
            raise _Enough

    try:
        broadcast(mailbox, command, reply=True, timeout=timeout, callback=on_reply, **options)
    except _Enough:
        pass
    return replies


# -- virtual transports (kombu.transport.virtual) -------------------------------------------
def channel_qos(channel: Any) -> Any:
    """The channel's QoS if it has made one, else None: ``Channel._qos`` (kombu 5.3 to 5.7;
    the public ``Channel.qos`` would create one)."""
    return getattr(channel, "_qos", None)


def is_held(qos: Any, delivery_tag: str) -> bool:
    """Whether ``qos`` counts ``delivery_tag`` as delivered and not yet settled (or settled
    and not flushed): ``QoS._delivered`` (kombu 5.3 to 5.7)."""
    return delivery_tag in _private(qos, "_delivered", "deliveries are tracked by tag")


def qos_held(qos: Any) -> int:
    """How many deliveries take prefetch credit: ``len(QoS._delivered) - len(QoS._dirty)``,
    as ``QoS.can_consume`` counts them (kombu 5.3 to 5.7)."""
    why = "the fetch size follows the free prefetch window"
    return len(_private(qos, "_delivered", why)) - len(_private(qos, "_dirty", why))


def hold_credit(qos: Any, delivery_tag: str, message: Any) -> None:
    """Count ``message`` (delivered on another channel) against ``qos``'s prefetch window, as
    ``QoS.append`` would without its other bookkeeping: ``QoS._delivered[tag] = message``
    (kombu 5.3 to 5.7)."""
    _private(qos, "_delivered", "a reconnect adopts the deliveries still running")[
        delivery_tag] = message


def qos_flush(qos: Any) -> None:
    """Drop the settled tags from ``qos``'s bookkeeping now: ``QoS._flush()`` (kombu 5.3 to
    5.7; kombu otherwise does it on the next ``can_consume``)."""
    _private(qos, "_flush", "a recover releases every delivery held")()


def forget_restore_at_exit(qos: Any) -> None:
    """Cancel the exit handler with which kombu would requeue every unacked delivery at exit
    (``QoS._on_collect``, a multiprocessing ``Finalize``, kombu 5.3 to 5.7); a no-op where
    there is none."""
    finalizer = getattr(qos, "_on_collect", None)
    if finalizer is not None:
        finalizer.cancel()


def consumer_queue(channel: Any, consumer_tag: str) -> str | None:
    """The queue a consumer tag consumes from: ``Channel._tag_to_queue`` (kombu 5.3 to 5.7)."""
    tags = _private(channel, "_tag_to_queue", "a cancelled consumer's queue is forgotten")
    queue: str | None = tags.get(consumer_tag)
    return queue


def consumed_queues(channel: Any) -> MutableSequence[str]:
    """The channel's consumed queues, in the order it polls them: ``Channel._active_queues``
    (kombu 5.3 to 5.7). The list itself: a transport may rotate it for fairness."""
    queues: MutableSequence[str] = _private(channel, "_active_queues",
                                            "the transport fetches from the consumed queues")
    return queues


def has_consumers(channel: Any) -> bool:
    """Whether the channel has consumers: ``Channel._consumers`` (kombu 5.3 to 5.7)."""
    return bool(_private(channel, "_consumers", "only consuming channels fetch"))


def queue_callbacks(transport: Any) -> MutableMapping[str, Callable[..., Any]]:
    """Queue name -> the consumer callback of the transport's channels:
    ``Transport._callbacks`` (kombu 5.3 to 5.7)."""
    callbacks: MutableMapping[str, Callable[..., Any]] = _private(
        transport, "_callbacks", "a fetched message goes back when its consumer is gone")
    return callbacks


def deliver(transport: Any, payload: dict[str, Any], queue: str) -> None:
    """Hand a raw message to the consumer of ``queue`` (or reject it when there is none):
    ``Transport._deliver(message, queue)`` (kombu 5.3 to 5.7)."""
    _private(transport, "_deliver", "fetched messages are handed to their consumers")(
        payload, queue)


# -- kombu's Redis transport and redis-py ----------------------------------------------------
def queue_cycle(channel: Any) -> Any:
    """The Redis channel's queue order (``consume(n)``, ``rotate(queue)``):
    ``Channel._queue_cycle`` (kombu 5.3 to 5.7)."""
    return _private(channel, "_queue_cycle", "queues are fetched in kombu's order")


def list_key(channel: Any, queue: str, priority: int) -> str:
    """The Redis list of ``queue`` at a priority step, without the global key prefix:
    ``Channel._q_for_pri`` (kombu 5.3 to 5.7)."""
    key: str = _private(channel, "_q_for_pri", "fetches read kombu's list layout")(
        queue, priority)
    return key


def brpop_timeout(channel: Any) -> float:
    """How long a blocking pop waits at most, in seconds: ``Channel.brpop_timeout`` (kombu
    >= 5.6, a transport option); older kombu always waited 1 s (``_brpop_start(timeout=1)``)."""
    return float(getattr(channel, "brpop_timeout", None) or 1)


def polling_connection(channel: Any) -> Any:
    """The connection whose BRPOP reply the channel waits for, or None/False:
    ``Channel._in_poll`` (kombu 5.3 to 5.7; kombu's poller and ``close`` read it)."""
    return getattr(channel, "_in_poll", None)


def set_polling_connection(channel: Any, connection: Any) -> None:
    """Set ``Channel._in_poll`` (see ``polling_connection``): the connection a blocking
    command was sent on, or None once its reply is read (or dropped)."""
    channel._in_poll = connection


def mark_brpop_sent(channel: Any) -> None:
    """Tell kombu when the blocking command went out: ``Channel._brpop_sent_at``, on kombu's
    own clock (``time.monotonic``), which kombu >= 5.7's poller compares with
    ``brpop_timeout + health_check_interval`` to drop a half-open connection. Older kombu
    never reads it; setting it there is harmless."""
    channel._brpop_sent_at = time.monotonic()


def flush_brpop_reauth(channel: Any) -> None:
    """Send a pending credential re-auth on the BRPOP connection now that no reply is
    outstanding: ``Channel._flush_brpop_reauth()`` (kombu >= 5.7). Older kombu had no
    re-auth: nothing to do."""
    flush = getattr(channel, "_flush_brpop_reauth", None)
    if flush is not None:
        flush()


def refresh_queue_expiry(channel: Any, queues: Iterable[str]) -> None:
    """Push back the expiry of consumed queues declared with ``x-expires``:
    ``Channel._expires`` and ``Channel._maybe_update_queues_expire`` (kombu >= 5.7). Older
    kombu never expired Redis queues: nothing to do."""
    expires = getattr(channel, "_expires", None)
    update = getattr(channel, "_maybe_update_queues_expire", None)
    if not expires or update is None:
        return
    with channel.conn_or_acquire() as client:
        for queue in queues:
            update(client, queue)


def fanout_subscribers(channel: Any, exchange: str) -> int | None:
    """How many connections receive what is published to the fanout ``exchange`` now, where
    the broker can say; else None.

    On Redis a PUBLISH answers with the number of subscribers it reached, and kombu's
    subscribers skip a message without data (``Channel._receive_one``, kombu 5.3 to 5.7), so
    an empty PUBLISH on the exchange's topic counts them and delivers nothing. The topic is
    ``Channel._get_publish_topic(exchange, "")`` and the client, with the
    ``global_keyprefix``, comes from ``Channel.conn_or_acquire()`` (both kombu 5.3 to 5.7).
    None on a channel without them (AMQP, SQLite, memory; a kombu that renamed them) and
    when kombu >= 5.7 publishes fanout on two topics (Sentinel's
    ``_fanout_compat_active``): the caller then waits for answers as without a count."""
    topic_of = getattr(channel, "_get_publish_topic", None)
    acquire = getattr(channel, "conn_or_acquire", None)
    if topic_of is None or acquire is None or getattr(channel, "_fanout_compat_active", False):
        return None
    with acquire() as client:
        return int(client.publish(topic_of(exchange, ""), ""))


def subscribe_now(channel: Any) -> None:
    """Send a Redis channel's SUBSCRIBE for its fanout queues now (``Channel._subscribe``,
    ``_in_listen``, ``active_fanout_queues``, ``subclient``: kombu 5.3 to 5.7) instead of when
    the poller next starts: what is broadcast right after a worker says ``ready`` must reach
    it. The pub/sub client gets its connection as kombu's poller gives it one
    (``_client_registered``), and the poller subscribes again when it registers the channel,
    which Redis takes as a no-op. Does nothing on other channels (AMQP binds its queue when
    consuming; SQLite keeps what is published)."""
    subscribe = getattr(channel, "_subscribe", None)
    if (subscribe is None or not getattr(channel, "active_fanout_queues", None)
            or getattr(channel, "_in_listen", None)):
        return
    client = channel.subclient
    if getattr(client, "connection", None) is None:
        try:
            client.connection = client.connection_pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name (unused)
            client.connection = client.connection_pool.get_connection("_")
    subscribe()


def cancel_unacked_restore(cycle: Any) -> None:
    """Cancel kombu's periodic unacked-message restore on the Redis poller:
    ``MultiChannelPoller._restore_messages_tref`` (kombu >= 5.7). Older kombu keeps no handle
    to it and calls ``maybe_restore_messages`` every 10 s, which taskq's poller overrides."""
    tref = getattr(cycle, "_restore_messages_tref", None)
    if tref is not None:
        tref.cancel()


def poller_channels(cycle: Any) -> list[Any]:
    """The channels registered with a Redis ``MultiChannelPoller``: ``_channels`` (kombu 5.3
    to 5.7); a copy."""
    return list(_private(cycle, "_channels", "leases are renewed on the poller's timer"))


def client_connection(client: Any) -> Any:
    """The connection of kombu's asynchronous Redis client, which kombu's poller checks out
    of the pool and pins on the client as ``client.connection`` (kombu 5.3 to 5.7, the
    attribute redis-py 5 to 8 uses for a ``single_connection_client``)."""
    return client.connection


def read_reply(client: Any, command: str, **options: Any) -> Any:
    """Read the reply to ``command`` sent earlier on ``client.connection``:
    ``Redis.parse_response(connection, command)`` (redis-py 5 to 8; undocumented, kombu reads
    its BRPOP replies the same way)."""
    return client.parse_response(client.connection, command, **options)


def connection_socket(connection: Any) -> Any:
    """The socket of a redis-py ``Connection``, None while disconnected: ``Connection._sock``
    (redis-py 5 to 8; kombu's poller registers it with the event loop)."""
    return getattr(connection, "_sock", None)


def without_publisher_confirms(channel: Any) -> Any:
    """``channel``, its publishes no longer waiting for the broker's confirm. py-amqp puts
    every channel of a ``confirm_publish`` connection in confirm mode by setting its
    ``basic_publish`` to ``basic_publish_confirm`` on the instance (py-amqp 5.1 to 5.4,
    ``Channel.__init__``); removing that attribute gives back the class's plain publish. For
    what the main process publishes as a courtesy (events, control replies): a confirm is a
    round trip the event loop would stand still for, up to the read timeout, after which
    py-amqp drops the connection. Other transports' channels are returned unchanged."""
    attrs = getattr(channel, "__dict__", {})
    current = attrs.get("basic_publish")
    confirming = getattr(channel, "basic_publish_confirm", None)
    if current is not None and confirming is not None and current == confirming:
        del channel.basic_publish
    return channel
