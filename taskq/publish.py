"""Publishing task messages: connections, the producer pool, routing, retries, confirms."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

from kombu import Connection, Exchange, Producer, Queue
from kombu.exceptions import OperationalError
from kombu.pools import ProducerPool
from kombu.transport import TRANSPORT_ALIASES

from taskq.embedded import default_broker_url
from taskq.errors import BrokerUnreachable, ConfigurationError
from taskq.protocol import TaskMessage, to_wire
from taskq.publish_batch import buffer_for
from taskq.urls import safe_url

if TYPE_CHECKING:
    from taskq.config import Config

# ``sqlite://`` names taskq's SQLite transport in any kombu Connection of this process (kombu
# has none of its own by that name). By its path (taskq.transports.sqlite.TRANSPORT): kombu
# imports the module when a connection uses it, not every client and worker at start.
SQLITE_TRANSPORT = "taskq.transports.sqlite:Transport"
TRANSPORT_ALIASES.setdefault("sqlite", SQLITE_TRANSPORT)

# Bounded socket operations (DESIGN.md: every call that can block is bounded, 2 s at most
# for the worker's loop; publishing clients get the same defaults).
_REDIS_TRANSPORT_DEFAULTS = {
    "socket_timeout": 2.0,
    "socket_connect_timeout": 2.0,
    "health_check_interval": 10,
    "retry_on_timeout": True,
}
_AMQP_TRANSPORT_DEFAULTS = {"read_timeout": 2.0, "write_timeout": 2.0}


def broker_url(conf: Config) -> str:
    """``broker_url``, or the embedded SQLite broker when it is not set (``taskq.embedded``)."""
    return conf.broker_url or default_broker_url(conf)


def _scheme(url: str) -> str:
    return url.split(";", 1)[0].split("://", 1)[0].lower()


def transport_options(conf: Config, url: str) -> dict[str, Any]:
    scheme = _scheme(url)
    options: dict[str, Any] = {}
    if scheme in {"redis", "rediss"}:
        options.update(_REDIS_TRANSPORT_DEFAULTS)
    elif scheme in {"amqp", "pyamqp", "amqps"}:
        options.update(_AMQP_TRANSPORT_DEFAULTS)
        options["confirm_publish"] = bool(conf.broker_confirm_publish)
    options.update(conf.broker_transport_options)
    return options


def make_connection(conf: Config, url: str | None = None, *, heartbeat: float | None = None
                    ) -> Connection:
    url = url or broker_url(conf)
    transport: Any = None
    if _scheme(url) in {"redis", "rediss"}:
        from taskq.transports.redis import Transport as LeaseTransport

        transport = LeaseTransport  # leases: a dead worker's messages come back promptly
    elif _scheme(url) == "sqlite":
        transport = SQLITE_TRANSPORT
    try:
        return Connection(
            url,
            transport=transport,
            connect_timeout=conf.broker_connection_timeout,
            transport_options=transport_options(conf, url),
            failover_strategy=conf.broker_failover_strategy,
            heartbeat=heartbeat or 0,
        )
    except (KeyError, ValueError, ImportError) as exc:
        raise ConfigurationError(
            f"setting broker_url: cannot use {safe_url(url)!r}: {exc!r}; expected e.g. "
            "'amqp://guest:guest@localhost:5672//', 'redis://localhost:6379/0' or "
            "'sqlite:////absolute/path/broker.db'"
        ) from None


def declared_queues(conf: Config) -> dict[str, Queue]:
    """``task_queues`` as kombu Queues by name (names alone get the default shape)."""
    out: dict[str, Queue] = {}
    for item in conf.task_queues or ():
        if isinstance(item, Queue):
            out[item.name] = item
        elif isinstance(item, str):
            out[item] = _default_shape(conf, item)
        else:
            options = dict(item)
            qname = options.pop("name")
            options.setdefault("exchange", qname)
            options.setdefault("routing_key", qname)
            out[qname] = Queue.from_dict(qname, **options)
    return out


def queue_for(conf: Config, name: str | None) -> Queue:
    """The queue a task goes to: as ``task_queues`` declares it, else a queue with an exchange
    of its own name (as Celery)."""
    if conf.task_queues:
        declared = declared_queues(conf).get(name or conf.task_default_queue)
        if declared is not None:
            return declared
    return _default_shape(conf, name)


def _default_shape(conf: Config, name: str | None) -> Queue:
    if not name or name == conf.task_default_queue:
        default = conf.task_default_queue
        return Queue(
            default,
            Exchange(conf.task_default_exchange or default, conf.task_default_exchange_type),
            routing_key=conf.task_default_routing_key or default,
            durable=True,
        )
    return Queue(name, Exchange(name, "direct"), routing_key=name, durable=True)


def resolve_time(value: float | dt.datetime | str | None, *, now: dt.datetime,
                 what: str) -> dt.datetime | None:
    """``eta``/``expires`` given as seconds from now, a datetime or an ISO string."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what}: expected seconds or a datetime, got {value!r}")
    if isinstance(value, int | float):
        return now + dt.timedelta(seconds=value)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    raise TypeError(f"{what}: expected seconds or a datetime, got {value!r}")


