"""Result backends: where task states and return values are stored.

``backend_from_url`` picks one by URL scheme: ``redis://``/``rediss://``, ``rpc://``,
``db+<sqlalchemy url>``, or ``None`` for no backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskq.backends.base import Backend, DisabledBackend
from taskq.errors import ConfigurationError
from taskq.urls import safe_url

if TYPE_CHECKING:
    from taskq.app import TaskQ

__all__ = ["Backend", "DisabledBackend", "backend_from_url"]


def backend_from_url(app: TaskQ, url: str | None) -> Backend:
    if not url or url in {"disabled", "none"}:
        return DisabledBackend(app)
    scheme = url.split("://", 1)[0].lower()
    options: dict[str, Any] = dict(app.conf.result_backend_transport_options)
    if scheme in {"redis", "rediss", "redis+socket"}:
        from taskq.backends.redis import RedisBackend

        return RedisBackend(app, url, **options)
    if scheme == "rpc":
        from taskq.backends.rpc import RPCBackend

        return RPCBackend(app, url)
    if scheme.startswith("db+"):
        from taskq.backends.database import DatabaseBackend

        return DatabaseBackend(app, url[len("db+"):], **options)
    raise ConfigurationError(
        f"setting result_backend: unsupported URL {safe_url(url)!r}; use redis://, rpc://, "
        "db+sqlite:///path (or another SQLAlchemy URL after 'db+'), or leave it unset"
    )
