"""The embedded default: where the broker and results go when nothing is configured."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from taskq import TaskQ
from taskq.backends.base import DisabledBackend
from taskq.backends.database import DatabaseBackend
from taskq.config import Config
from taskq.embedded import embedded_dir, result_backend_url
from taskq.errors import ConfigurationError
from taskq.publish import broker_url


def test_without_a_broker_the_embedded_dir_holds_broker_and_results(tmp_path: Path) -> None:
    conf = Config(environ={"TASKQ_EMBEDDED_DIR": str(tmp_path / "emb")})
    assert broker_url(conf) == f"sqlite:///{tmp_path}/emb/broker.db"
    assert result_backend_url(conf) == f"db+sqlite:///{tmp_path}/emb/results.db"
    assert stat.S_IMODE((tmp_path / "emb").stat().st_mode) == 0o700


def test_xdg_data_home_then_home_are_the_fallbacks(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert embedded_dir(Config(environ={"XDG_DATA_HOME": str(tmp_path / "xdg")}),
                        create=False) == str(tmp_path / "xdg" / "taskq")
    assert embedded_dir(Config(environ={"XDG_DATA_HOME": "relative", "HOME": str(tmp_path)}),
                        create=False) == str(tmp_path / ".local" / "share" / "taskq")


def test_a_configured_broker_keeps_results_off_unless_configured(tmp_path: Path) -> None:
    env = {"TASKQ_EMBEDDED_DIR": str(tmp_path)}
    assert result_backend_url(Config(environ={**env, "TASKQ_BROKER_URL": "memory://"})) is None
    explicit = TaskQ("x", environ=env, result_backend=None)  # explicitly none: stays off
    assert isinstance(explicit.backend, DisabledBackend)
    default = TaskQ("x", environ=env)
    assert isinstance(default.backend, DatabaseBackend)
    assert default.backend.url == f"sqlite:///{tmp_path}/results.db"


def test_an_embedded_dir_that_cannot_be_made_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    conf = Config(environ={"TASKQ_EMBEDDED_DIR": str(blocker / "sub")})
    with pytest.raises(ConfigurationError, match="TASKQ_EMBEDDED_DIR"):
        broker_url(conf)
