"""The faults a suite names (``[[faults]]`` in its TOML), built from chaos's injectors.

Kinds (each with a ``schedule`` in chaos's syntax, e.g. ``"poisson {kill_rate}/s"``):

- ``kill-children``: SIGKILL (or ``signal = "SEGV"`` ...) a random pool child of the worker;
- ``kill-main``: SIGKILL the worker's main process; the cell starts a new worker;
- ``terminate-worker``: SIGTERM the worker (warm shutdown under load); a new one starts;
- ``cut-connections``: close every broker connection through the fault proxy;
- ``blackhole``: the proxy accepts but forwards nothing for ``duration`` seconds;
- ``restart-broker``: a clean restart of the cell's private ``redis-server`` (the shared
  brokers are never restarted), its data kept (AOF, fsync always);
- ``freeze-children``: SIGSTOP a random pool child, SIGCONT it ``duration`` seconds later;
- ``reset-connections``: RST every broker connection through the fault proxy;
- ``latency``: the proxy delays every chunk by ``ms`` milliseconds for ``duration`` seconds;
- ``kill-running``: SIGKILL a pool child that is running a task (from the ledger; it waits up
  to 2 s for one), journaled as a child kill;
- ``hup-worker``: SIGHUP the worker (a warm restart that re-executes itself, same pid);
- ``cold-shutdown``: SIGQUIT the worker (cold shutdown: running tasks are not waited for);
  a new one starts;
- ``control``: a monitor's remote-control traffic (``ping``, ``stats``) to the workers,
  straight to the broker (``stress.control_traffic``): the replies come from the worker's
  event loop, whatever the other faults do to its connection.

With a fleet (several workers on one broker), the main-process faults pick one of them.

The targets follow the worker across restarts: they ask the cell for the current main pid.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

from chaos import (
    Blackhole,
    Broker,
    BrokerFault,
    ChaosError,
    CutConnections,
    FaultProxy,
    Freeze,
    Injector,
    Journal,
    Kill,
    Latency,
    ProcessRef,
    Runner,
    TimedFault,
    parse_schedule,
)
from chaos.targets import child_pids
from stress.control_traffic import ControlTraffic
from stress.errors import ScenarioError

__all__ = ["KINDS", "MAIN_SIGNALS", "NEEDS_PRIVATE_BROKER", "NEEDS_PROXY", "RESTARTS_WORKER",
           "build_runners"]

KINDS = ("kill-children", "kill-main", "terminate-worker", "cut-connections", "blackhole",
         "restart-broker", "freeze-children", "reset-connections", "latency", "kill-running",
         "hup-worker", "cold-shutdown", "control")
NEEDS_PROXY = {"cut-connections", "blackhole", "reset-connections", "latency"}
NEEDS_PRIVATE_BROKER = {"restart-broker"}
RESTARTS_WORKER = {"kill-main", "terminate-worker", "cold-shutdown"}
MAIN_SIGNALS = {"kill-main": "KILL", "terminate-worker": "TERM", "hup-worker": "HUP",
                "cold-shutdown": "QUIT"}

MainPid = Callable[[], int | None]
MainPids = Callable[[], list[int]]
RunningPids = Callable[[], set[int]]
Nodes = Callable[[], list[str]]


class WorkerProcesses:
    """The current worker's pool children (or, with ``main``, its main process): the pid is
    asked of the cell at each injection, so targets follow the worker across restarts."""

    def __init__(self, main_pid: MainPid, *, main: bool = False,
                 main_pids: MainPids | None = None, running: RunningPids | None = None,
                 wait: float = 2.0) -> None:
        self.main_pid = main_pid
        self.main = main
        self.main_pids = main_pids
        self.running = running
        self.wait = wait

    def describe(self) -> str:
        if self.running is not None:
            return "worker children running a task"
        return "worker main" if self.main else "worker children"

    def _mains(self) -> list[int]:
        if self.main_pids is not None:
            return self.main_pids()
        pid = self.main_pid()
        return [pid] if pid else []

    def candidates(self) -> list[int]:
        mains = self._mains()
        if self.main:
            return mains
        children = [c for pid in mains for c in child_pids(pid)]
        if self.running is None:
            return children
        deadline = time.monotonic() + self.wait
        while True:  # aimed: only a child the ledger shows running a task
            busy = self.running()
            aimed = [c for c in children if c in busy]
            if aimed or time.monotonic() >= deadline:
                return aimed
            time.sleep(0.05)
            children = [c for pid in self._mains() for c in child_pids(pid)]

    def resolve(self, pid: int) -> ProcessRef | None:
        return ProcessRef.of(pid)


def _format(text: str, cell: Mapping[str, Any]) -> str:
    try:
        return text.format(**cell)
    except (KeyError, ValueError) as exc:
        raise ScenarioError(f"fault schedule {text!r}: cannot fill in {exc}; use matrix axes "
                            "such as {kill_rate}") from None


def build_runners(faults: list[dict[str, Any]], cell: Mapping[str, Any], *, seed: int,
                  duration: float, journal: Journal, main_pid: MainPid,
                  proxy: FaultProxy | None, broker: Broker | None = None,
                  main_pids: MainPids | None = None,
                  running: RunningPids | None = None,
                  monitor: tuple[str, dict[str, Any], Nodes] | None = None) -> list[Runner]:
    """One chaos Runner per fault, limited to the publishing window. ``main_pids``: every
    worker of a fleet (main-process faults pick one); ``running``: the pids the ledger shows
    running a task (for ``kill-running``); ``monitor``: the broker's URL and transport
    options, and the workers' node names (for ``control``)."""
    runners = []
    for n, fault in enumerate(faults):
        kind = fault["kind"]
        template = str(fault.get("schedule", "every 1s"))
        if "{kill_rate}" in template and not cell.get("kill_rate"):
            continue  # kill_rate=0: this cell runs without the fault (a baseline)
        spec = _format(template, cell)
        if " until " not in spec:
            spec += f" until {duration}s"
        try:
            schedule = parse_schedule(spec, seed=seed + n)
        except ChaosError as exc:
            raise ScenarioError(f"fault {kind!r}: {exc}") from None
        sig = fault.get("signal", "KILL")
        injector: Injector
        if kind in ("kill-children", "kill-main", "terminate-worker"):
            targets = WorkerProcesses(main_pid, main=kind != "kill-children",
                                      main_pids=main_pids)
            injector = Kill(targets, signal=signal.SIGTERM if kind == "terminate-worker" else sig,
                            seed=seed + n, journal=journal,
                            kind="kill-child" if kind == "kill-children" else kind)
        elif kind == "kill-running":
            if running is None:
                raise ScenarioError("fault 'kill-running' needs the cell's ledger")
            targets = WorkerProcesses(main_pid, main_pids=main_pids, running=running)
            injector = Kill(targets, signal=sig, seed=seed + n, journal=journal,
                            kind="kill-child")
        elif kind in ("hup-worker", "cold-shutdown"):
            targets = WorkerProcesses(main_pid, main=True, main_pids=main_pids)
            injector = Kill(targets, signal=MAIN_SIGNALS[kind], seed=seed + n, journal=journal,
                            kind=kind)
        elif kind == "freeze-children":
            injector = Freeze(WorkerProcesses(main_pid), duration=float(fault.get("duration", 2.0)),
                              seed=seed + n, journal=journal)
        elif kind in NEEDS_PRIVATE_BROKER:
            if broker is None:
                raise ScenarioError(f"fault {kind!r} needs the cell's private broker")
            injector = BrokerFault(broker, "restart", journal=journal)
        elif kind in NEEDS_PROXY:
            if proxy is None:
                raise ScenarioError(f"fault {kind!r} needs the fault proxy")
            if kind in ("cut-connections", "reset-connections"):
                injector = CutConnections(proxy, reset=kind == "reset-connections",
                                          journal=journal)
            elif kind == "latency":
                injector = TimedFault(proxy, Latency(float(fault.get("ms", 200.0))),
                                      journal=journal, duration=float(fault.get("duration", 3.0)))
            else:
                injector = TimedFault(proxy, Blackhole(), journal=journal,
                                      duration=float(fault.get("duration", 3.0)))
        elif kind == "control":
            if monitor is None:
                raise ScenarioError("fault 'control' needs the cell's broker and node names")
            url, options, nodes = monitor
            injector = ControlTraffic(url, nodes, transport_options=options, journal=journal,
                                      timeout=float(fault.get("timeout", 1.0)))
        else:  # pragma: no cover - load_suite checked the kind
            raise ScenarioError(f"unknown fault kind {kind!r}")
        runners.append(Runner(schedule, injector, name=f"stress-{kind}"))
    return runners
