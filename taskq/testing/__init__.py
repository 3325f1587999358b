"""Testing app teams' tasks on a real worker: the pytest plugin and its helpers.

The plugin (``taskq.testing.plugin``) loads through the ``pytest11`` entry point when taskq is
installed. Fixtures are named ``taskq_*`` so they never clash with Celery's ``celery_*``.
"""

from __future__ import annotations

from taskq.testing.helpers import assert_no_lost, wait_for
from taskq.testing.workers import SubprocessWorker, ThreadWorker, WorkerStuck

__all__ = ["SubprocessWorker", "ThreadWorker", "WorkerStuck", "assert_no_lost", "wait_for"]
