"""The chaos error hierarchy.

::

    ChaosError
    ├── ScheduleError          a schedule was built or parsed from bad input
    ├── JournalError           the fault journal cannot be written or read
    ├── TargetError            a target specification is invalid (not: a target vanished)
    ├── WaitTimeout            wait_until() ran out of time (also a TimeoutError)
    ├── ProxyError             the fault proxy cannot start, or a fault spec is invalid
    └── BrokerError            a broker cannot be started, stopped or reached
        ├── BrokerNotReady     a broker did not answer its readiness check in time
        └── DockerUnavailable  no Docker engine (or no SDK) to run a containerised broker

Injectors never raise on a vanished target: they record the outcome in the journal.
These errors are for the caller's mistakes and for infrastructure that is not there.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "BrokerNotReady",
    "ChaosError",
    "DockerUnavailable",
    "JournalError",
    "ProxyError",
    "ScheduleError",
    "TargetError",
    "WaitTimeout",
]


class ChaosError(Exception):
    """Base class of every error the chaos package raises on purpose."""


class ScheduleError(ChaosError, ValueError):
    """A schedule was given an invalid argument or an unparsable spec."""


class JournalError(ChaosError):
    """The fault journal could not be written or a line could not be read."""


class TargetError(ChaosError, ValueError):
    """A target specification is invalid (a vanished target is an outcome, not an error)."""


class WaitTimeout(ChaosError, TimeoutError):
    """A condition did not become true before its deadline."""


class ProxyError(ChaosError):
    """The fault proxy could not start, or a fault was specified wrongly."""


class BrokerError(ChaosError):
    """A broker could not be started, stopped, signalled or reached."""


class BrokerNotReady(BrokerError, TimeoutError):
    """A broker did not pass its readiness check before the deadline."""


class DockerUnavailable(BrokerError):
    """No Docker engine answers, or the docker SDK is not installed."""
