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
- ``latency``: the proxy delays every chunk by ``ms`` milliseconds for ``duration`` seconds.

The targets follow the worker across restarts: they ask the cell for the current main pid.
"""

from __future__ import annotations

import signal
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
from stress.errors import ScenarioError

__all__ = ["KINDS", "NEEDS_PRIVATE_BROKER", "NEEDS_PROXY", "RESTARTS_WORKER", "build_runners"]

KINDS = ("kill-children", "kill-main", "terminate-worker", "cut-connections", "blackhole",
         "restart-broker", "freeze-children", "reset-connections", "latency")
NEEDS_PROXY = {"cut-connections", "blackhole", "reset-connections", "latency"}
NEEDS_PRIVATE_BROKER = {"restart-broker"}
RESTARTS_WORKER = {"kill-main", "terminate-worker"}

MainPid = Callable[[], int | None]


class WorkerProcesses:
    """The current worker's pool children (or, with ``main``, its main process): the pid is
    asked of the cell at each injection, so targets follow the worker across restarts."""

    def __init__(self, main_pid: MainPid, *, main: bool = False) -> None:
        self.main_pid = main_pid
        self.main = main

    def describe(self) -> str:
        return "worker main" if self.main else "worker children"

    def candidates(self) -> list[int]:
        pid = self.main_pid()
        if not pid:
            return []
        return [pid] if self.main else child_pids(pid)

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
                  proxy: FaultProxy | None, broker: Broker | None = None) -> list[Runner]:
    """One chaos Runner per fault, limited to the publishing window."""
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
            targets = WorkerProcesses(main_pid, main=kind != "kill-children")
            injector = Kill(targets, signal=signal.SIGTERM if kind == "terminate-worker" else sig,
                            seed=seed + n, journal=journal,
                            kind="kill-child" if kind == "kill-children" else kind)
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
        else:  # pragma: no cover - load_suite checked the kind
            raise ScenarioError(f"unknown fault kind {kind!r}")
        runners.append(Runner(schedule, injector, name=f"stress-{kind}"))
    return runners
