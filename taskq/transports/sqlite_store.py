"""The SQL of taskq's SQLite transport (``taskq/transports/sqlite.py``): one database file.

Tables::

    taskq_messages   id (rowid, publish order), queue, head (0: requeued or restored, consumed
                     before the rest), lease + deadline (while delivered), redelivered,
                     expires (broadcast copies only), payload (kombu's message as JSON)
    taskq_queues     declared queue names (passive declare)
    taskq_bindings   exchange, routing key, pattern -> queue (shared by every process: a
                     fanout broadcast or a reply reaches queues other processes declared)
    taskq_exchanges  exchange name -> type

A message is ready while ``lease IS NULL``; a delivery sets its lease (``<batch>.<id>``, unique
per delivery, so a stale ack or renewal never touches a lease someone else took later) and a
deadline. Ack deletes the row; requeue and restore clear the lease and set
``head = 0, redelivered = 1``.

Deadlines (and the ``expires`` of broadcast copies) are on the host's boot clock
(``CLOCK_BOOTTIME``: seconds since boot, the same in every process on the host, and never
stepped by NTP or an administrator, so a wall-clock step neither expires every lease at once
nor makes leases outlive their holders). It restarts at each boot: ``taskq_meta`` records
which boot (``lease_clock``) the deadlines belong to, and the first process to open the file
under another boot (or a file written with wall-clock deadlines by an older taskq) expires
every lease and drops every broadcast copy left over, once, in one transaction.

Every write is one ``BEGIN IMMEDIATE`` transaction (a deferred transaction that later writes
fails with SQLITE_BUSY without waiting). ``database is locked`` is retried until
``busy_timeout`` has passed, then raised as ``BrokerBusy`` (a connection error). The file is
in WAL mode with ``synchronous=NORMAL``: a commit survives the process being killed, readers
never wait for writers. A connection is never used across fork: each process opens its own
(and never closes an inherited one, which could run SQLite's cleanup under its parent). No
process forks while one of its threads is inside a transaction, nor with a connection open
(``_hold_for_fork``): SQLite keeps a process's locks and its shared-memory index in memory,
and a child forked then inherits them as held by nobody it can reach, so none of its own
connections could write that file again (every write ``database is locked``; issue 15: a
worker forked a pool child while a thread published).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from taskq.errors import BrokerBusy, BrokerDatabaseError

_stores: weakref.WeakSet[Store] = weakref.WeakSet()


def _hold_for_fork() -> None:
    """Before ``fork()``: wait until no thread of this process is inside a transaction (each
    holds its store's lock for the whole transaction), keep them out until it is done, and
    close the connection, so that the child inherits no SQLite state of this file at all
    (the next use here opens it again)."""
    for store in list(_stores):
        store._lock.acquire()
        store.close()


def _release_after_fork() -> None:
    for store in list(_stores):
        with contextlib.suppress(RuntimeError):
            store._lock.release()


os.register_at_fork(before=_hold_for_fork, after_in_parent=_release_after_fork,
                    after_in_child=_release_after_fork)

__all__ = ["Fetched", "Store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS taskq_messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    head INTEGER NOT NULL DEFAULT 1,
    lease TEXT,
    deadline REAL,
    redelivered INTEGER NOT NULL DEFAULT 0,
    expires REAL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS taskq_messages_ready
    ON taskq_messages (queue, head, id) WHERE lease IS NULL;
CREATE INDEX IF NOT EXISTS taskq_messages_leased
    ON taskq_messages (deadline) WHERE lease IS NOT NULL;
CREATE INDEX IF NOT EXISTS taskq_messages_expiring
    ON taskq_messages (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS taskq_queues (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS taskq_bindings (
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    pattern TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (exchange, routing_key, pattern, queue)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS taskq_exchanges (name TEXT PRIMARY KEY, type TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS taskq_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
    WITHOUT ROWID;
"""

_LEASE = """
UPDATE taskq_messages SET lease = ?1 || id, deadline = ?2
WHERE id IN (SELECT id FROM taskq_messages WHERE queue = ?3 AND lease IS NULL
             ORDER BY head, id LIMIT ?4)
RETURNING id, head, redelivered, payload, lease
"""
_POP = """
DELETE FROM taskq_messages
WHERE id IN (SELECT id FROM taskq_messages WHERE queue = ?1 AND lease IS NULL
             ORDER BY head, id LIMIT ?2)
RETURNING id, head, redelivered, payload, NULL
"""
_REQUEUE = ("UPDATE taskq_messages SET lease = NULL, deadline = NULL, head = 0, "
            "redelivered = 1 WHERE id = ? AND lease = ?")

_CHUNK = 500  # rows per statement: stays under SQLite's bound-parameter limit

#: (row id, queue, redelivered, payload JSON, lease id or None for a no-ack pop)
Fetched = tuple[int, str, bool, str, "str | None"]


def boot_clock() -> float:
    """Seconds since boot (``CLOCK_BOOTTIME``; monotonic where there is none)."""
    return time.clock_gettime(_BOOT_CLOCK)


_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def boot_id() -> str:
    """Which boot of this host ``boot_clock`` counts from."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:  # not Linux: the boot's start on the wall clock, to the minute
        return str(round((time.time() - boot_clock()) / 60))


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED))
    text = str(exc)
    return "locked" in text or "busy" in text


class Store:
    """The database of one SQLite broker in this process (one connection per process)."""

    def __init__(self, path: str, *, busy_timeout: float = 2.0,
                 clock: Callable[[], float] = boot_clock, clock_id: str | None = None) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.clock_id = clock_id or f"boottime:{boot_id()}"
        self._db: sqlite3.Connection | None = None
        self._pid = 0
        self._abandoned: list[sqlite3.Connection] = []  # a parent's, never closed here
        self._lock = threading.RLock()  # kombu pools hand a connection to one thread at a time
        _stores.add(self)

    # -- the connection -------------------------------------------------------------------
    def _describe(self, exc: BaseException) -> BrokerDatabaseError:
        text = str(exc)
        where = f"the broker database {self.path!r}"
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            advice = ("it is not a usable SQLite database (corrupted or not made by taskq): "
                      "stop every worker using it, move the file aside (its queued messages "
                      "are lost) and start again, or point broker_url elsewhere")
        elif "readonly" in text or "unable to open" in text or "permission" in text.lower():
            advice = ("it cannot be opened for writing: check that the file and its directory "
                      "exist and are writable by this user, or set TASKQ_EMBEDDED_DIR (or "
                      "broker_url) to a writable place")
        elif "disk" in text or "full" in text:
            advice = ("the disk refused a read or a write: check that it is not full or "
                      "failing, then start again")
        else:
            advice = "check the file, or point broker_url at another broker"
        code = getattr(exc, "sqlite_errorname", None)  # e.g. SQLITE_IOERR_SHMSIZE
        if code:
            text = f"{text} ({code})"
        return BrokerDatabaseError(f"{where}: {text}; {advice}")

    def _open(self) -> sqlite3.Connection:
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            hint = ""
            relative = os.path.relpath(self.path)
            if not relative.startswith("..") and os.path.isdir(os.path.dirname("/" + relative)):
                hint = (f" (sqlite:///{relative} is a path relative to the working directory; "
                        f"for /{relative} write four slashes: sqlite:////{relative})")
            raise BrokerDatabaseError(
                f"the broker database {self.path!r} cannot be created: its directory "
                f"{parent!r} does not exist; create it or fix broker_url{hint}")
        try:
            db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._describe(exc) from exc
        try:
            self._retry(lambda: self._setup(db))
        except BaseException:
            db.close()
            raise
        return db

    def _setup(self, db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
        if not mode or str(mode[0]).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous=NORMAL")
        if self._clock_matches(db):
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if not self._clock_matches(db):
                # Deadlines of another boot (or wall-clock ones of an older taskq) mean
                # nothing on this clock: expire the leases, drop leftover broadcast copies.
                db.execute("UPDATE taskq_messages SET deadline = 0 WHERE lease IS NOT NULL")
                db.execute("UPDATE taskq_messages SET expires = 0 WHERE expires IS NOT NULL")
                db.execute("INSERT OR REPLACE INTO taskq_meta VALUES ('lease_clock', ?)",
                           (self.clock_id,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _clock_matches(self, db: sqlite3.Connection) -> bool:
        if not db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'taskq_meta'"
                          ).fetchone()[0]:
            return False
        row = db.execute("SELECT value FROM taskq_meta WHERE key = 'lease_clock'").fetchone()
        return bool(row) and row[0] == self.clock_id

    def connection(self) -> sqlite3.Connection:
        """This process's connection, opened (and the schema made) on first use."""
        with self._lock:  # opening writes (the schema, the lease clock): never across a fork
            pid = os.getpid()
            if self._db is None or self._pid != pid:
                if self._db is not None:
                    self._abandoned.append(self._db)  # forked: the parent's, left alone
                self._db = None
                self._db, self._pid = self._open(), pid
            return self._db

    def close(self) -> None:
        with self._lock:  # the last close checkpoints the WAL: never across a fork
            db, self._db = self._db, None
            if db is not None and self._pid == os.getpid():
                with contextlib.suppress(sqlite3.Error):
                    db.close()

    # -- transactions ---------------------------------------------------------------------
    def _retry(self, fn: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                return fn()
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise self._describe(exc) from exc
                if time.monotonic() >= deadline:
                    raise BrokerBusy(
                        f"the broker database {self.path!r} stayed locked for more than "
                        f"{self.busy_timeout:g} s ({exc}); another process holds a long write "
                        "transaction") from exc
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work(db)`` in one ``BEGIN IMMEDIATE`` transaction, retried when locked."""
        with self._lock:
            db = self.connection()

            def attempt() -> Any:
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    raise
                return result

            return self._retry(attempt)

    def read(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            db = self.connection()
            return self._retry(lambda: work(db))

    # -- messages -------------------------------------------------------------------------
    def publish(self, rows: Sequence[tuple[str, str, float | None]]) -> None:
        """Insert ``(queue, payload, expires)`` rows; committed when this returns."""
        self.write(lambda db: db.executemany(
            "INSERT INTO taskq_messages (queue, payload, expires) VALUES (?, ?, ?)", rows))

    def any_ready(self, queues: Sequence[str]) -> bool:
        """Whether one of ``queues`` has a message ready (a read: takes no write lock)."""
        if not queues:
            return False

        def check(db: sqlite3.Connection) -> bool:
            for queue in queues:
                if db.execute("SELECT 1 FROM taskq_messages WHERE queue = ? AND lease IS NULL "
                              "LIMIT 1", (queue,)).fetchone():
                    return True
            return False

        return bool(self.read(check))

    def fetch(self, queues: Sequence[str], limit: int, lease_prefix: str, lease_timeout: float,
              no_ack: frozenset[str] | set[str], acks: Sequence[tuple[int, str]] = ()
              ) -> list[Fetched]:
        """Lease (or, for ``no_ack`` queues, pop) up to ``limit`` messages, queue by queue,
        after deleting the acked ``[(row id, lease id)]``, all in one transaction."""

        def work(db: sqlite3.Connection) -> list[Fetched]:
            if acks:
                db.executemany("DELETE FROM taskq_messages WHERE id = ? AND lease = ?", acks)
            deadline = self.clock() + lease_timeout
            out: list[Fetched] = []
            for queue in queues:
                room = limit - len(out)
                if room <= 0:
                    break
                if queue in no_ack:
                    rows = db.execute(_POP, (queue, room)).fetchall()
                else:
                    rows = db.execute(_LEASE, (lease_prefix, deadline, queue, room)).fetchall()
                rows.sort(key=lambda r: (r[1], r[0]))  # RETURNING has no order of its own
                out.extend((r[0], queue, bool(r[2]), r[3], r[4]) for r in rows)
            return out

        return list(self.write(work))

    def settle(self, requeue: bool, held: Sequence[tuple[int, str]]) -> list[bool]:
        """End the leases ``[(row id, lease id)]``: delete, or requeue at the head marked
        redelivered. Returns, per lease, whether it was still held."""
        sql = _REQUEUE if requeue else "DELETE FROM taskq_messages WHERE id = ? AND lease = ?"

        def work(db: sqlite3.Connection) -> list[bool]:
            return [db.execute(sql, pair).rowcount == 1 for pair in held]

        return list(self.write(work))

    def renew(self, held: Sequence[tuple[int, str]], lease_timeout: float) -> list[str]:
        """Extend the leases ``[(row id, lease id)]``; returns the lease ids that are gone."""

        def work(db: sqlite3.Connection) -> list[str]:
            deadline = self.clock() + lease_timeout
            lost: list[str] = []
            for start in range(0, len(held), _CHUNK):
                chunk = held[start:start + _CHUNK]
                before = db.total_changes
                db.executemany("UPDATE taskq_messages SET deadline = ? WHERE id = ? AND lease = ?",
                               [(deadline, rowid, lease) for rowid, lease in chunk])
                if db.total_changes - before == len(chunk):
                    continue
                marks = ",".join("?" * len(chunk))
                alive = {r[0] for r in db.execute(
                    f"SELECT lease FROM taskq_messages WHERE lease IN ({marks})",
                    [lease for _, lease in chunk])}
                lost.extend(lease for _, lease in chunk if lease not in alive)
            return lost

        return list(self.write(work))

    def restore_expired(self) -> int:
        """Put messages whose lease expired back at the head of their queues (redelivered),
        and drop broadcast copies nobody took in time. Returns how many were restored."""

        def due(db: sqlite3.Connection) -> bool:
            now = self.clock()
            return bool(db.execute(
                "SELECT 1 FROM taskq_messages WHERE lease IS NOT NULL AND deadline < ? LIMIT 1",
                (now,)).fetchone() or db.execute(
                "SELECT 1 FROM taskq_messages WHERE expires IS NOT NULL AND expires < ? LIMIT 1",
                (now,)).fetchone())

        if not self.read(due):
            return 0

        def work(db: sqlite3.Connection) -> int:
            now = self.clock()
            restored = db.execute(
                "UPDATE taskq_messages SET lease = NULL, deadline = NULL, head = 0, "
                "redelivered = 1 WHERE lease IS NOT NULL AND deadline < ?", (now,)).rowcount
            db.execute("DELETE FROM taskq_messages WHERE expires IS NOT NULL AND expires < ? "
                       "AND lease IS NULL", (now,))
            return int(restored)

        return int(self.write(work))

    # -- queues and bindings ----------------------------------------------------------------
    def declare_queue(self, queue: str) -> None:
        if self.has_queue(queue):
            return
        self.write(lambda db: db.execute(
            "INSERT OR IGNORE INTO taskq_queues (name) VALUES (?)", (queue,)))

    def has_queue(self, queue: str) -> bool:
        return bool(self.read(lambda db: db.execute(
            "SELECT 1 FROM taskq_queues WHERE name = ?", (queue,)).fetchone()))

    def size(self, queue: str) -> int:
        return int(self.read(lambda db: db.execute(
            "SELECT count(*) FROM taskq_messages WHERE queue = ? AND lease IS NULL",
            (queue,)).fetchone()[0]))

    def purge(self, queue: str) -> int:
        return int(self.write(lambda db: db.execute(
            "DELETE FROM taskq_messages WHERE queue = ? AND lease IS NULL", (queue,)).rowcount))

    def delete_queue(self, queue: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM taskq_messages WHERE queue = ?", (queue,))
            db.execute("DELETE FROM taskq_bindings WHERE queue = ?", (queue,))
            db.execute("DELETE FROM taskq_queues WHERE name = ?", (queue,))

        self.write(work)

    def bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        key = (exchange, routing_key or "", pattern or "", queue)
        if self.read(lambda db: db.execute(
                "SELECT 1 FROM taskq_bindings WHERE exchange = ? AND routing_key = ? "
                "AND pattern = ? AND queue = ?", key).fetchone()):
            return
        self.write(lambda db: db.execute(
            "INSERT OR IGNORE INTO taskq_bindings VALUES (?, ?, ?, ?)", key))

    def unbind(self, exchange: str, routing_key: str, queue: str) -> None:
        self.write(lambda db: db.execute(
            "DELETE FROM taskq_bindings WHERE exchange = ? AND routing_key = ? AND queue = ?",
            (exchange, routing_key or "", queue)))

    def table(self, exchange: str) -> list[tuple[str, str, str]]:
        """``[(routing key, pattern, queue)]`` bound to ``exchange``."""
        return list(self.read(lambda db: db.execute(
            "SELECT routing_key, pattern, queue FROM taskq_bindings WHERE exchange = ?",
            (exchange,)).fetchall()))

    def declare_exchange(self, name: str, type_: str) -> None:
        if self.exchange_type(name) == type_:
            return
        self.write(lambda db: db.execute(
            "INSERT OR REPLACE INTO taskq_exchanges (name, type) VALUES (?, ?)", (name, type_)))

    def exchange_type(self, name: str) -> str | None:
        row = self.read(lambda db: db.execute(
            "SELECT type FROM taskq_exchanges WHERE name = ?", (name,)).fetchone())
        return str(row[0]) if row else None

    def delete_exchange(self, name: str) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM taskq_exchanges WHERE name = ?", (name,))
            db.execute("DELETE FROM taskq_bindings WHERE exchange = ?", (name,))

        self.write(work)
