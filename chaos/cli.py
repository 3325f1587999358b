"""``python -m chaos`` (and ``taskq-stress chaos``): inject faults by hand.

Each command prints the journal as it goes, one JSON line per injection::

    python -m chaos kill --pid 4242 --children --signal KILL --schedule "every 1s" \\
        --duration 10 --seed 1 --journal faults.jsonl
    python -m chaos freeze --pid 4242 --children --for 2s --schedule "every 5s" --duration 30
    python -m chaos proxy --listen 127.0.0.1:16379 --upstream 127.0.0.1:6379 \\
        --api 127.0.0.1:8474 --cut-schedule "every 10s"
    python -m chaos bench-kill --processes 2000
    python -m chaos journal faults.jsonl
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from chaos.errors import ChaosError
from chaos.injector import Injector
from chaos.journal import FaultRecord, Journal, iter_journal
from chaos.process import Freeze, Kill, parse_signal
from chaos.proxy import FaultProxy
from chaos.proxy_api import ProxyAPI
from chaos.proxy_injectors import CutConnections
from chaos.runner import Runner
from chaos.schedule import Schedule, parse_duration, parse_schedule
from chaos.targets import ChildrenOf, Pids, Targets, child_pids
from chaos.waiting import wait_until

__all__ = ["cli"]


def _echo_record(record: FaultRecord) -> None:
    click.echo(record.to_json())


def _schedule(spec: str, seed: int, duration: float | None) -> Schedule:
    try:
        schedule = parse_schedule(spec, seed=seed)
    except ChaosError as exc:
        raise click.BadParameter(str(exc), param_hint="--schedule") from None
    return schedule if duration is None else schedule.until(duration)


def _duration(value: str | None, hint: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ChaosError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _targets(pid: int, children: bool, recursive: bool) -> Targets:
    try:
        if children or recursive:
            return ChildrenOf(pid, recursive=recursive)
        return Pids([pid])
    except ChaosError as exc:
        raise click.BadParameter(str(exc), param_hint="--pid") from None


@contextmanager
def _journal(path: str | None, quiet: bool = False) -> Iterator[Journal]:
    with Journal(path) as journal:
        if not quiet:
            journal.subscribe(_echo_record)
        yield journal


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so ``kill PID`` also stops cleanly (thaws, closes).

    Only possible in the main thread; elsewhere (a test runner's thread) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(runner: Runner, *, linger: Callable[[], bool] | None = None) -> None:
    """Run in the foreground; Ctrl-C or SIGTERM stops cleanly (and thaws what is frozen).

    After the schedule ends, keep going while ``linger()`` is true (a freeze in effect).
    """
    with _sigterm_interrupts():
        runner.start()
        try:
            while not runner.join(timeout=0.2):
                pass
            while linger is not None and linger():
                time.sleep(0.05)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
        finally:
            runner.stop()


@click.group(name="chaos", context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Fault injectors: kill and freeze processes, break connections through a proxy."""


