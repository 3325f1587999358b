"""How much memory an idle worker holds: the PSS of its main process and its pool's children.

PSS (proportional set size) charges each shared page to the processes that share it in
parts, so the sum over a worker's processes is what the worker costs the machine (RSS would
count the pages a forked child shares with its parent once per process). The worker runs as
``bench drain`` starts it (prefork -c 2, its queue empty); once it has answered a stats
request and sat idle for ``settle`` seconds, every process of its tree is read.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import psutil

from stress.bench_common import cleanup, transport_options
from stress.bench_drain import running_worker


@dataclass(frozen=True)
class MemoryRun:
    kind: str
    pss_mib: tuple[float, ...]  # the main process first, then its descendants

    @property
    def total_mib(self) -> float:
        return sum(self.pss_mib)


def tree_pss_mib(pid: int) -> tuple[float, ...]:
    """PSS in MiB of ``pid`` and then of each of its descendants (those gone are left out)."""
    root = psutil.Process(pid)
    out = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            out.append(proc.memory_full_info().pss / 2**20)
        except psutil.Error:
            continue
    return tuple(out)


def idle_once(kind: str, url: str, concurrency: int = 2, settle: float = 1.0) -> MemoryRun:
    queue = f"bench.{uuid.uuid4().hex[:8]}"
    prefix = f"{queue}:"
    options = transport_options(url, prefix)
    try:
        with running_worker(kind, url, options, queue, concurrency) as worker:
            main = psutil.Process(worker.proc.pid)
            deadline = time.monotonic() + 30
            while len(main.children(recursive=True)) < concurrency:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} worker started no {concurrency} children")
                time.sleep(0.05)
            time.sleep(settle)
            # The worker's command is `python -m taskq|celery`: the Popen'd process is it.
            return MemoryRun(kind, tree_pss_mib(worker.proc.pid))
    finally:
        cleanup(url, prefix, queue)
