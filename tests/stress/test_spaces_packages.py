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


def test_the_runner_prints_what_to_install_as_written(tmp_path: Path) -> None:
    """End to end, without the redis package: exit code 2 and the install command as
    written (the terminal output once ate '[redis]' as markup)."""
    import os
    import subprocess

    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "redis.py").write_text("raise ImportError('no redis package (test)')\n")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(shadow), str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "stress", "run", "--suite", "kill-children", "--broker",
         "redis://127.0.0.1:6379/0", "--duration", "1", "--cell", "pool=fair,acks=early",
         "--report-dir", str(tmp_path / "reports")],
        capture_output=True, text=True, timeout=120, cwd=root, env=env)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "pip install 'taskq[redis]'" in output.replace("\n", " "), output
    assert "Traceback" not in output
