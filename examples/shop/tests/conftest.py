"""How an app team points taskq's pytest plugin at its own app."""

from __future__ import annotations

import os

import pytest


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
