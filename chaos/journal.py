"""The fault journal: one JSON line per injection, appended atomically.

Every injection -- a signal sent, a proxy fault switched, a broker restarted, or an
attempt that found no target -- becomes one :class:`FaultRecord`. A file journal is
opened with ``O_APPEND`` and each line is written with a single ``os.write``, so several
processes (a stress runner, its injectors, a CLI) can share one file without interleaving
lines. The stress oracles read it back with :func:`read_journal` to match faults against
what the worker did.

A line looks like::

    {"mono": 812.503, "wall": 1764000000.12, "kind": "kill", "target": "children of 4242",
     "params": {"signal": "SIGKILL", "count": 1}, "outcome": "ok",
     "detail": {"pids": [4250], "indices": [2], "candidates": 4}, "offset": 3.0, "writer": 4300}
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.clock import Clock, SystemClock
from chaos.errors import JournalError

__all__ = ["OUTCOMES", "FaultRecord", "Journal", "iter_journal", "read_journal"]

# What an injection can come to. "ok": the fault was applied; "no-target": nothing
# matched; "vanished": the target was selected but was gone (or its pid reused) by the
# time the signal went out; "error": an unexpected failure, described in detail["error"].
OUTCOMES = ("ok", "no-target", "vanished", "error")

JSONValue = Any  # what json.dumps accepts; kept loose on purpose


@dataclass(frozen=True)
class FaultRecord:
    """One injection, as written to and read from the journal."""

    mono: float
    wall: float
    kind: str
    target: str
    outcome: str
    params: Mapping[str, JSONValue] = field(default_factory=dict)
    detail: Mapping[str, JSONValue] = field(default_factory=dict)
    offset: float | None = None
    writer: int = 0

    def to_json(self) -> str:
        """The record as one JSON line (without the newline)."""
        data = {
            "mono": self.mono,
            "wall": self.wall,
            "kind": self.kind,
            "target": self.target,
            "outcome": self.outcome,
            "params": dict(self.params),
            "detail": dict(self.detail),
            "offset": self.offset,
            "writer": self.writer,
        }
        return json.dumps(data, separators=(",", ":"), default=str)

    @classmethod
    def from_json(cls, line: str) -> FaultRecord:
        """Parse one journal line; raises :class:`JournalError` naming what is wrong."""
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JournalError(f"journal line is not JSON ({exc}): {line[:120]!r}") from None
        if not isinstance(data, dict):
            raise JournalError(f"journal line is not a JSON object: {line[:120]!r}")
        missing = [k for k in ("mono", "wall", "kind", "target", "outcome") if k not in data]
        if missing:
            raise JournalError(f"journal line lacks {', '.join(missing)}: {line[:120]!r}")
        return cls(
            mono=float(data["mono"]),
            wall=float(data["wall"]),
            kind=str(data["kind"]),
            target=str(data["target"]),
            outcome=str(data["outcome"]),
            params=dict(data.get("params") or {}),
            detail=dict(data.get("detail") or {}),
            offset=None if data.get("offset") is None else float(data["offset"]),
            writer=int(data.get("writer", 0)),
        )


Listener = Callable[[FaultRecord], None]


class Journal:
    """Records injections: to a shared JSONL file, to memory, and to listeners.

    ``path=None`` gives a memory-only journal. The last ``keep`` records are always
    available as :attr:`records` (a bounded buffer, so a long run does not grow memory).
    ``clock`` supplies ``mono``; ``wall`` supplies wall time (both injectable for tests).
    Thread-safe; a process may share the file with others but not the object across fork.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        wall: Callable[[], float] = time.time,
        keep: int = 10_000,
    ) -> None:
        self.path = None if path is None else Path(path)
        self._clock = clock or SystemClock()
        self._wall = wall
        self._lock = threading.Lock()
        self._recent: deque[FaultRecord] = deque(maxlen=keep)
        self._listeners: list[Listener] = []
        self._fd: int | None = None
        if self.path is not None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise JournalError(f"cannot open fault journal {self.path}: {exc}") from exc

    @property
    def records(self) -> list[FaultRecord]:
        """The most recent records this object wrote (not other processes' lines)."""
        with self._lock:
            return list(self._recent)

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(record)`` after each record is written (e.g. to print it)."""
        with self._lock:
            self._listeners.append(listener)

    def record(
        self,
        kind: str,
        target: str,
        outcome: str,
        *,
        params: Mapping[str, JSONValue] | None = None,
        detail: Mapping[str, JSONValue] | None = None,
        offset: float | None = None,
    ) -> FaultRecord:
        """Append one record and return it."""
        if outcome not in OUTCOMES:
            raise JournalError(f"unknown outcome {outcome!r}; use one of {', '.join(OUTCOMES)}")
        rec = FaultRecord(
            mono=self._clock.monotonic(),
            wall=self._wall(),
            kind=kind,
            target=target,
            outcome=outcome,
            params=dict(params or {}),
            detail=dict(detail or {}),
            offset=offset,
            writer=os.getpid(),
        )
        line = (rec.to_json() + "\n").encode()
        with self._lock:
            if self._fd is not None:
                self._write(line)
            elif self.path is not None:
                raise JournalError(f"fault journal {self.path} is closed")
            self._recent.append(rec)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(rec)
        return rec

    def _write(self, line: bytes) -> None:
        assert self._fd is not None
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            raise JournalError(f"cannot write fault journal {self.path}: {exc}") from exc
        if written != len(line):
            # A short write to a regular file means a full disk or a quota; a second
            # write could interleave with another process, so report it instead.
            raise JournalError(
                f"short write to fault journal {self.path} ({written} of {len(line)} bytes)"
            )

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return f"Journal({where})"


def iter_journal(path: str | os.PathLike[str], *, strict: bool = False) -> Iterator[FaultRecord]:
    """Yield the records in a journal file, in file order.

    A last line without its newline (a writer killed mid-run cannot produce one, but a
    file copied while being written can) is skipped unless ``strict``.
    """
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 -- closed in finally
    except OSError as exc:
        raise JournalError(f"cannot read fault journal {path}: {exc}") from exc
    try:
        for number, line in enumerate(handle, 1):
            if not line.endswith("\n"):
                if strict:
                    raise JournalError(f"{path}:{number}: truncated last line {line[:80]!r}")
                return
            if line.strip():
                try:
                    yield FaultRecord.from_json(line)
                except JournalError as exc:
                    raise JournalError(f"{path}:{number}: {exc}") from None
    finally:
        handle.close()


def read_journal(path: str | os.PathLike[str], *, strict: bool = False) -> list[FaultRecord]:
    """All records in a journal file (see :func:`iter_journal`)."""
    return list(iter_journal(path, strict=strict))
