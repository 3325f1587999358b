"""Publishing on taskq's Redis transport: one round trip per message, one per batch.

kombu's Redis channel publishes to a direct or topic exchange in two round trips: SMEMBERS
of the exchange's binding table (``_kombu.binding.<exchange>``), then an LPUSH per queue the
exchange routes to. Here the channel keeps each exchange's table as it last saw it, routes
with kombu's own exchange types on that copy (so direct, topic, priorities, x-expires queues
and unroutable messages behave exactly as kombu's), and sends one script (``redis_lua.PUBLISH``)
that checks the table is still that one and pushes, atomically. When the table changed (a
queue was bound or unbound since), the script pushes nothing and returns the new table: the
message is routed again and sent again, so a stale copy costs one more round trip, never a
misrouted message. The first message to an exchange in a process takes two round trips.

``buffered_publishes()`` holds the messages published inside it and sends them, when it
ends, in one pipeline of those scripts (up to ``PIPELINE_MAX`` a pipeline): taskq's bulk path
(``TaskQ.publish_batch``, ``send_many``, groups and chords). A block that raises sends
nothing. Fanout exchanges (pub/sub) and the nameless exchange take kombu's path (one round
trip already), in their place in the batch.

On the wire nothing changes: the same message in the same lists, so consumers on kombu's
stock transport (Celery workers) and on taskq's get it as before. Needs a Redis that runs
scripts touching keys they were not given up front (any non-cluster Redis; taskq needs no
cluster anyway).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps

from taskq import compat

__all__ = ["PIPELINE_MAX", "PublishChannelMixin", "fingerprint"]

PIPELINE_MAX = 1000  # scripts per pipeline: bounds one reply and Redis's time on it
_ATTEMPTS = 5  # routes per message before kombu's own (non-atomic) path
_TABLES_MAX = 1024  # binding tables a connection keeps


def fingerprint(members: Iterable[bytes | str]) -> str:
    """What ``redis_lua.PUBLISH`` compares: the sha1 of the sorted members, each as
    ``<length>:<member>`` (no separator that a member could contain)."""
    raw = sorted(m.encode() if isinstance(m, str) else bytes(m) for m in members)
    return hashlib.sha1(b"".join(b"%d:%s" % (len(m), m) for m in raw)).hexdigest()


@dataclass(frozen=True)
class _Table:
    fingerprint: str
    rows: list[tuple[str, ...]]  # as kombu's get_table returns them


@dataclass
class _Pending:
    message: dict[str, Any]
    exchange: str
    routing_key: str
    scripted: bool  # routed here (else kombu's path: fanout, the nameless exchange)


class PublishChannelMixin:
    """For ``taskq.transports.redis.Channel`` (before kombu's Redis channel in its bases)."""

    # Set while a message is routed on a cached table: (table rows, queues _put was given).
    _routing: tuple[list[tuple[str, ...]], list[str]] | None = None
    _publish_buffer: list[_Pending] | None = None

    # -- kombu's hooks --------------------------------------------------------------------
    def basic_publish(self, message: dict[str, Any], exchange: str, routing_key: str,
                      **kwargs: Any) -> Any:
        ch: Any = self
        if kwargs.get("_publish_batch") is not None:  # kombu >= 5.7's Producer.batch()
            return super().basic_publish(  # type: ignore[misc]
                message, exchange, routing_key, **kwargs)
        ch._inplace_augment_message(message, exchange, routing_key)
        scripted = bool(exchange) and ch.typeof(exchange).type != "fanout"
        pending = _Pending(message, exchange, routing_key, scripted)
        if self._publish_buffer is not None:
            self._publish_buffer.append(pending)
            return None
        self._send([pending])
        return None

    def get_table(self, exchange: str) -> list[tuple[str, ...]]:
        if self._routing is not None:
            return self._routing[0]
        rows: list[tuple[str, ...]] = super().get_table(exchange)  # type: ignore[misc]
        return rows

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if self._routing is not None:
            self._routing[1].append(queue)
            return
        super()._put(queue, message, **kwargs)  # type: ignore[misc]

    # -- batches --------------------------------------------------------------------------
    def start_buffering(self) -> None:
        """Hold what is published from now on, until ``send_buffered`` (or
        ``discard_buffered``). A second start joins the first (no nesting count)."""
        if self._publish_buffer is None:
            self._publish_buffer = []

    def send_buffered(self) -> None:
        """Send what was held, in pipelines of up to ``PIPELINE_MAX`` messages, and stop
        holding."""
        buffer, self._publish_buffer = self._publish_buffer or [], None
        for start in range(0, len(buffer), PIPELINE_MAX):
            self._send(buffer[start:start + PIPELINE_MAX])

    def discard_buffered(self) -> None:
        self._publish_buffer = None

    @contextlib.contextmanager
    def buffered_publishes(self) -> Iterator[None]:
        """Hold what is published inside; send it when the block ends (nothing when it
        raises). Nested blocks join the outer one."""
        if self._publish_buffer is not None:
            yield
            return
        self.start_buffering()
        try:
            yield
        except BaseException:
            self.discard_buffered()
            raise
        self.send_buffered()

    # -- sending --------------------------------------------------------------------------
    def _send(self, pending: Sequence[_Pending]) -> None:
        """Send in order: runs of scripted messages in one pipeline (or one call), the
        others through kombu's path between them."""
        run: list[_Pending] = []
        for item in pending:
            if item.scripted:
                run.append(item)
                continue
            if run:
                self._send_scripted(run)
                run = []
            self._deliver_as_kombu(item)
        if run:
            self._send_scripted(run)

    def _deliver_as_kombu(self, item: _Pending) -> None:
        ch: Any = self
        if item.exchange:
            ch.typeof(item.exchange).deliver(item.message, item.exchange, item.routing_key)
        else:
            ch._put(item.routing_key, item.message)

    def _send_scripted(self, pending: list[_Pending]) -> None:
        for _ in range(_ATTEMPTS):
            calls = [(item, self._route(item)) for item in pending]
            replies = self._run_publishes([call for _, call in calls])
            pending = []
            for (item, _call), reply in zip(calls, replies, strict=True):
                if reply == 1:
                    continue
                self._remember(item.exchange, reply)
                pending.append(item)
            if not pending:
                return
        for item in pending:  # the bindings kept changing under us: kombu's own way
            self._deliver_as_kombu(item)

    def _route(self, item: _Pending) -> tuple[list[str], list[Any]]:
        """The PUBLISH script's keys and args for ``item``, routed by kombu's exchange type
        on the table this transport last saw."""
        ch: Any = self
        tables: dict[str, _Table] = ch.connection.binding_tables
        table = tables.get(item.exchange) or _Table("", [])
        self._routing = (table.rows, [])
        try:
            ch.typeof(item.exchange).deliver(item.message, item.exchange, item.routing_key)
            queues = self._routing[1]
        finally:
            self._routing = None
        prefix = ch.global_keyprefix
        priority = ch._get_message_priority(item.message, reverse=False)
        expires: dict[str, int] = getattr(ch, "_expires", None) or {}
        pushes = [prefix + compat.list_key(ch, q, priority) for q in queues]
        expiring = [(prefix + compat.list_key(ch, q, step), expires[q])
                    for q in queues if q in expires for step in ch.priority_steps]
        keys = [prefix + ch.keyprefix_queue % item.exchange, *pushes,
                *(key for key, _ in expiring)]
        args = [table.fingerprint, dumps(item.message), len(pushes),
                *(ms for _, ms in expiring)]
        return keys, args

    def _remember(self, exchange: str, members: Sequence[bytes]) -> None:
        ch: Any = self
        rows = [tuple(bytes_to_str(m).split(ch.sep)) for m in members]
        tables: dict[str, _Table] = ch.connection.binding_tables
        if exchange not in tables and len(tables) >= _TABLES_MAX:
            tables.clear()  # exchange names made up per message: keep it bounded
        tables[exchange] = _Table(fingerprint(members), rows)

    def _run_publishes(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        ch: Any = self
        if len(calls) == 1:
            keys, args = calls[0]
            return [ch._run("PUBLISH", keys, args)]
        script = ch._script("PUBLISH")
        client: redis.Redis = ch._client_for_scripts()
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):  # the second time after loading the script (NOSCRIPT)
            with client.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args = calls[i]
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                results = pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError):
                    missing.append(i)
                elif isinstance(result, Exception):
                    raise result
                else:
                    replies[i] = result
            if not missing:
                return replies
            script.sha = client.script_load(script.script)
            todo = missing
        raise redis.exceptions.NoScriptError("the PUBLISH script could not be loaded")