_common = [
    click.option("--pid", type=int, required=True, help="The target, or the parent of targets."),
    click.option("--children", is_flag=True, help="Target PID's children, not PID itself."),
    click.option("--recursive", is_flag=True, help="Target PID's whole subtree."),
    click.option("--count", type=int, default=1, show_default=True, help="Targets per injection."),
    click.option("--fraction", type=float, help="Hit this fraction of the targets instead."),
    click.option(
        "--schedule",
        "schedule_spec",
        default="every 1s",
        show_default=True,
        help="'every 1s', 'rate 100/s', 'poisson 5/s', 'at 1,2', 'burst 5 every 10s'.",
    ),
    click.option("--duration", help="Stop after this long (e.g. 10s); default: until Ctrl-C."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seeds times and choices."),
    click.option(
        "--journal",
        "journal_path",
        type=click.Path(dir_okay=False),
        help="Append JSON lines to this file too.",
    ),
]


def _with_common(fn: click.decorators.FC) -> click.decorators.FC:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@cli.command()
@_with_common
@click.option(
    "--signal",
    "signame",
    default="KILL",
    show_default=True,
    help="KILL, TERM, SEGV, ABRT, ... or a number.",
)
def kill(
    pid: int,
    children: bool,
    recursive: bool,
    count: int,
    fraction: float | None,
    schedule_spec: str,
    duration: str | None,
    seed: int,
    journal_path: str | None,
    signame: str,
) -> None:
    """Send a signal to PID (or its children) on a schedule."""
    schedule = _schedule(schedule_spec, seed, _duration(duration, "--duration"))
    targets = _targets(pid, children, recursive)
    with _journal(journal_path) as journal:
        try:
            injector = Kill(
                targets, signal=signame, count=count, fraction=fraction, seed=seed, journal=journal
            )
        except ChaosError as exc:
            raise click.UsageError(str(exc)) from None
        _run(Runner(schedule, injector))


@cli.command()
@_with_common
@click.option("--for", "hold", default="1s", show_default=True, help="How long each freeze lasts.")
def freeze(
    pid: int,
    children: bool,
    recursive: bool,
    count: int,
    fraction: float | None,
    schedule_spec: str,
    duration: str | None,
    seed: int,
    journal_path: str | None,
    hold: str,
) -> None:
    """SIGSTOP PID (or its children) on a schedule; SIGCONT each after --for.

    Exits once the schedule is over and the last freeze has thawed (or on Ctrl-C/SIGTERM,
    thawing at once).
    """
    schedule = _schedule(schedule_spec, seed, _duration(duration, "--duration"))
    targets = _targets(pid, children, recursive)
    with _journal(journal_path) as journal:
        injector = Freeze(
            targets,
            duration=_duration(hold, "--for") or 1.0,
            count=count,
            fraction=fraction,
            seed=seed,
            journal=journal,
        )
        _run(Runner(schedule, injector), linger=lambda: bool(injector.frozen))


@cli.command()
@click.option("--listen", default="127.0.0.1:0", show_default=True, help="Where clients connect.")
@click.option("--upstream", required=True, help="The broker, e.g. 127.0.0.1:6379.")
@click.option("--api", "api_address", help="Serve the HTTP/JSON control API here.")
@click.option("--cut-schedule", help="Also cut every connection on this schedule.")
@click.option("--duration", help="Exit after this long; default: until Ctrl-C.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the proxy's random choices and the cut schedule.")
@click.option("--journal", "journal_path", type=click.Path(dir_okay=False),
              help="Append JSON lines to this file too.")
def proxy(
    listen: str,
    upstream: str,
    api_address: str | None,
    cut_schedule: str | None,
    duration: str | None,
    seed: int,
    journal_path: str | None,
) -> None:
    """Run a fault proxy in front of a broker."""
    limit = _duration(duration, "--duration")
    with _journal(journal_path) as journal:
        try:
            fault_proxy = FaultProxy(upstream, listen=listen, journal=journal, seed=seed).start()
        except ChaosError as exc:
            raise click.UsageError(str(exc)) from None
        api = ProxyAPI(fault_proxy, api_address).start() if api_address else None
        click.echo(
            json.dumps(
                {
                    "listen": fault_proxy.address,
                    "upstream": upstream,
                    "api": api.url if api else None,
                }
            )
        )
        injectors: list[Injector] = [CutConnections(fault_proxy, journal=journal)]
        schedule = _schedule(cut_schedule, seed, limit) if cut_schedule else None
        stop = threading.Event()
        try:
            if schedule is not None:
                _run(Runner(schedule, injectors))
            else:
                with _sigterm_interrupts():
                    stop.wait(limit)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
        finally:
            if api is not None:
                api.stop()
            fault_proxy.stop()


@cli.command("journal")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def show_journal(path: str) -> None:
    """Print a journal file, one record per line."""
    for record in iter_journal(path):
        click.echo(record.to_json())


_SPAWNER = """
import os, signal, sys
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps: killed sleeps vanish at once
for _ in range(int(sys.argv[1])):
    os.posix_spawn("/bin/sleep", ["sleep", "3600"], os.environ)
sys.stdin.read()
"""


@cli.command("bench-kill")
@click.option("--processes", type=int, default=2000, show_default=True,
              help="How many sleep processes to spawn and kill.")
@click.option("--signal", "signame", default="KILL", show_default=True,
              help="KILL, TERM, SEGV, ABRT, ... or a number.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds which child each injection picks.")
def bench_kill(processes: int, signame: str, seed: int) -> None:
    """Measure the kill rate against PROCESSES pre-spawned `sleep` processes.

    One injection per victim, each choosing a random child of the spawner, checking its
    identity through a pidfd, signalling it and journaling the result (to a temp file).
    """
    if processes < 1:
        raise click.BadParameter("must be at least 1", param_hint="--processes")
    sig = parse_signal(signame)
    spawner = subprocess.Popen(
        [sys.executable, "-c", _SPAWNER, str(processes)],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        t0 = time.monotonic()
        wait_until(
            lambda: len(child_pids(spawner.pid)) >= processes,
            300,
            what=f"{processes} sleep processes",
        )
        click.echo(f"spawned {processes} processes in {time.monotonic() - t0:.2f} s")
        with tempfile.TemporaryDirectory(prefix="chaos-bench-") as tmp:
            with Journal(Path(tmp) / "journal.jsonl") as journal:
                injector = Kill(ChildrenOf(spawner.pid), signal=sig, seed=seed, journal=journal)
                start = time.perf_counter()
                records = [injector.inject() for _ in range(processes)]
                elapsed = time.perf_counter() - start
            hits = sum(1 for r in records if r.outcome == "ok")
        click.echo(
            f"sent {hits} {sig.name} in {elapsed:.3f} s: "
            f"{hits / elapsed:,.0f} signals/s ({elapsed / processes * 1e6:.0f} us each)"
        )
        if sig == signal.SIGKILL:
            wait_until(lambda: not child_pids(spawner.pid), 30, what="every victim to be gone")
            click.echo(f"all {processes} victims are gone")
    finally:
        os.killpg(spawner.pid, signal.SIGKILL)
        spawner.wait()
        if spawner.stdin is not None:
            spawner.stdin.close()
