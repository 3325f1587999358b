"""The library's import graph: no benchmarks inside it, no circle between its CLI modules.

Benchmarks belong to ``stress`` (``taskq-stress bench ...``); an installed worker never ships
or loads them. ``taskq.cli`` assembles the command line from ``taskq.cli_ops``, never the
other way round, so each imports alone in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import taskq

CLI_MODULES = ("taskq.cli", "taskq.cli_ops")


def _modules_after_import(module: str) -> list[str]:
    """The modules a fresh interpreter holds after ``import module``."""
    code = f"import json, sys; import {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    return list(json.loads(out))


def _imported_names(path: Path) -> set[str]:
    """Every module an ``import`` in the file names, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_holds_no_benchmark_module():
    modules = [m.name for m in pkgutil.walk_packages(taskq.__path__, "taskq.")]
    assert modules, "found no taskq modules: the walk itself is broken"
    assert [m for m in modules if "bench" in m.rsplit(".", 1)[-1]] == []


def test_importing_the_whole_library_loads_no_benchmark():
    names = [m.name for m in pkgutil.walk_packages(taskq.__path__, "taskq.")
             if not m.name.endswith("__main__")]
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}:\n"
            "    importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    loaded = json.loads(out)
    assert [m for m in loaded if "bench" in m] == []


def test_cli_ops_imports_alone_without_pulling_in_the_cli_module():
    loaded = _modules_after_import("taskq.cli_ops")
    assert "taskq.cli_ops" in loaded
    assert "taskq.cli" not in loaded, "taskq.cli_ops imports taskq.cli: an import circle"


def test_the_cli_modules_do_not_name_each_other_even_inside_a_function():
    root = Path(taskq.__file__).parent
    imports = {m: _imported_names(root / f"{m.split('.', 1)[1]}.py") for m in CLI_MODULES}
    circle = ("taskq.cli_ops" in imports["taskq.cli"]) and ("taskq.cli" in imports["taskq.cli_ops"])
    assert not circle, "taskq.cli and taskq.cli_ops import each other"
    assert "taskq.cli" not in imports["taskq.cli"], "taskq.cli imports itself"


def test_a_client_and_a_worker_load_no_transport_backend_or_tool_they_do_not_use():
    """Start-up time (issue 17): the SQLite transport, SQL result backends, rich, docker and
    Celery load only when a configuration or command uses them."""
    loaded = _modules_after_import("taskq.cli, taskq.worker, taskq.pool.prefork")
    unused = ("taskq.transports.sqlite", "sqlite3", "sqlalchemy", "rich", "docker", "celery")
    assert [m for m in loaded if m.split(".")[0] in unused or m in unused] == []


def test_the_sqlite_alias_names_the_sqlite_transport():
    from taskq.publish import SQLITE_TRANSPORT
    from taskq.transports.sqlite import TRANSPORT

    assert SQLITE_TRANSPORT == TRANSPORT
