"""The embedded default: a SQLite broker and result store in a per-user directory.

With no ``broker_url`` configured, taskq uses ``sqlite:///<dir>/broker.db`` (taskq's SQLite
transport), and then, with no ``result_backend`` configured either, ``db+sqlite:///<dir>/
results.db``. ``<dir>`` is the ``embedded_dir`` setting (``TASKQ_EMBEDDED_DIR``), else
``$XDG_DATA_HOME/taskq``, else ``~/.local/share/taskq``; it is made with mode 0700 when first
needed. A worker and a client started from different directories by the same user meet there.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from taskq.errors import ConfigurationError

if TYPE_CHECKING:
    from taskq.config import Config

__all__ = ["default_broker_url", "embedded_dir", "result_backend_url", "uses_embedded_broker"]

BROKER_FILE = "broker.db"
RESULTS_FILE = "results.db"
_made: set[str] = set()


def embedded_dir(conf: Config, *, create: bool = True) -> str:
    """The directory of the embedded broker and result databases (made, mode 0700)."""
    path = conf.embedded_dir or _data_home(conf.environ)
    path = os.path.abspath(os.path.expanduser(path))
    if create and path not in _made:
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"setting embedded_dir: cannot create {path!r} for the embedded broker "
                f"({exc.strerror}); set TASKQ_EMBEDDED_DIR to a writable directory, or "
                "configure broker_url") from None
        _made.add(path)
    return path


def _data_home(environ: Mapping[str, str]) -> str:
    xdg = environ.get("XDG_DATA_HOME") or os.environ.get("XDG_DATA_HOME") or ""
    if os.path.isabs(xdg):  # the XDG spec ignores a relative value
        return os.path.join(xdg, "taskq")
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local", "share", "taskq")


def default_broker_url(conf: Config) -> str:
    return "sqlite:///" + os.path.join(embedded_dir(conf), BROKER_FILE)


def uses_embedded_broker(conf: Config) -> bool:
    return not conf.broker_url


def result_backend_url(conf: Config) -> str | None:
    """``result_backend``, or the embedded results database when both it and the broker
    are left unset (an explicit ``result_backend=None`` keeps results disabled)."""
    if conf.result_backend or conf.source("result_backend") != "default":
        return conf.result_backend
    if uses_embedded_broker(conf):
        return "db+sqlite:///" + os.path.join(embedded_dir(conf), RESULTS_FILE)
    return None
