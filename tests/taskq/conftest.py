"""Broker fixtures for the tests that run real ``taskq worker`` subprocesses (tests/taskq/worker
and the canvas tests here), on ``worker/e2e_support.py``: brokers with names no other test
uses, a ledger file tasks write to, a set of workers stopped at teardown."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "worker"))
from e2e_support import Broker, Ledger, WorkerSet, make_broker


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    """Each test that uses it runs once on Redis and once on RabbitMQ."""
    b = make_broker(request.param)
    yield b
    b.cleanup()


@pytest.fixture
def redis_broker() -> Iterator[Broker]:
    b = make_broker("redis")
    yield b
    b.cleanup()


@pytest.fixture
def amqp_broker() -> Iterator[Broker]:
    b = make_broker("amqp")
    yield b
    b.cleanup()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerSet]:
    """A ``WorkerSet``: ``workers.start(broker, app=..., ...)``; all stopped at teardown, then
    their logs printed (shown when the test failed)."""
    ws = WorkerSet(tmp_path)
    yield ws
    ws.stop_all()
    print(ws.dump())
