"""What "ready" means for a prefork worker: its steps started, it consumes, and its first
children have forked (after the set-up, so the set-up does not copy pages they share)."""

from __future__ import annotations

import gc
import logging
import time

import pytest
from e2e_support import Broker

from taskq.worker.worker import Worker


def test_a_prefork_worker_has_forked_its_children_when_it_says_ready(
        redis_broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    app = redis_broker.app()
    worker = Worker(app, pool="prefork", concurrency=2, install_signals=False, mingle=False,
                    gossip=False)
    children_at_ready: list[int] = []

    class AtReady(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "ready: pool=" in record.getMessage():
                children_at_ready.append(len(worker.pool.pids()))

    probe = AtReady()
    logger = logging.getLogger("taskq.worker")
    logger.addHandler(probe)
    try:
        with caplog.at_level(logging.INFO, logger="taskq.worker"):
            worker.start()
            turns = worker.loop.iterate_handling(worker._on_loop_error)
            deadline = time.monotonic() + 30
            while not children_at_ready and time.monotonic() < deadline:
                next(turns)
        assert children_at_ready == [2]
    finally:
        logger.removeHandler(probe)
        worker.warm = False
        worker.shutdown()
        worker.loop.close()
        gc.unfreeze()  # the pool froze this test process's objects at its first fork
