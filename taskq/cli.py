"""The ``taskq`` command line.

Every command takes ``--config MODULE`` (settings at the code level) and reads ``TASKQ_*``
variables; flags beat both. ``taskq worker -A proj`` runs a worker.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

import click

from taskq import cli_ops
from taskq.app import TaskQ
from taskq.builtin_tasks import own_tasks
from taskq.cli_base import Context, app_option, fail_cleanly

LOG_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s %(process)d] %(name)s: %(message)s"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config", metavar="MODULE", envvar="TASKQ_CONFIG_MODULE",
              help="Load settings from this module (lowercase names, as in TaskQ(...)).")
@click.version_option(package_name="taskq", prog_name="taskq")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """taskq: a task queue that does not deadlock and does not lose work."""
    ctx.obj = Context(config)


def _setup_logging(level: str, logfile: str | None) -> None:
    handler: logging.Handler = (logging.FileHandler(logfile) if logfile
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@main.command()
@app_option
@click.option("-l", "--loglevel", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error", "critical"],
                                case_sensitive=False), help="Log level.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), help="Pool size.")
@click.option("-P", "--pool", type=click.Choice(["prefork", "solo", "threads"]),
              help="Pool: prefork (child processes, the default), solo (tasks run in the "
                   "main process, one at a time) or threads.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Prefork: threads in each child, each running a task of its own (for "
                   "I/O-bound tasks; a child's death ends all its tasks).")
@click.option("-O", "optimization", type=click.Choice(["fair", "fast"]),
              help="Prefork scheduling: fair gives a job only to an idle child (default); "
                   "fast lets each child queue a few jobs.")
@click.option("-Q", "--queues", help="Comma-separated queues to consume from.")
@click.option("-X", "--exclude-queues", help="Comma-separated queues not to consume from.")
@click.option("-n", "--hostname", help="Node name, e.g. worker1@%h.")
@click.option("--max-tasks-per-child", type=click.IntRange(min=1),
              help="Replace a prefork child after it ran this many tasks.")
@click.option("--max-memory-per-child", type=click.IntRange(min=1), help="KiB.")
@click.option("--time-limit", type=click.FloatRange(min=0),
              help="Hard time limit in seconds: the child running a task is killed and the "
                   "task fails with TimeLimitExceeded.")
@click.option("--soft-time-limit", type=click.FloatRange(min=0),
              help="Soft time limit in seconds: SoftTimeLimitExceeded is raised in the task.")
@click.option("--prefetch-multiplier", type=click.IntRange(min=0),
              help="Messages reserved per pool slot (0: no limit).")
@click.option("--autoscale", metavar="MAX,MIN", help="Grow and shrink the prefork pool.")
@click.option("--statedb", type=click.Path(dir_okay=False),
              help="File that keeps revoked task ids across restarts.")
@click.option("--pidfile", type=click.Path(dir_okay=False),
              help="Write the main process's pid here (removed at exit).")
@click.option("-f", "--logfile", type=click.Path(dir_okay=False),
              help="Log to this file instead of stderr.")
@click.option("--soft-shutdown-timeout", type=click.FloatRange(min=0),
              help="On a cold shutdown, seconds running tasks still get to finish.")
@click.option("-E", "--task-events", is_flag=True, default=None, help="Send task events.")
@click.option("--without-mingle", is_flag=True, help="Do not sync with other workers at start.")
@click.option("--without-gossip", is_flag=True, help="Do not follow other workers' heartbeats.")
@click.option("--detach", is_flag=True, help="Run in the background (needs --pidfile).")
@click.pass_obj
@fail_cleanly
def worker(ctx: Context, app_spec: str | None, loglevel: str, concurrency: int | None,
           pool: str | None, threads: int | None, optimization: str | None,
           queues: str | None,
           exclude_queues: str | None, hostname: str | None,
           max_tasks_per_child: int | None, max_memory_per_child: int | None,
           time_limit: float | None, soft_time_limit: float | None,
           prefetch_multiplier: int | None, autoscale: str | None, statedb: str | None,
           pidfile: str | None,
           logfile: str | None, soft_shutdown_timeout: float | None, task_events: bool | None,
           without_mingle: bool, without_gossip: bool, detach: bool) -> None:
    """Run a worker."""
    from taskq.worker import Worker

    app = ctx.load_app(app_spec)
    flags = {
        "worker_concurrency": concurrency, "worker_pool": pool, "worker_threads": threads,
        "worker_optimization": optimization, "worker_max_tasks_per_child": max_tasks_per_child,
        "worker_max_memory_per_child": max_memory_per_child, "task_time_limit": time_limit,
        "task_soft_time_limit": soft_time_limit,
        "worker_prefetch_multiplier": prefetch_multiplier, "worker_hostname": hostname,
        "worker_soft_shutdown_timeout": soft_shutdown_timeout,
        "worker_send_task_events": task_events or None,
    }
    app.conf.override({k: v for k, v in flags.items() if v is not None})
    if detach:
        if not pidfile:
            raise click.UsageError("--detach needs --pidfile so the worker can be found")
        _daemonize(logfile)
    _setup_logging(loglevel, logfile)
    if pidfile:
        _write_pidfile(pidfile)
    try:
        w = Worker(app, queues=_split(queues), exclude_queues=_split(exclude_queues),
                   statedb=statedb, mingle=not without_mingle, gossip=not without_gossip)
        if autoscale:
            try:
                high, low = (int(v) for v in autoscale.split(","))
            except ValueError:
                raise click.BadParameter(f"--autoscale {autoscale!r}: expected MAX,MIN such "
                                         "as 10,3") from None
            w.autoscale = (high, low)
        _print_banner(app, w)
        code = w.run()
    finally:
        if pidfile:
            _remove_pidfile(pidfile)
    if w.restart_requested and code == 0:
        logging.getLogger("taskq.worker").warning("restarting in place: %s",
                                                  " ".join(sys.orig_argv))
        os.execv(sys.executable, sys.orig_argv)
    sys.exit(code)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _print_banner(app: TaskQ, w: Any) -> None:
    from taskq.embedded import result_backend_url, uses_embedded_broker
    from taskq.publish import broker_url
    from taskq.urls import safe_url

    results = result_backend_url(app.conf)
    broker = safe_url(broker_url(app.conf))
    if uses_embedded_broker(app.conf):
        broker += " (embedded; set broker_url for RabbitMQ or Redis)"
    lines = [
        f"taskq worker {w.hostname}",
        f"  app:         {app.main}",
        f"  broker:      {broker}",
        f"  results:     {safe_url(results) if results else 'disabled'}",
        f"  pool:        {w.pool_kind} x {w.concurrency}"
        + (f" x {app.conf.worker_threads} threads" if app.conf.worker_threads > 1 else "")
        + f" ({app.conf.worker_optimization})",
        f"  queues:      {', '.join(q.name for q in w.consumer.queues)}",
        f"  tasks:       {', '.join(own_tasks(app)) or '(none)'}",
    ]
    click.echo("\n".join(lines), err=True)


def _write_pidfile(path: str) -> None:
    try:
        with open(path, encoding="ascii") as fh:
            old = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        old = 0
    if old and _alive(old):
        raise click.ClickException(f"pidfile {path} names a running process ({old}); stop it "
                                   "first or use another --pidfile")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(f"{os.getpid()}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_pidfile(path: str) -> None:
    try:
        with open(path, encoding="ascii") as fh:
            if int(fh.read().strip() or 0) == os.getpid():
                os.unlink(path)
    except (OSError, ValueError):
        pass


def _daemonize(logfile: str | None) -> None:
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    out = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if logfile else devnull
    os.dup2(out, 1)
    os.dup2(out, 2)


@main.command()
@app_option
@click.option("-Q", "--queues", help="Comma-separated queues (default: the default queue).")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@fail_cleanly
def purge(ctx: Context, app_spec: str | None, queues: str | None, force: bool) -> None:
    """Delete every waiting message from the queues."""
    from taskq.publish import queue_for

    app = ctx.load_app(app_spec)
    names = _split(queues) or [app.conf.task_default_queue]
    if not force:
        click.confirm(f"Delete all messages waiting in {', '.join(names)}?", abort=True)
    total = 0
    with app.connection() as conn:
        for name in names:
            total += queue_for(app.conf, name)(conn.default_channel).purge() or 0
    click.echo(f"purged {total} messages from {', '.join(names)}")


@main.command()
@app_option
@click.argument("name")
@click.option("--args", "args_json", default="[]", help="JSON list of positional arguments.")
@click.option("--kwargs", "kwargs_json", default="{}", help="JSON object of keyword arguments.")
@click.option("--countdown", type=float, help="Run no earlier than this many seconds from now.")
@click.option("--queue", help="Send to this queue instead of the task's default route.")
@click.pass_obj
@fail_cleanly
def call(ctx: Context, app_spec: str | None, name: str, args_json: str, kwargs_json: str,
         countdown: float | None, queue: str | None) -> None:
    """Send task NAME and print its id."""
    app = ctx.load_app(app_spec)
    try:
        args, kwargs = json.loads(args_json), json.loads(kwargs_json)
    except ValueError as exc:
        raise click.BadParameter(f"--args/--kwargs must be JSON: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args must be a JSON list and --kwargs a JSON object")
    result = app.send_task(name, args, kwargs, countdown=countdown, queue=queue)
    click.echo(result.id)


@main.command()
@app_option
@click.argument("task_id")
@click.option("--wait", "timeout", type=float, default=None, help="Wait up to this many s.")
@click.option("--traceback", "show_tb", is_flag=True,
              help="Print the task's traceback when it failed.")
@click.pass_obj
@fail_cleanly
def result(ctx: Context, app_spec: str | None, task_id: str, timeout: float | None,
           show_tb: bool) -> None:
    """Print the state and result of TASK_ID."""
    app = ctx.load_app(app_spec)
    res = app.AsyncResult(task_id)
    if timeout is not None:
        res.get(timeout=timeout, propagate=False)
    click.echo(f"{res.state} {res.result!r}")
    if show_tb and res.traceback:
        click.echo(res.traceback)


@main.group()
def graph() -> None:
    """Print graphs (Graphviz dot)."""


@graph.command()
@app_option
@click.pass_obj
@fail_cleanly
def bootsteps(ctx: Context, app_spec: str | None) -> None:
    """The worker's steps and their dependencies."""
    from taskq.worker.steps import to_dot
    from taskq.worker.worker import default_steps

    steps = default_steps()
    if app_spec:
        steps += ctx.load_app(app_spec).steps
    click.echo(to_dot(steps), nl=False)


# The cluster commands live in cli_ops; the command line is assembled here, in one direction.
for _command in (cli_ops.inspect, cli_ops.control, cli_ops.status, cli_ops.events,
                 cli_ops.multi):
    main.add_command(_command)
graph.add_command(cli_ops.workers)

if __name__ == "__main__":  # pragma: no cover - `python -m taskq.cli`
    main()
