"""taskq-stress's errors: each means the run could not be carried out (exit code 2).

    StressError
    ├── ScenarioError   a suite file, matrix or --cell value is wrong
    └── RunnerError     a broker is unreachable, the worker would not start, ...

An oracle that fails is not an error: it is a verdict (exit code 1).
"""

from __future__ import annotations

__all__ = ["RunnerError", "ScenarioError", "StressError"]


class StressError(Exception):
    """The run itself could not be carried out."""


class ScenarioError(StressError):
    """A suite file, a matrix or a --cell value is wrong; the message says which and how."""


class RunnerError(StressError):
    """Something the run needs is missing: a broker, a worker that starts, a free port."""
