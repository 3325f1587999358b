"""taskq's errors, in one hierarchy.

    TaskqError
    ├── ConfigurationError            a setting name or value is wrong
    │   └── PoolFeatureUnsupported    the configured pool kind cannot do what was asked
    ├── NotRegistered                 a task name the app does not know
    ├── InvalidTaskMessage            a message that is not a valid task message
    ├── ContentDisallowed             a message in a content type not accepted
    ├── BrokerUnreachable             the broker could not be reached within the retry policy
    │   └── BrokerBusy                the embedded broker's database stayed locked too long
    ├── BrokerDatabaseError           the embedded broker's database file is unusable
    ├── ResultBackendError            the result backend failed or is misconfigured
    ├── TimeoutError                  waiting for a result took too long
    ├── IncompleteStream              collect() reached a result that is not ready
    ├── TaskRevokedError              the task was revoked
    ├── TaskPredicate                 control flow raised from inside a task
    │   ├── Retry                     retry the task later
    │   ├── Ignore                    do not record a state for this task
    │   └── Reject                    reject the message (requeue or drop)
    ├── MaxRetriesExceededError       a retry was asked for past max_retries
    ├── ChordError                    a chord's header failed, so its body cannot run
    ├── WorkerLostError               the process running the task died
    └── RemoteTaskError               a task failed with an exception type not importable here

kombu, billiard, redis and sqlite3 errors are wrapped where they enter taskq.
``SoftTimeLimitExceeded`` and ``TimeLimitExceeded`` are billiard's own classes, re-exported
here so that code catching them works with tasks run by taskq or by Celery.
"""

from __future__ import annotations

import builtins
import datetime as dt
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

__all__ = [
    "BrokerBusy",
    "BrokerDatabaseError",
    "BrokerUnreachable",
    "ChordError",
    "ConfigurationError",
    "ContentDisallowed",
    "Ignore",
    "IncompleteStream",
    "InvalidTaskMessage",
    "MaxRetriesExceededError",
    "NotRegistered",
    "PoolFeatureUnsupported",
    "Reject",
    "RemoteTaskError",
    "ResultBackendError",
    "Retry",
    "SoftTimeLimitExceeded",
    "TaskPredicate",
    "TaskRevokedError",
    "TaskqError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]


class TaskqError(Exception):
    """Base class of every error taskq raises on purpose."""


class ConfigurationError(TaskqError, ValueError):
    """A setting has an unknown name or a bad value."""


class PoolFeatureUnsupported(ConfigurationError):
    """The worker's pool kind cannot do this (resize, restart, autoscale, terminate a running
    task): ``kind`` names the pool, ``feature`` what it cannot do. A configuration error, as
    the remedy is another pool (setting ``worker_pool``, option ``-P``)."""

    def __init__(self, kind: str, feature: str, instead: str = "") -> None:
        self.kind = kind
        self.feature = feature
        self.instead = instead or ("use the prefork pool (setting worker_pool='prefork', "
                                   "option -P prefork)")
        super().__init__(f"the {kind} pool cannot {feature}; {self.instead}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.kind, self.feature, self.instead))


class NotRegistered(TaskqError, KeyError):
    """The app has no task by this name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidTaskMessage(TaskqError, ValueError):
    """A message is not a valid task message; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"invalid task message: {field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.problem))


class ContentDisallowed(TaskqError):
    """A message was serialized with a content type the receiver does not accept."""


class BrokerUnreachable(TaskqError, ConnectionError):
    """The broker could not be reached within the retry policy."""


class BrokerBusy(BrokerUnreachable):
    """The embedded (SQLite) broker's database stayed locked past the busy timeout.

    A connection error: the worker reconnects and publishers retry, as for a lost broker.
    """


class BrokerDatabaseError(TaskqError):
    """The embedded broker's database file cannot be used (corrupt, unreadable, unwritable);
    the message names the file and what to do."""


class ResultBackendError(TaskqError):
    """The result backend failed or is misconfigured."""


class TimeoutError(TaskqError, builtins.TimeoutError):
    """Waiting for a result took longer than the timeout."""


class IncompleteStream(TaskqError):
    """``iterdeps()`` reached a result that is not ready, so its children are not known yet
    (``collect()`` waits for each instead; ``intermediate=True`` skips the check)."""


class TaskRevokedError(TaskqError):
    """The task was revoked before it ran."""


class TaskPredicate(TaskqError):
    """Raised from inside a task to steer the worker rather than to report a failure."""


class Retry(TaskPredicate):
    """The task asked to be retried (raised by ``Task.retry``)."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | dt.datetime | None = None,
    ) -> None:
        self.message = message
        self.exc = exc
        self.when = when
        super().__init__(message or self._describe())

    def _describe(self) -> str:
        when = f" in {self.when}s" if isinstance(self.when, int | float) else (
            f" at {self.when.isoformat()}" if isinstance(self.when, dt.datetime) else ""
        )
        reason = f": {self.exc!r}" if self.exc is not None else ""
        return f"Retry{when}{reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.exc, self.when))


class Ignore(TaskPredicate):
    """The task asked the worker not to record any state for it."""


class Reject(TaskPredicate):
    """The task asked the worker to reject its message, requeued or not."""

    def __init__(self, reason: object = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)

    def __str__(self) -> str:
        return f"Reject(requeue={self.requeue}): {self.reason}"


class MaxRetriesExceededError(TaskqError):
    """A task asked to be retried more often than its ``max_retries``."""


class ChordError(TaskqError):
    """A part of a chord's header failed (or the body could not be sent): the body's result.

    On the wire it is Celery's ``celery.exceptions.ChordError`` (see ``taskq.exc_wire``), so
    Celery clients and workers read it as their own.
    """


class WorkerLostError(TaskqError):
    """The process running a task died before reporting a result."""


class RemoteTaskError(TaskqError):
    """A task failed with an exception whose type cannot be rebuilt here.

    ``exc_type`` and ``exc_module`` name the original class; ``str()`` is its message.
    """

    def __init__(self, exc_type: str, exc_module: str | None, message: str) -> None:
        super().__init__(message)
        self.exc_type = exc_type
        self.exc_module = exc_module
        self.message = message

    def __str__(self) -> str:
        where = f"{self.exc_module}." if self.exc_module else ""
        return f"{where}{self.exc_type}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.exc_type, self.exc_module, self.message))
