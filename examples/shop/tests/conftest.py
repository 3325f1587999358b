"""How an app team points taskq's pytest plugin at its own app."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

# Deterministic in CI, and no wall-clock health checks: on a busy machine generating inputs
# may be slow, which says nothing about the tasks under test.
settings.register_profile("shop", derandomize=bool(os.environ.get("CI")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shop")


@pytest.fixture(scope="session")
def taskq_app_spec() -> str:
    return "shop.app:app"


@pytest.fixture(scope="session")
def taskq_worker_pool() -> str:
    # SHOP_TEST_POOL lets CI run the same suite on every pool.
    return os.environ.get("SHOP_TEST_POOL", "threads")


@pytest.fixture(scope="session")
def taskq_worker_parameters() -> dict[str, object]:
    return {"concurrency": 2}


@pytest.fixture(scope="session")
def taskq_config() -> dict[str, object]:
    return {"result_expires": 600}


@pytest.fixture(scope="session")
def taskq_includes() -> tuple[str, ...]:
    return ("shop.tasks",)
