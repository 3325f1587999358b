"""End-to-end worker fixtures: real brokers, real ``taskq worker`` subprocesses.

Fixtures build on each other: ``broker`` (Redis or RabbitMQ, with names no other test uses;
it, ``redis_broker``, ``amqp_broker`` and ``ledger`` are in tests/taskq/conftest.py, shared with
the canvas tests) → ``worker`` (a factory that starts ``taskq worker -A appmod`` through the
real CLI and waits, with a deadline, until it is connected; at teardown it is stopped with
SIGTERM, then SIGKILL after 10 s, and its log is printed when the test failed). ``ledger`` is
a file the tasks write to, to be read by the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import StartWorker, WorkerSet


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(getattr(getattr(node, f"rep_{when}", None), "failed", False)
               for when in ("setup", "call"))


@pytest.fixture
def worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartWorker]:
    """``worker(broker, pool="threads", concurrency=2, ...)`` starts a ready worker."""
    workers = WorkerSet(tmp_path)
    yield workers.start
    failed = _failed(request)
    workers.stop_all(dump_stacks=failed)
    if failed:
        print(workers.dump())
