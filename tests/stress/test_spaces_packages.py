"""A cell on Redis without the redis package installed stops with what to install (the
runner's exit code 2), not a traceback from the middle of the cell (found running
ci/stress-smoke.sh in a venv the README's first command had made: `.[report]`, no redis)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stress.errors import RunnerError
from stress.spaces import make_space


def test_a_redis_cell_without_the_redis_package_says_what_to_install(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis now raises ImportError
    space = make_space("redis", tmp_path, "redis://127.0.0.1:1/0")
    with pytest.raises(RunnerError, match=r"pip install 'taskq\[redis\]'"):
        space.check()
    space.cleanup()  # and cleaning up a cell that wrote nothing does not fail either


def test_a_sqlite_cell_needs_no_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    make_space("sqlite", tmp_path, "sqlite://").check()
