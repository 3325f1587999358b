"""The independent ledger: what happened to each task, kept apart from the broker and backend.

Every process appends JSON lines to a file of its own in the ledger directory, each line with
one ``os.write`` on an ``O_APPEND`` descriptor, so a process killed mid-run leaves whole lines
behind and no process ever waits on another. Events:

- ``published``: the broker confirmed the message (written by the workload publisher);
- ``started``: a task began, with the pid that runs it;
- ``finished``: a task's body returned or raised, with its outcome;
- ``lost``: the worker's main process saw the child running the task die (written by the
  ledger hooks of :mod:`stress.harness`; a worker without them is judged without it);
- ``canvas``: the broker has a canvas (written by the publisher, with its id): its tasks and
  what each waits for (:mod:`stress.canvas`).

Times are ``CLOCK_MONOTONIC`` (one clock for every process of the machine, the fault journal's
clock too) and wall time for humans.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ENV", "MEMBER_ENV", "Book", "Entry", "History", "LedgerReader", "LedgerWriter",
           "member", "writer"]

ENV = "TASKQ_STRESS_LEDGER"
"""The environment variable naming the ledger directory of the current cell."""


class LedgerWriter:
    """Appends events to ``<directory>/<role>-<pid>.jsonl``; reopens after a fork."""

    def __init__(self, directory: str | os.PathLike[str], role: str) -> None:
        self.directory = Path(directory)
        self.role = role
        self._fd = -1
        self._pid = -1

    def _file(self) -> int:
        pid = os.getpid()
        if pid != self._pid:  # a forked child never writes into its parent's file
            self._fd = os.open(self.directory / f"{self.role}-{pid}.jsonl",
                               os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._pid = pid
        return self._fd

    def write(self, event: str, task_id: str, **extra: Any) -> None:
        record = {"ev": event, "id": task_id, "pid": os.getpid(),
                  "mono": time.monotonic(), "wall": time.time(), **extra}
        os.write(self._file(), (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = -1


_writers: dict[str, LedgerWriter] = {}

MEMBER_ENV = "TASKQ_STRESS_MEMBER"
"""The environment variable naming a worker's place in a cell's fleet (1, 2, 3)."""


def member() -> dict[str, Any]:
    """What a ``started`` entry says about who runs it: the fleet member (when the cell runs
    several workers) and the parent pid (the worker's main process for a pool child)."""
    found = os.environ.get(MEMBER_ENV)
    return {"member": found, "ppid": os.getppid()} if found else {}


def writer(role: str) -> LedgerWriter | None:
    """This process's writer for ``role`` in the directory named by ``TASKQ_STRESS_LEDGER``
    (None when it is not set: the task runs outside a stress cell)."""
    directory = os.environ.get(ENV)
    if not directory:
        return None
    found = _writers.get(role)
    if found is None or str(found.directory) != directory:
        found = _writers[role] = LedgerWriter(directory, role)
    return found


@dataclass(frozen=True)
class Entry:
    event: str
    task_id: str
    pid: int
    mono: float
    wall: float
    extra: dict[str, Any]


def _entry(line: bytes) -> Entry | None:
    try:
        data = json.loads(line)
        return Entry(data.pop("ev"), data.pop("id"), data.pop("pid"), data.pop("mono"),
                     data.pop("wall"), data)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class LedgerReader:
    """Reads what was appended since the last :meth:`poll` (whole lines only)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._offsets: dict[Path, int] = {}

    def poll(self) -> list[Entry]:
        found: list[Entry] = []
        for path in sorted(self.directory.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            end = data.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            for line in data[:end].splitlines():
                entry = _entry(line)
                if entry is not None:
                    found.append(entry)
        return found


@dataclass
class History:
    """One task id's events in time order."""

    task_id: str
    kind: str = "?"
    expect: str = "ok"
    published: float | None = None
    not_before: float | None = None  # published with a countdown: not due before this
    starts: list[Entry] = field(default_factory=list)
    finishes: list[Entry] = field(default_factory=list)
    losses: list[Entry] = field(default_factory=list)


class Book:
    """Histories by task id, fed with entries as they are read."""

    def __init__(self) -> None:
        self.by_id: dict[str, History] = {}
        self.canvases: dict[str, dict[str, Any]] = {}  # canvas id -> its ``canvas`` entry
        self.events = 0  # started/finished/lost entries seen: progress

    def add(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if entry.event == "canvas":
                self._canvas(entry)
                continue
            history = self.by_id.get(entry.task_id)
            if history is None:
                history = self.by_id[entry.task_id] = History(entry.task_id)
            if entry.event == "published":
                history.published = entry.mono
                history.kind = entry.extra.get("kind", history.kind)
                history.expect = entry.extra.get("expect", history.expect)
                if "countdown" in entry.extra:
                    history.not_before = entry.mono + float(entry.extra["countdown"])
                continue
            self.events += 1
            if entry.event == "started":
                _insert(history.starts, entry)
            elif entry.event == "finished":
                _insert(history.finishes, entry)
            elif entry.event == "lost":
                _insert(history.losses, entry)

    def _canvas(self, entry: Entry) -> None:
        """Note a canvas; its tasks that the worker sends get a history without ``published``
        (the canvas oracle judges them)."""
        self.canvases[entry.task_id] = entry.extra
        for node in entry.extra.get("nodes", []):
            history = self.by_id.get(node["id"])
            if history is None:
                history = self.by_id[node["id"]] = History(node["id"])
            history.kind = node.get("kind", history.kind)
            history.expect = node.get("expect", history.expect)

    def published(self) -> list[History]:
        return [h for h in self.by_id.values() if h.published is not None]


def _insert(entries: list[Entry], entry: Entry) -> None:
    entries.append(entry)
    if len(entries) > 1 and entries[-2].mono > entry.mono:
        entries.sort(key=lambda e: e.mono)
