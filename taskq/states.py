"""Task states, with Celery's names and meanings."""

from __future__ import annotations

PENDING = "PENDING"    # unknown to the backend: not yet run, or the result expired
RECEIVED = "RECEIVED"  # a worker holds the message
STARTED = "STARTED"    # a child began running it (stored when task_track_started is on)
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
RETRY = "RETRY"        # it failed and was published again for a later attempt
REVOKED = "REVOKED"
REJECTED = "REJECTED"  # its message was rejected without requeue

ALL_STATES = frozenset({PENDING, RECEIVED, STARTED, SUCCESS, FAILURE, RETRY, REVOKED, REJECTED})
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED, REJECTED})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED, REJECTED})
PROPAGATE_STATES = frozenset({FAILURE, REVOKED, REJECTED})
