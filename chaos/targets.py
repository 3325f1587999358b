"""Which processes an injector may hit, and how a process is identified for sure.

A :class:`ProcessRef` is a pid plus the process's start time in clock ticks (field 22 of
``/proc/PID/stat``): a reused pid has a different start time, so a ref never names the
wrong process. Target sources list candidate pids cheaply and resolve one pid at a time,
because an injector that kills one child a millisecond out of 2,000 cannot afford to
stat every candidate on every injection.

Sources:

- :class:`ChildrenOf` -- a worker's children (optionally the whole tree, optionally only
  those a predicate accepts, e.g. the busy ones);
- :class:`Pids` -- an explicit pid list, or a callable returning the pids to aim at now
  (a caller that knows which child runs which task aims precisely);
- :class:`Matching` -- any process a predicate accepts.

The chaos process itself and pid 1 are never candidates.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil

from chaos.errors import TargetError

__all__ = [
    "ChildrenOf",
    "Matching",
    "Pids",
    "ProcessRef",
    "Targets",
    "child_pids",
    "read_stat",
]

Predicate = Callable[[psutil.Process], bool]


@dataclass(frozen=True)
class Stat:
    """The fields of ``/proc/PID/stat`` chaos needs."""

    state: str
    ppid: int
    start_ticks: int


def read_stat(pid: int) -> Stat | None:
    """Read ``/proc/PID/stat``; ``None`` if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses; split after the last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return Stat(state=fields[0].decode(), ppid=int(fields[1]), start_ticks=int(fields[19]))


@dataclass(frozen=True)
class ProcessRef:
    """A process identified beyond pid reuse: pid + start time (clock ticks since boot)."""

    pid: int
    start_ticks: int

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        """A ref to the live, non-zombie process ``pid`` now; ``None`` if there is none."""
        stat = read_stat(pid)
        if stat is None or stat.state in ("Z", "X"):
            return None
        return cls(pid, stat.start_ticks)

    def is_alive(self) -> bool:
        """True while this very process (not a successor with its pid) runs."""
        stat = read_stat(self.pid)
        return (
            stat is not None
            and stat.state not in ("Z", "X")
            and (stat.start_ticks == self.start_ticks)
        )


def child_pids(pid: int, *, recursive: bool = False) -> list[int]:
    """The pids of ``pid``'s children (or whole subtree), unordered; [] if ``pid`` is gone.

    Reads ``/proc/PID/task/TID/children`` (one small read per thread) rather than
    scanning every process as ``psutil.Process.children()`` does.
    """
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        direct = _direct_children(parent)
        found.extend(direct)
        if recursive:
            frontier.extend(direct)
    return found


def _direct_children(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as handle:
                out.extend(map(int, handle.read().split()))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


class Targets(Protocol):
    """A source of processes to hit."""

    def describe(self) -> str:
        """A short human-readable name, written to the journal as the target."""
        ...

    def candidates(self) -> Sequence[int]:
        """Candidate pids in a stable order; may include ones that resolve to nothing."""
        ...

    def resolve(self, pid: int) -> ProcessRef | None:
        """A verified ref if ``pid`` is a live target now, else ``None``."""
        ...


def _without_self(pids: Iterable[int]) -> list[int]:
    """``pids`` sorted, minus pid 1 and this process (chaos never targets itself)."""
    excluded = {1, os.getpid()}
    return sorted(set(pids) - excluded)


def _accepts(predicate: Predicate | None, pid: int) -> bool:
    if predicate is None:
        return True
    try:
        return bool(predicate(psutil.Process(pid)))
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return False


class ChildrenOf:
    """The children of a (worker's main) process, or its whole subtree with ``recursive``.

    The parent's identity is captured when this object is made: if that parent dies and
    its pid is reused, there are no candidates rather than some stranger's children.
    ``where`` narrows the choice (e.g. only busy children); it gets a ``psutil.Process``.
    """

    def __init__(
        self, parent: int | ProcessRef, *, recursive: bool = False, where: Predicate | None = None
    ) -> None:
        ref = parent if isinstance(parent, ProcessRef) else ProcessRef.of(parent)
        if ref is None:
            raise TargetError(f"no process with pid {parent}; pass the pid of a live process")
        self.parent = ref
        self.recursive = recursive
        self.where = where

    def describe(self) -> str:
        return f"{'tree' if self.recursive else 'children'} of {self.parent.pid}"

    def candidates(self) -> list[int]:
        if not self.parent.is_alive():
            return []
        return _without_self(child_pids(self.parent.pid, recursive=self.recursive))

    def resolve(self, pid: int) -> ProcessRef | None:
        ref = ProcessRef.of(pid)
        if ref is None or not _accepts(self.where, pid):
            return None
        return ref


class Pids:
    """An explicit set of processes.

    Given pids, their identities are captured now (so a pid reused later is never hit);
    given ``ProcessRef`` objects, those identities are used. Given a callable, it is
    asked for the pids to aim at on every injection (identity captured then).
    """

    def __init__(
        self,
        pids: Iterable[int | ProcessRef] | Callable[[], Iterable[int]],
        *,
        label: str | None = None,
    ) -> None:
        self._source: Callable[[], Iterable[int]] | None = None
        self._refs: dict[int, ProcessRef | None] = {}
        if callable(pids):
            self._source = pids
        else:
            for item in pids:
                if isinstance(item, ProcessRef):
                    self._refs[item.pid] = item
                elif isinstance(item, int) and not isinstance(item, bool):
                    self._refs[item] = ProcessRef.of(item)
                else:
                    raise TargetError(f"Pids() takes pids or ProcessRefs, got {item!r}")
        self._label = label

    def describe(self) -> str:
        if self._label:
            return self._label
        if self._source is not None:
            return f"pids from {getattr(self._source, '__qualname__', 'a callable')}"
        return "pids " + ",".join(str(p) for p in sorted(self._refs))

    def candidates(self) -> list[int]:
        pids = self._refs if self._source is None else self._source()
        return _without_self(pids)

    def resolve(self, pid: int) -> ProcessRef | None:
        if self._source is not None:
            return ProcessRef.of(pid)
        ref = self._refs.get(pid)
        return ref if ref is not None and ref.is_alive() else None


class Matching:
    """Every process (other than this one and pid 1) that ``predicate`` accepts."""

    def __init__(self, predicate: Predicate, *, label: str | None = None) -> None:
        self.predicate = predicate
        self._label = label or f"processes matching {getattr(predicate, '__qualname__', '?')}"

    def describe(self) -> str:
        return self._label

    def candidates(self) -> list[int]:
        return _without_self(psutil.pids())

    def resolve(self, pid: int) -> ProcessRef | None:
        ref = ProcessRef.of(pid)
        if ref is None or not _accepts(self.predicate, pid):
            return None
        return ref