class Publisher:
    """Owns the producer pool of one app in one process (rebuilt after fork)."""

    def __init__(self, conf: Config) -> None:
        self.conf = conf
        self._pid = os.getpid()
        self._pool: ProducerPool | None = None
        self._connections: Any = None
        self._abandoned: list[Any] = []
        self._targets: dict[tuple[Any, ...], Queue] = {}
        self._local = threading.local()  # .producer: the open batch's, in this thread

    def _ensure_pool(self) -> ProducerPool:
        if self._pid != os.getpid():
            # Forked: never close the parent's sockets from here (py-amqp's close() would shut
            # down the shared socket); keep them referenced so no finalizer runs, and start over.
            self._abandoned.append((self._pool, self._connections))
            self._pool, self._connections, self._pid = None, None, os.getpid()
        if self._pool is None:
            limit = self.conf.broker_pool_limit
            self._connections = make_connection(self.conf).Pool(limit)
            self._pool = ProducerPool(self._connections, limit=limit)
        return self._pool

    @contextmanager
    def producer(self) -> Iterator[Producer]:
        pool = self._ensure_pool()
        with pool.acquire(block=True, timeout=30) as producer:
            yield producer

    def target(self, name: str | None) -> Queue:
        """``queue_for(conf, name)`` for publishing: the same object while the settings that
        shape it are the same, instead of three new kombu objects per message (a ``Queue``
        given to ``publish`` is only read). ``task_queues`` may be changed in place, so
        declared queues are looked up each time."""
        conf = self.conf
        if conf["task_queues"]:
            return queue_for(conf, name)
        key = (name, conf["task_default_queue"], conf["task_default_exchange"],
               conf["task_default_exchange_type"], conf["task_default_routing_key"])
        queue = self._targets.get(key)
        if queue is None:
            if len(self._targets) >= 1024:  # names made up per message: keep it bounded
                self._targets.clear()
            queue = self._targets[key] = queue_for(conf, name)
        return queue

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Send what this thread publishes inside the block together, through one producer,
        when the block ends (``taskq.publish_batch``); nested blocks join the outer one."""
        if getattr(self._local, "producer", None) is not None:
            yield
            return
        with ExitStack() as stack:
            try:
                producer = stack.enter_context(
                    self._ensure_pool().acquire(block=True, timeout=30))
                buffer = buffer_for(producer.channel)
                buffer.start()
            except (OperationalError, ConnectionError, OSError) as exc:
                raise self._unreachable("a batch of tasks", {}, exc) from exc
            self._local.producer = producer
            try:
                yield
            except BaseException:
                buffer.discard()
                raise
            finally:
                self._local.producer = None
            try:
                buffer.flush()
            except (OperationalError, ConnectionError, OSError) as exc:
                raise self._unreachable("a batch of tasks", {}, exc) from exc

    def publish(
        self,
        msg: TaskMessage,
        *,
        queue: Queue,
        exchange: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        serializer: str | None = None,
        retry: bool | None = None,
        retry_policy: Mapping[str, Any] | None = None,
    ) -> None:
        conf = self.conf
        body, headers, properties = to_wire(msg)
        retry = conf["task_publish_retry"] if retry is None else retry
        policy = dict(conf["task_publish_retry_policy"])
        if retry_policy:
            policy.update(retry_policy)
        options = dict(
            exchange=queue.exchange if exchange is None else exchange,
            routing_key=queue.routing_key if routing_key is None else routing_key,
            serializer=serializer or conf["task_serializer"],
            headers=headers,
            priority=priority,
            delivery_mode=2,
            retry=retry,
            retry_policy=policy,
            **properties,
        )
        try:
            batched = getattr(self._local, "producer", None)
            if batched is not None:
                batched.publish(body, declare=_undeclared(batched, queue), **options)
                return
            with self._ensure_pool().acquire(block=True, timeout=30) as producer:
                producer.publish(body, declare=_undeclared(producer, queue), **options)
        except (OperationalError, ConnectionError, OSError) as exc:
            raise self._unreachable(f"task {msg.task}[{msg.id}]", policy, exc) from exc

    def _unreachable(self, what: str, policy: Mapping[str, Any], exc: BaseException
                     ) -> BrokerUnreachable:
        return BrokerUnreachable(
            f"cannot publish {what}: broker {safe_url(broker_url(self.conf))} unreachable "
            f"after {policy.get('max_retries', 0)} retries ({exc}); check that the broker is "
            "running and that broker_url (or TASKQ_BROKER_URL) points at it")

    def close(self) -> None:
        if self._pid == os.getpid() and self._connections is not None:
            if self._pool is not None:
                self._pool.force_close_all()
            self._connections.force_close_all()
        self._pool, self._connections = None, None


def _undeclared(producer: Producer, queue: Queue) -> list[Queue]:
    """``[queue]`` unless kombu would skip declaring it on this connection anyway (its
    declaration is cached there): kombu copies the queue and its exchange on every publish
    before it looks (``common._maybe_declare``): ~40 µs of a send's ~290 µs of CPU here."""
    declared = getattr(producer.connection, "declared_entities", None)
    if declared is not None and queue.can_cache_declaration and hash(queue) in declared:
        return []
    return [queue]
