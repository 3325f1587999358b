"""SQLAlchemy result backend: ``db+sqlite:///path.db``, ``db+postgresql://...``.

Records are stored as the serialized Celery-layout meta in one table, ``taskq_taskmeta``
(not Celery's pickled ``celery_taskmeta``: taskq never needs pickle to read a result).
Expired rows are purged when results are stored, at most once a minute.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import weakref
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from taskq.backends.base import Backend, Meta
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


def _dispose_before_fork(ref: weakref.ref[DatabaseBackend]) -> None:
    backend = ref()
    if backend is not None and backend._engine is not None and backend._pid == os.getpid():
        try:
            backend._engine.dispose()
        except Exception:
            pass


class DatabaseBackend(Backend):
    def __init__(self, app: TaskQ, url: str, **engine_options: Any) -> None:
        super().__init__(app)
        self.url = url
        self.expires = app.conf.result_expires
        self._engine_options = engine_options
        self._engine: sa.Engine | None = None
        self._pid = 0
        self._last_purge = 0.0
        self._abandoned: list[sa.Engine] = []
        # SQLite must not see a connection cross fork: the parent closes its pooled ones
        # before every fork (the worker forks pool children from its loop, never while a
        # connection is in use), so a child inherits none.
        ref = weakref.ref(self)
        os.register_at_fork(before=lambda: _dispose_before_fork(ref))

    @property
    def engine(self) -> sa.Engine:
        # Never share a connection across fork: a child makes its own engine.
        if self._engine is None or self._pid != os.getpid():
            if self._engine is not None:
                # A parent's engine: never close it here (closing an inherited SQLite
                # connection can drop this process's own locks on the file).
                self._abandoned.append(self._engine)
            options = dict(self._engine_options)
            if self.url.startswith("sqlite"):
                options.setdefault("connect_args", {"timeout": 30})
            else:
                options.setdefault("pool_pre_ping", True)
            try:
                engine = sa.create_engine(self.url, **options)
                if self.url.startswith("sqlite"):
                    sa.event.listen(engine, "connect", _sqlite_pragmas)
                _create_tables(engine)
            except (sa.exc.SQLAlchemyError, ValueError) as exc:
                raise ResultBackendError(
                    f"result backend db+{safe_url(self.url)}: cannot open the database: {exc}"
                ) from exc
            self._engine, self._pid = engine, os.getpid()
        return self._engine

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
            with self.engine.begin() as conn:
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
            with self.engine.connect() as conn:
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
        with self.engine.begin() as conn:
            conn.execute(taskmeta.delete().where(taskmeta.c.task_id == task_id))

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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
