"""Shared fixtures: the real brokers, unique names per test, a deterministic hypothesis profile.

Broker-dependent tests skip with a reason when a broker is missing locally and fail when
``CI`` is set (DESIGN.md: Tests and brokers).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _need(host: str, port: int, what: str) -> None:
    if _port_open(host, port):
        return
    reason = f"{what} is not reachable on {host}:{port}; run `bash ci/start-brokers.sh`"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _no_shared_embedded_broker(tmp_path_factory: pytest.TempPathFactory,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that leaves broker_url unset gets a private embedded directory, never the
    per-user default (~/.local/share/taskq) that a developer's own workers use."""
    if "TASKQ_EMBEDDED_DIR" not in os.environ:
        monkeypatch.setenv("TASKQ_EMBEDDED_DIR", str(tmp_path_factory.mktemp("embedded")))
    # Apps made with an explicit environ={} fall back to $XDG_DATA_HOME/taskq.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("xdg")))


@pytest.fixture
def unique() -> str:
    """A short name no other test (or xdist worker) uses: queue names, key prefixes."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url() -> str:
    _need(REDIS_HOST, REDIS_PORT, "Redis")
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture
def amqp_url() -> str:
    _need(AMQP_HOST, AMQP_PORT, "RabbitMQ")
    return f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}//"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()
