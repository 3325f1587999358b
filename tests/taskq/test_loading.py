"""-A finds the app: module, module:attr, or a package holding one; errors say what to do."""

from __future__ import annotations

import pytest

from taskq import TaskQ
from taskq.errors import ConfigurationError
from taskq.loading import find_app


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def write(root, relpath, text):
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_module_with_an_app_attribute(project, unique):
    write(project, f"{unique}.py", "from taskq import TaskQ\napp = TaskQ('m')\n")
    assert isinstance(find_app(unique), TaskQ)


def test_module_colon_attribute(project, unique):
    write(project, f"{unique}.py", "from taskq import TaskQ\nmine = TaskQ('m')\nother = 1\n")
    assert find_app(f"{unique}:mine").main == "m"


def test_package_with_a_taskq_submodule(project, unique):
    write(project, f"{unique}/__init__.py", "")
    write(project, f"{unique}/taskq.py", "from taskq import TaskQ\napp = TaskQ('pkg')\n")
    assert find_app(unique).main == "pkg"


def test_missing_module_says_where_to_run_from(project, unique):
    with pytest.raises(ConfigurationError, match="no module named"):
        find_app(unique)


def test_attribute_that_is_not_an_app(project, unique):
    write(project, f"{unique}.py", "x = 1\n")
    with pytest.raises(ConfigurationError, match="not a TaskQ"):
        find_app(f"{unique}:x")


def test_module_without_an_app(project, unique):
    write(project, f"{unique}.py", "x = 1\n")
    with pytest.raises(ConfigurationError, match="no TaskQ app"):
        find_app(unique)
