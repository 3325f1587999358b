"""``taskq-stress bench startup``: how long a worker takes from ``exec`` to its first task.

A queue under a fresh key prefix is filled with ``bench.stamp`` tasks first; then the worker
is executed and the clock runs from just before the ``exec`` until the first task *starts*,
as that task says itself: ``bench.stamp`` appends ``time.monotonic()`` to a file (the same
clock in every process on Linux). The worker runs as an operator starts it: prefork -c 2,
heartbeats and gossip on, mingle on or off. ``--compare celery`` runs a Celery worker on the
same messages; ``--baseline DIR`` runs the taskq package of another source tree (a git
worktree of an older commit), so before and after alternate in one run.

Workers run with a bytecode cache of the benchmark's own (``PYTHONPYCACHEPREFIX``, filled by
an untimed warm-up start of each variant): an installed taskq has its ``.pyc`` files, as
Celery's site-packages do, while a checkout run with ``PYTHONDONTWRITEBYTECODE`` compiles
every taskq module at every start (about 0.1 s here).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stress.bench_common import cleanup, fill, transport_options

KINDS = ("taskq", "baseline", "celery")


@dataclass(frozen=True)
class Variant:
    kind: str  # taskq | baseline | celery
    mingle: bool

    @property
    def label(self) -> str:
        return self.kind if self.mingle else f"{self.kind} --without-mingle"


@dataclass(frozen=True)
class StartRun:
    variant: Variant
    seconds: float  # exec -> the first task started


def _pythonpath(variant: Variant, baseline: Path | None, links: Path) -> str:
    """The workers' PYTHONPATH: this tree, and for the baseline first a directory holding
    only a link to the baseline's ``taskq`` package (``stress`` and the benchmark's app
    still come from here). ``links`` stays the same across runs, so the baseline's modules
    keep their place in the bytecode cache."""
    if variant.kind != "baseline":
        return os.getcwd()
    assert baseline is not None
    link = links / "taskq"
    if not link.exists():
        links.mkdir(parents=True, exist_ok=True)
        os.symlink(baseline.resolve() / "taskq", link)
    return os.pathsep.join([str(links), os.getcwd()])


def _worker_cmd(variant: Variant, queue: str, node: str, concurrency: int) -> list[str]:
    if variant.kind == "celery":
        cmd = [sys.executable, "-m", "celery", "-A", "stress.bench_apps:celery", "worker"]
    else:
        cmd = [sys.executable, "-m", "taskq", "worker", "-A", "stress.bench_apps:app"]
    cmd += ["-P", "prefork", "-c", str(concurrency), "-Q", queue, "-n", node, "-l", "warning"]
    return cmd if variant.mingle else [*cmd, "--without-mingle"]


def _first_stamp(path: Path) -> float | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    stamps = [float(line.split()[0]) for line in text.splitlines() if line.strip()]
    return min(stamps) if stamps else None


def start_once(variant: Variant, url: str, tasks: int = 100, concurrency: int = 2,
               baseline: Path | None = None, scratch: Path | None = None,
               timeout: float = 60.0) -> StartRun:
    """One start: fill, exec, wait for the first stamp, kill, clean up. ``scratch``: a
    directory kept across runs for the workers' ``.pyc`` files and the baseline's link
    (none: no bytecode cache unless the environment has one)."""
    queue = f"bench.{uuid.uuid4().hex[:8]}"
    prefix = f"{queue}:"
    options = transport_options(url, prefix)
    fill(url, options, queue, tasks, "bench.stamp")
    with tempfile.TemporaryDirectory(prefix="taskq-bench-startup-") as tmp:
        workdir = Path(tmp)
        stamps = workdir / "stamps"
        log = workdir / "worker.log"
        env = {**os.environ, "TASKQ_STRESS_BENCH_BROKER": url,
               "TASKQ_STRESS_BENCH_OPTIONS": json.dumps(options),
               "TASKQ_STRESS_BENCH_QUEUE": queue, "TASKQ_STRESS_BENCH_STAMPS": str(stamps),
               "PYTHONPATH": _pythonpath(variant, baseline, (scratch or workdir) / "links")}
        if scratch is not None:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(scratch / "pyc")
        node = f"{variant.kind}-{queue}@bench"
        with open(log, "wb") as out:
            started = time.monotonic()
            proc = subprocess.Popen(_worker_cmd(variant, queue, node, concurrency), env=env,
                                    cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            deadline = started + timeout
            while (first := _first_stamp(stamps)) is None:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{variant.label} ran no task within {timeout} s; its "
                                       f"log ends:\n{log.read_text()[-2000:]}")
                time.sleep(0.002)
            return StartRun(variant, first - started)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            cleanup(url, prefix, queue)


def report(runs: list[StartRun]) -> dict[str, Any]:
    out: dict[str, Any] = {"load_average": [round(v, 2) for v in os.getloadavg()]}
    for label in dict.fromkeys(r.variant.label for r in runs):
        ms = [r.seconds * 1000 for r in runs if r.variant.label == label]
        out[label] = {"runs": len(ms), "median_ms": round(statistics.median(ms)),
                      "min_ms": round(min(ms)), "max_ms": round(max(ms)),
                      "ms": [round(v) for v in ms]}
    return out
