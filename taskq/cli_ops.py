"""``taskq inspect``, ``control``, ``status``, ``events``, ``graph workers`` and ``multi``.

The commands are plain click commands; ``taskq.cli`` adds them to its groups.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from taskq.cli_base import Context, app_option, fail_cleanly

INSPECT_COMMANDS = ("active", "reserved", "scheduled", "revoked", "registered", "stats",
                    "conf", "clock", "active_queues", "query_task", "report", "ping")
CONTROL_COMMANDS = ("revoke", "terminate", "shutdown", "pool_grow", "pool_shrink", "autoscale",
                    "pool_restart", "add_consumer", "cancel_consumer", "time_limit",
                    "enable_events", "disable_events", "rate_limit", "heartbeat")


def _destination(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _print_replies(replies: list[dict[str, Any]], as_json: bool) -> None:
    merged: dict[str, Any] = {}
    for reply in replies:
        merged.update(reply)
    if as_json:
        click.echo(json.dumps(merged, indent=2, sort_keys=True, default=repr))
        return
    if not merged:
        click.echo("no workers replied", err=True)
        sys.exit(1)
    for node, answer in sorted(merged.items()):
        click.echo(f"-> {node}:")
        text = json.dumps(answer, indent=2, sort_keys=True, default=repr)
        click.echo("\n".join("    " + line for line in text.splitlines()))
    click.echo(f"\n{len(merged)} node{'s' if len(merged) != 1 else ''} online.")


def _parse_args(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _remote_command(choices: tuple[str, ...]) -> Callable[[Callable[..., Any]], Any]:
    """The options ``inspect`` and ``control`` share."""

    def decorate(fn: Callable[..., Any]) -> Any:
        for option in reversed([
            click.command(name=fn.__name__), app_option,
            click.argument("command", type=click.Choice(choices)),
            click.argument("arguments", nargs=-1),
            click.option("-d", "--destination", help="Comma-separated node names."),
            click.option("-t", "--timeout", type=float, default=1.0, show_default=True,
                         help="Seconds to wait for the workers' replies."),
            click.option("-j", "--json", "as_json", is_flag=True,
                         help="Print the replies as JSON."),
            click.pass_obj, fail_cleanly,
        ]):
            fn = option(fn)  # type: ignore[operator]
        return fn

    return decorate


@_remote_command(INSPECT_COMMANDS)
def inspect(ctx: Context, app_spec: str | None, command: str, arguments: tuple[str, ...],
            destination: str | None, timeout: float, as_json: bool) -> None:
    """Ask workers about themselves (Celery's inspect commands)."""
    app = ctx.load_app(app_spec)
    args = _parse_args(arguments)
    if command == "query_task" and arguments and "=" not in arguments[0]:
        args = {"ids": list(arguments)}
    replies = app.control.broadcast(command, args, destination=_destination(destination),
                                    reply=True, timeout=timeout) or []
    _print_replies(replies, as_json)


@_remote_command(CONTROL_COMMANDS)
def control(ctx: Context, app_spec: str | None, command: str, arguments: tuple[str, ...],
            destination: str | None, timeout: float, as_json: bool) -> None:
    """Steer workers: revoke ID [terminate=true signal=SIGKILL], pool_grow n=1, ..."""
    app = ctx.load_app(app_spec)
    args = _parse_args(tuple(a for a in arguments if "=" in a))
    positional = [a for a in arguments if "=" not in a]
    if command == "revoke":
        if not positional:
            raise click.UsageError("revoke needs at least one task id")
        args["task_id"] = positional
    elif command in {"add_consumer", "cancel_consumer"} and positional:
        args["queue"] = positional[0]
    elif command in {"pool_grow", "pool_shrink"} and positional:
        args["n"] = int(positional[0])
    elif command == "time_limit" and positional:
        args["task_name"] = positional[0]
    replies = app.control.broadcast(command, args, destination=_destination(destination),
                                    reply=True, timeout=timeout) or []
    _print_replies(replies, as_json)


@click.command()
@app_option
@click.option("-t", "--timeout", type=float, default=1.0, show_default=True,
              help="Seconds to wait for the workers' replies.")
@click.pass_obj
@fail_cleanly
def status(ctx: Context, app_spec: str | None, timeout: float) -> None:
    """List the workers that answer a ping."""
    app = ctx.load_app(app_spec)
    nodes = sorted(node for reply in app.control.ping(timeout=timeout) for node in reply)
    for node in nodes:
        click.echo(f"{node}: OK")
    click.echo(f"\n{len(nodes)} node{'s' if len(nodes) != 1 else ''} online.")
    if not nodes:
        sys.exit(1)


@click.command()
@app_option
@click.option("--dump", is_flag=True, help="Print every raw event as JSON.")
@click.option("--duration", type=float, default=None, help="Stop after this many seconds.")
@click.pass_obj
@fail_cleanly
def events(ctx: Context, app_spec: str | None, dump: bool, duration: float | None) -> None:
    """Watch the cluster's events (a live view, or --dump for raw events)."""
    from taskq.events import EventReceiver, State

    app = ctx.load_app(app_spec)
    state = State()
    last_draw = [0.0]

    def on_event(event: dict[str, Any]) -> None:
        state.event(event)
        if dump:
            click.echo(json.dumps(event, sort_keys=True, default=repr))
        elif time.monotonic() - last_draw[0] > 0.5:
            last_draw[0] = time.monotonic()
            _draw(state)

    # Ctrl-C / SIGTERM end the capture between two reads: a KeyboardInterrupt raised inside
    # kombu's read leaves the connection mid-reply, and closing it then could wait forever.
    stopping: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: stopping.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with app.connection() as conn, \
                EventReceiver(conn, handlers={"*": on_event}, clock=app.clock) as receiver:
            receiver.capture(timeout=duration, stop=lambda: bool(stopping))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not dump:
        _draw(state)


def _draw(state: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    workers = Table(title="workers")
    for column in ("hostname", "alive", "active", "processed", "clock"):
        workers.add_column(column)
    now = time.time()
    for w in sorted(state.workers.values(), key=lambda w: w.hostname):
        workers.add_row(w.hostname, "yes" if w.alive(now) else "no", str(w.active),
                        str(w.processed), str(w.clock))
    tasks = Table(title="recent tasks")
    for column in ("uuid", "name", "state", "hostname", "runtime"):
        tasks.add_column(column)
    for t in list(state.tasks.values())[-15:]:
        tasks.add_row(t.uuid, t.name or "", t.state, t.hostname or "",
                      f"{t.runtime:.3f}" if isinstance(t.runtime, float) else "")
    console.clear()
    console.print(workers)
    console.print(tasks)


@click.command()
@app_option
@click.option("-t", "--timeout", type=float, default=1.0, show_default=True,
              help="Seconds to wait for the workers' replies.")
@click.pass_obj
@fail_cleanly
def workers(ctx: Context, app_spec: str | None, timeout: float) -> None:
    """The workers that answer, with their queues, in Graphviz dot."""
    app = ctx.load_app(app_spec)
    replies = app.control.broadcast("active_queues", reply=True, timeout=timeout) or []
    lines = ['digraph "workers" {', "  node [fontname=\"sans\"];"]
    for reply in replies:
        for node, queues in reply.items():
            lines.append(f'  "{node}" [shape=box];')
            for queue in queues if isinstance(queues, list) else []:
                lines.append(f'  "{queue["name"]}" [shape=ellipse];')
                lines.append(f'  "{queue["name"]}" -> "{node}";')
    lines.append("}")
    click.echo("\n".join(lines))


# -- multi ------------------------------------------------------------------------------------

@click.group()
def multi() -> None:
    """Run several named workers on this host, with pidfiles and logfiles."""


def _names(count: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(1, count + 1)]


def _pidfile(folder: str, name: str) -> str:
    return os.path.join(folder, f"{name}.pid")


@multi.command("start")
@click.argument("count", type=click.IntRange(min=1))
@click.option("--prefix", default="w", show_default=True,
              help="Node names are PREFIX1, PREFIX2, ...")
@click.option("--folder", default=".", show_default=True, help="Where pid and log files go.")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
def multi_start(count: int, prefix: str, folder: str, worker_args: tuple[str, ...]) -> None:
    """Start COUNT workers: taskq multi start 3 -- -A proj -c 2."""
    os.makedirs(folder, exist_ok=True)
    for name in _names(count, prefix):
        pidfile = _pidfile(folder, name)
        cmd = [sys.executable, "-m", "taskq", "worker",
               "-n", f"{name}@%h",
               "--pidfile", pidfile, "--logfile", os.path.join(folder, f"{name}.log"),
               "--detach", *worker_args]
        subprocess.run(cmd, check=True)
        click.echo(f"started {name} (pidfile {pidfile})")


def _stop(count: int, prefix: str, folder: str, sig: int, wait: float) -> None:
    for name in _names(count, prefix):
        pidfile = _pidfile(folder, name)
        try:
            with open(pidfile, encoding="ascii") as fh:
                pid = int(fh.read().strip())
        except (OSError, ValueError):
            click.echo(f"{name}: not running (no pidfile)")
            continue
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            click.echo(f"{name}: not running (stale pidfile)")
            continue
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            click.echo(f"{name}: still running after {wait:.0f} s", err=True)
            continue
        click.echo(f"stopped {name}")


@multi.command("stop")
@click.argument("count", type=click.IntRange(min=1))
@click.option("--prefix", default="w", show_default=True,
              help="Node names are PREFIX1, PREFIX2, ...")
@click.option("--folder", default=".", show_default=True,
              help="Where the pid and log files are.")
@click.option("--wait", type=float, default=60.0, show_default=True,
              help="Seconds to wait for each worker to exit.")
def multi_stop(count: int, prefix: str, folder: str, wait: float) -> None:
    """Warm-stop the workers (SIGTERM) and wait for them."""
    _stop(count, prefix, folder, signal.SIGTERM, wait)


@multi.command("restart")
@click.argument("count", type=click.IntRange(min=1))
@click.option("--prefix", default="w", show_default=True,
              help="Node names are PREFIX1, PREFIX2, ...")
@click.option("--folder", default=".", show_default=True,
              help="Where the pid and log files are.")
@click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def multi_restart(ctx: click.Context, count: int, prefix: str, folder: str,
                  worker_args: tuple[str, ...]) -> None:
    """Stop, then start again."""
    _stop(count, prefix, folder, signal.SIGTERM, 60.0)
    ctx.invoke(multi_start, count=count, prefix=prefix, folder=folder, worker_args=worker_args)
