"""Execution pools: where the main process sends jobs to run.

``pool_for(kind)`` returns the class: ``prefork`` (default, one process per slot), ``solo``
(in the main process, one job at a time) and ``threads``.
"""

from __future__ import annotations

from taskq.errors import ConfigurationError
from taskq.pool.base import Job, JobResult, Pool

__all__ = ["Job", "JobResult", "Pool", "pool_for", "pool_label"]


def pool_for(kind: str) -> type[Pool]:
    if kind == "solo":
        from taskq.pool.solo import SoloPool

        return SoloPool
    if kind == "threads":
        from taskq.pool.threads import ThreadPool

        return ThreadPool
    if kind == "prefork":
        from taskq.pool.prefork import PreforkPool

        return PreforkPool
    raise ConfigurationError(f"setting worker_pool: unknown pool {kind!r}; use prefork, solo "
                             "or threads")


def pool_label(kind: str, pool: Pool) -> str:
    """The pool as an operator chose it: ``prefork``, ``prefork --threads 4``, ``solo``."""
    threads = int(getattr(pool, "threads", 1))
    return kind + (f" --threads {threads}" if threads > 1 else "")
