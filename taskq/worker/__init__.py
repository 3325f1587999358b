"""The worker: one main process running one event loop, plus a pool."""

from __future__ import annotations

from taskq.worker.worker import Worker

__all__ = ["Worker"]
