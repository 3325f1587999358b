"""SQLAlchemy result backend: ``db+sqlite:///path.db``, ``db+postgresql://...``.

Records are stored as the serialized Celery-layout meta in one table, ``taskq_taskmeta``
(not Celery's pickled ``celery_taskmeta``: taskq never needs pickle to read a result).
Expired rows are purged when results are stored, at most once a minute.

Chords count in two more tables: ``taskq_chord`` (one row per chord: its size, who claimed
firing the body, whether it fired) and ``taskq_chord_part`` (one row per distinct header
part, keyed by task id and group index, so a part that runs twice counts once). Each part
locks its chord's row first, so two parts finishing together are counted one after the other
and exactly one of them sees the full count.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from taskq.backends.base import Backend, ChordJoin, Meta, claim_token
from taskq.errors import ResultBackendError
from taskq.urls import safe_url

if TYPE_CHECKING:
    from taskq.app import TaskQ

_metadata = sa.MetaData()
taskmeta = sa.Table(
    "taskq_taskmeta",
    _metadata,
    sa.Column("task_id", sa.String(155), primary_key=True),
    sa.Column("status", sa.String(50), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.Column("date_done", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True, index=True),
)
chords = sa.Table(
    "taskq_chord",
    _metadata,
    sa.Column("group_id", sa.String(155), primary_key=True),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("done", sa.Boolean, nullable=False, default=False),
    sa.Column("claim", sa.String(64), nullable=True),
    sa.Column("claim_until", sa.Float, nullable=True),
    sa.Column("expires_at", sa.Float, nullable=True, index=True),
)
chord_parts = sa.Table(
    "taskq_chord_part",
    _metadata,
    sa.Column("group_id", sa.String(155), primary_key=True),
    sa.Column("part", sa.String(200), primary_key=True),  # "<task id>:<group index>"
    sa.Column("position", sa.Float, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)
CHORD_CLAIM_SECONDS = 10.0  # a claimer that dies before sending the body frees it this soon


# SQLite and fork: SQLite keeps per-process state for every open database file (its inode
# list, the WAL index mapping). A child forked while the parent has a connection open to the
# file inherits that state, with file descriptors the child replaces, and its own
# connections then fail ("disk I/O error", "database is locked"). The worker's main process
# does touch the result database (a lost task's FAILURE, from its offload thread, while the
# loop forks children), so for SQLite every connection is opened and closed inside this
# lock (no pool), and a fork waits for it: no connection is ever open across a fork.
_FORK_LOCK = threading.RLock()


def _lock_before_fork() -> None:
    _FORK_LOCK.acquire()


def _unlock_after_fork() -> None:
    _FORK_LOCK.release()


def _new_lock_in_child() -> None:
    global _FORK_LOCK
    _FORK_LOCK = threading.RLock()


os.register_at_fork(before=_lock_before_fork, after_in_parent=_unlock_after_fork,
                    after_in_child=_new_lock_in_child)

SQLITE_BUSY_TIMEOUT = 30.0  # seconds a write waits for another process's transaction


class DatabaseBackend(Backend):
    supports_chords = True

    def __init__(self, app: TaskQ, url: str, **engine_options: Any) -> None:
        super().__init__(app)
        self.url = url
        self.sqlite = url.startswith("sqlite")
        self.expires = app.conf.result_expires
        self._engine_options = engine_options
        self._engine: sa.Engine | None = None
        self._pid = 0
        self._last_purge = 0.0
        self._abandoned: list[sa.Engine] = []
        self._bounded: tuple[int, float] | None = None  # (pid, busy timeout) there

    def limit_blocking(self, seconds: float) -> None:
        """In this process, wait at most ``seconds`` for a locked SQLite database (the
        worker's main process: a fork waits for a store that waits for a lock)."""
        self._bounded = (os.getpid(), seconds)
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> sa.Engine:
        # Never share a connection across fork: a child makes its own engine.
        if self._engine is None or self._pid != os.getpid():
            if self._engine is not None:
                # A parent's engine: never close it here (closing an inherited SQLite
                # connection can drop this process's own locks on the file).
                self._abandoned.append(self._engine)
            options = dict(self._engine_options)
            if self.sqlite:
                timeout = SQLITE_BUSY_TIMEOUT
                if self._bounded is not None and self._bounded[0] == os.getpid():
                    timeout = self._bounded[1]
                options.setdefault("connect_args", {"timeout": timeout})
                options.setdefault("poolclass", sa.pool.NullPool)  # closed when released
            else:
                options.setdefault("pool_pre_ping", True)
            try:
                engine = sa.create_engine(self.url, **options)
                if self.sqlite:
                    sa.event.listen(engine, "connect", _sqlite_pragmas)
                with self._fork_safe():
                    _create_tables(engine)
            except (sa.exc.SQLAlchemyError, ValueError) as exc:
                raise ResultBackendError(
                    f"result backend db+{safe_url(self.url)}: cannot open the database: {exc}"
                ) from exc
            self._engine, self._pid = engine, os.getpid()
        return self._engine

    @contextlib.contextmanager
    def _fork_safe(self) -> Iterator[None]:
        if not self.sqlite:
            yield
            return
        with _FORK_LOCK:
            yield

    @contextlib.contextmanager
    def _begin(self) -> Iterator[sa.Connection]:
        """A transaction; for SQLite, its connection never outlives it across a fork."""
        engine = self.engine
        with self._fork_safe(), engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sa.Connection]:
        engine = self.engine
        with self._fork_safe(), engine.connect() as conn:
            yield conn

    def _set(self, task_id: str, meta: Meta, state: str, request: Any) -> None:
        now = time.time()
        row = {
            "task_id": task_id,
            "status": state,
            "payload": self.encode(meta),
            "date_done": dt.datetime.now(dt.UTC),
            "expires_at": now + self.expires if self.expires else None,
        }
        try:
            with self._begin() as conn:
                updated = conn.execute(
                    taskmeta.update().where(taskmeta.c.task_id == task_id).values(**row)
                ).rowcount
                if not updated:
                    conn.execute(taskmeta.insert().values(**row))
                if self.expires and now - self._last_purge > 60:
                    conn.execute(taskmeta.delete().where(taskmeta.c.expires_at < now))
                    self._last_purge = now
        except sa.exc.SQLAlchemyError as exc:
            raise ResultBackendError(f"storing the result of {task_id} failed: {exc}") from exc

    def _get(self, task_id: str) -> Meta | None:
        try:
            with self._connect() as conn:
                row = conn.execute(
                    sa.select(taskmeta.c.payload, taskmeta.c.expires_at).where(
                        taskmeta.c.task_id == task_id
                    )
                ).first()
        except sa.exc.SQLAlchemyError as exc:
            raise ResultBackendError(f"reading the result of {task_id} failed: {exc}") from exc
        if row is None or (row.expires_at is not None and row.expires_at < time.time()):
            return None
        return self.decode(row.payload)

    def _delete(self, task_id: str) -> None:
        with self._begin() as conn:
            conn.execute(taskmeta.delete().where(taskmeta.c.task_id == task_id))

    # -- chords and groups ---------------------------------------------------------------------
    def set_chord_size(self, group_id: str, size: int) -> None:
        row = {"size": int(size), "done": False, "claim": None, "claim_until": None,
               "expires_at": time.time() + self.expires if self.expires else None}
        try:
            with self._begin() as conn:
                conn.execute(chord_parts.delete().where(chord_parts.c.group_id == group_id))
                if not conn.execute(chords.update().where(chords.c.group_id == group_id)
                                    .values(**row)).rowcount:
                    conn.execute(chords.insert().values(group_id=group_id, **row))
        except sa.exc.SQLAlchemyError as exc:
            raise ResultBackendError(f"setting the size of chord {group_id} failed: {exc}"
                                     ) from exc

    def chord_part_return(self, group_id: str, task_id: str, group_index: int | None,
                          state: str, result: Any) -> ChordJoin | None:
        now = time.time()
        position = float("inf") if group_index is None else float(group_index)
        part = f"{task_id}:{'+inf' if group_index is None else group_index}"
        payload = self.encode([1, task_id, state, result])  # type: ignore[arg-type]
        token = claim_token(task_id, group_index)
        try:
            with self._begin() as conn:
                # Lock the chord's row first (a write, so SQLite takes its write lock now
                # and Postgres/MySQL serialize the parts of one chord on the row).
                conn.execute(chords.update().where(chords.c.group_id == group_id)
                             .values(size=chords.c.size))
                chord = conn.execute(sa.select(chords).where(
                    chords.c.group_id == group_id)).first()
                if chord is not None and chord.done:
                    return None  # fired already: a late duplicate of a part
                seen = conn.execute(sa.select(chord_parts.c.part).where(
                    chord_parts.c.group_id == group_id, chord_parts.c.part == part)).first()
                if seen is None:
                    conn.execute(chord_parts.insert().values(
                        group_id=group_id, part=part, position=position, payload=payload))
                if chord is None:
                    return None
                count = conn.execute(sa.select(sa.func.count()).select_from(chord_parts)
                                     .where(chord_parts.c.group_id == group_id)).scalar_one()
                if count != chord.size:
                    return None
                if chord.claim is not None and (chord.claim_until or 0) > now:
                    return None  # another part is firing the body
                conn.execute(chords.update().where(chords.c.group_id == group_id).values(
                    claim=token, claim_until=now + CHORD_CLAIM_SECONDS))
                rows = conn.execute(sa.select(chord_parts.c.payload).where(
                    chord_parts.c.group_id == group_id).order_by(
                    chord_parts.c.position)).all()
        except sa.exc.SQLAlchemyError as exc:
            raise ResultBackendError(f"counting a part of chord {group_id} failed: {exc}"
                                     ) from exc
        parts = []
        for row in rows:
            _version, tid, part_state, value = self.decode_list(row.payload)
            parts.append((str(tid), str(part_state), value))
        return ChordJoin(group_id, token, tuple(parts))

    def decode_list(self, payload: bytes) -> list[Any]:
        from kombu.serialization import loads

        value = loads(payload, self.content_type, "utf-8", accept=self.accept)
        if not isinstance(value, list | tuple) or len(value) != 4:
            raise ResultBackendError(f"a chord part is not [1, id, state, result]: "
                                     f"{value!r:.200}")
        return list(value)

    def chord_release(self, group_id: str, token: str) -> None:
        try:
            with self._begin() as conn:
                conn.execute(chords.update().where(
                    chords.c.group_id == group_id, chords.c.claim == token)
                    .values(claim=None, claim_until=None))
        except sa.exc.SQLAlchemyError as exc:
            raise ResultBackendError(f"giving up the claim of chord {group_id} failed: {exc}"
                                     ) from exc

    def chord_done(self, join: ChordJoin) -> None:
        try:
            with self._begin() as conn:
                if conn.execute(chords.update().where(
                        chords.c.group_id == join.group_id, chords.c.claim == join.token)
                        .values(done=True, claim=None, claim_until=None)).rowcount:
                    conn.execute(chord_parts.delete().where(
                        chord_parts.c.group_id == join.group_id))
                if self.expires:
                    conn.execute(chords.delete().where(chords.c.expires_at < time.time()))
        except sa.exc.SQLAlchemyError as exc:
            raise ResultBackendError(f"finishing chord {join.group_id} failed: {exc}") from exc

    # A run-once key is a row of the results table, as a group is: no table of its own.
    def claim_once(self, key: str) -> bool:
        now = time.time()
        row = {"task_id": f"once:{key}", "status": "ONCE", "payload": b"",
               "date_done": dt.datetime.now(dt.UTC),
               "expires_at": now + self.expires if self.expires else None}
        try:
            with self._begin() as conn:
                conn.execute(taskmeta.delete().where(taskmeta.c.task_id == row["task_id"],
                                                     taskmeta.c.expires_at < now))
                conn.execute(taskmeta.insert().values(**row))
        except sa.exc.IntegrityError:
            return False
        except sa.exc.SQLAlchemyError as exc:
            raise ResultBackendError(f"taking the run-once key {key} failed: {exc}") from exc
        return True

    def release_once(self, key: str) -> None:
        self._delete(f"once:{key}")

    def _group_key(self, group_id: str) -> str:
        return f"group:{group_id}"

    def save_group(self, group_id: str, value: Any) -> None:
        self._set(self._group_key(group_id), {"result": value, "status": "GROUP"}, "GROUP",
                  None)

    def restore_group(self, group_id: str) -> Any:
        meta = self._get(self._group_key(group_id))
        return None if meta is None else meta.get("result")

    def delete_group(self, group_id: str) -> None:
        self._delete(self._group_key(group_id))

    def close(self) -> None:
        if self._engine is not None and self._pid == os.getpid():
            self._engine.dispose()
        self._engine = None


def _create_tables(engine: sa.Engine) -> None:
    """Create the table; another process creating it at the same moment is fine."""
    try:
        _metadata.create_all(engine)
    except sa.exc.OperationalError as exc:
        if "already exists" not in str(exc):
            raise


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, wait: float = 10.0) -> None:
    """WAL and normal syncs. Switching a file to WAL needs it to itself, and SQLite can answer
    "database is locked" at once, without its busy timeout, while another process opens or
    creates the same file: retry for up to ``wait`` seconds."""
    import sqlite3

    deadline = time.monotonic() + wait
    cursor = dbapi_conn.cursor()
    try:
        while True:
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
