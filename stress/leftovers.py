"""What a cell's broker space still holds once its workers have stopped (``leases-released``).

Read after the last worker stopped and before the space is deleted, straight from the broker
(never through the fault proxy), under the cell's own names only:

- Redis (taskq's lease transport, ``taskq/transports/redis_lua.py``): the lease ids in
  ``P taskq:leases`` (sorted set) and ``P taskq:leased`` (hash: id -> message, id:q -> its
  list), and the messages in the cell's queue lists (``P<queue>`` and its priority lists);
- SQLite (``taskq/transports/sqlite_store.py``): the cell queue's rows, leased or not;
- AMQP: not measured (the broker itself requeues a closed channel's unacked deliveries).

Each message is named by its task id (protocol 2 ``headers.id``), so the oracle can ask the
ledger whether the task had already ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

from stress.spaces import Space

__all__ = ["Leftovers", "measure", "task_id_of"]

_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: <queue><sep><step> for priority lists


@dataclass(frozen=True)
class Leftovers:
    """Task ids (None: a message without one) of the leases and queued messages left."""

    leases: tuple[str | None, ...] = ()
    queued: tuple[str | None, ...] = ()
    skipped: str | None = None  # not measured on this transport, and why
    error: str | None = None  # measuring failed: the oracle cannot judge


def task_id_of(raw: str | bytes | None) -> str | None:
    """The task id of a kombu message as the broker stores it (JSON envelope)."""
    if raw is None:
        return None
    try:
        message = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(message, dict):
        return None
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    found = (headers.get("id") if isinstance(headers, dict) else None) or (
        properties.get("correlation_id") if isinstance(properties, dict) else None)
    return None if found is None else str(found)


def measure(space: Space) -> Leftovers:
    """The leases and queued messages left in ``space`` (errors are reported, not raised)."""
    try:
        if space.transport == "redis":
            return _redis(space)
        if space.transport == "sqlite":
            return _sqlite(space)
    except Exception as exc:  # a measurement, not the run: the oracle says it could not judge
        return Leftovers(error=f"{type(exc).__name__}: {exc}")
    return Leftovers(skipped=f"{space.transport}: the broker requeues a closed channel's "
                     "unacked deliveries itself; taskq holds no leases there")


def _redis(space: Space) -> Leftovers:
    import redis

    prefix = str(space.transport_options.get("global_keyprefix", ""))
    client = redis.Redis.from_url(space.url, socket_timeout=5)
    try:
        # decode_responses is off: bytes, whatever redis-py's annotations allow
        leased = cast("dict[bytes, bytes]", client.hgetall(f"{prefix}taskq:leased"))
        ids = {m.decode() for m in cast("list[bytes]",
                                        client.zrange(f"{prefix}taskq:leases", 0, -1))}
        ids |= {f.decode() for f in leased if not f.endswith(b":q")}
        leases = tuple(task_id_of(leased.get(i.encode())) for i in sorted(ids))
        base = f"{prefix}{space.queue}"
        queued: list[str | None] = []
        for key in client.scan_iter(match=f"{base}*", count=1000, _type="LIST"):
            name = key.decode(errors="replace")
            if name == base or name.startswith(base + _PRIORITY_SEP):
                queued += [task_id_of(m) for m in client.lrange(key, 0, -1)]
        return Leftovers(leases=leases, queued=tuple(queued))
    finally:
        with contextlib.suppress(Exception):
            client.close()


def _sqlite_path(url: str) -> str:
    """SQLAlchemy's spelling, as taskq reads it: ``sqlite:///rel.db``, ``sqlite:////abs.db``."""
    path = urlsplit(url).path
    return os.path.abspath(os.path.expanduser(path[1:] if path.startswith("/") else path))


def _sqlite(space: Space) -> Leftovers:
    path = _sqlite_path(space.url)
    if not os.path.exists(path):
        return Leftovers()  # the worker never opened it: nothing can be left
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        has = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                         "AND name = 'taskq_messages'").fetchone()
        rows: list[Any] = [] if has is None else db.execute(
            "SELECT lease, payload FROM taskq_messages WHERE queue = ? ORDER BY id",
            (space.queue,)).fetchall()
    finally:
        db.close()
    return Leftovers(leases=tuple(task_id_of(p) for lease, p in rows if lease is not None),
                     queued=tuple(task_id_of(p) for lease, p in rows if lease is None))
