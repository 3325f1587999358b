"""What every ``taskq`` command shares: the context that loads the app, ``-A``, clean errors.

``taskq.cli`` (the worker and the basic commands) and ``taskq.cli_ops`` (the cluster
commands) both build on this module; ``taskq.cli`` assembles the command line from both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from taskq.app import TaskQ
from taskq.errors import TaskqError
from taskq.loading import find_app


class Context:
    def __init__(self, config: str | None) -> None:
        self.config = config

    def load_app(self, spec: str | None) -> TaskQ:
        app = find_app(spec) if spec else TaskQ("taskq")
        if self.config:
            app.config_from_object(self.config)
        return app


def fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn taskq's own errors into a one-line message and exit code 2, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TaskqError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


app_option = click.option("-A", "--app", "app_spec", metavar="APP", envvar="TASKQ_APP",
                          help="The app: module, module:attr, or a package with an app.")
