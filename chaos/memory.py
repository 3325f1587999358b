"""Memory pressure from inside a process: a hook the workload calls.

A task (or a test workload) calls :func:`grow` to allocate and touch ``mib`` MiB that
stay resident until :func:`release`; this drives a child past ``max_memory_per_child``.
:func:`install_grow_hook` makes the process grow whenever it gets a signal (SIGUSR2 by
default), so :class:`chaos.process.GrowMemory` can trigger growth from outside.
"""

from __future__ import annotations

import mmap
import signal
import threading
from types import FrameType

__all__ = ["MIB", "grow", "held", "install_grow_hook", "release"]

MIB = 1024 * 1024
_PAGE = mmap.PAGESIZE

_lock = threading.Lock()
_held: list[bytearray] = []


def grow(mib: float) -> int:
    """Allocate ``mib`` MiB, touch every page so it counts in RSS, keep it; return bytes held."""
    if mib <= 0:
        raise ValueError(f"grow() needs a positive number of MiB, got {mib!r}")
    size = int(mib * MIB)
    block = bytearray(size)
    # A fresh bytearray is zero pages the kernel has not backed yet: write one byte per page.
    block[::_PAGE] = b"\x01" * len(range(0, size, _PAGE))
    with _lock:
        _held.append(block)
        return sum(len(b) for b in _held)


def held() -> int:
    """Bytes currently held by :func:`grow`."""
    with _lock:
        return sum(len(b) for b in _held)


def release() -> int:
    """Free everything :func:`grow` holds; return the bytes released."""
    with _lock:
        total = sum(len(b) for b in _held)
        _held.clear()
    return total


def install_grow_hook(mib: float, signum: int = signal.SIGUSR2) -> None:
    """Grow by ``mib`` MiB on every ``signum`` (call from the main thread)."""
    if mib <= 0:
        raise ValueError(f"install_grow_hook() needs a positive number of MiB, got {mib!r}")

    def _handler(_signum: int, _frame: FrameType | None) -> None:
        grow(mib)

    signal.signal(signum, _handler)
