"""taskq: a task queue whose worker does not deadlock and does not lose work."""

from __future__ import annotations

from taskq.app import TaskQ
from taskq.canvas import Signature
from taskq.errors import (
    BrokerUnreachable,
    ConfigurationError,
    Ignore,
    InvalidTaskMessage,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TaskqError,
    TimeLimitExceeded,
    WorkerLostError,
)
from taskq.result import AsyncResult, EagerResult
from taskq.task import Task

__version__ = "0.1.0"

__all__ = [
    # the app and its tasks
    "TaskQ",
    "Task",
    "Signature",
    # results
    "AsyncResult",
    "EagerResult",
    # errors and semipredicates
    "BrokerUnreachable",
    "ConfigurationError",
    "Ignore",
    "InvalidTaskMessage",
    "MaxRetriesExceededError",
    "NotRegistered",
    "Reject",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskqError",
    "TimeLimitExceeded",
    "WorkerLostError",
]
