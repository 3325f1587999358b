"""``taskq-stress bench publish``: how fast a client publishes tasks one ``send_task`` at a time.

As a web app does on its request path: one process, results on (the broker's Redis is also
the result backend), ``send_task("bench.noop", args=(i,))`` in a loop, each call returning
its result handle. Each round runs in a fresh interpreter (so taskq, a baseline tree and
Celery never share a process): it publishes a warm-up batch untimed (the connection, the
queue's declaration), then times ``count`` calls. Keys live under a fresh
``global_keyprefix`` that is deleted afterwards. ``--compare celery`` sends the same messages
with a Celery client; ``--baseline DIR`` with the taskq package of another source tree.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stress.bench_common import Rated, cleanup, transport_options

KINDS = ("taskq", "baseline", "celery")
WARMUP = 200


@dataclass(frozen=True)
class PublishRun(Rated):
    kind: str
    count: int
    seconds: float


def _client(kind: str, url: str, prefix: str, queue: str) -> Any:
    options = transport_options(url, prefix)
    if kind == "celery":
        from celery import Celery

        capp = Celery("bench", broker=url, backend=url, set_as_current=False)
        capp.conf.update(broker_transport_options=options, task_default_queue=queue)
        return capp
    from taskq import TaskQ

    return TaskQ("bench", broker=url, backend=url, broker_transport_options=options,
                 task_default_queue=queue)


def _group_sender(kind: str, client: Any, size: int) -> Any:
    """``send(first)``: publish ``group(bench.noop(first), ..., bench.noop(first + size - 1))``
    with the client's own canvas (taskq's publishes a group in one batch)."""
    if kind == "celery":
        from celery import group as cgroup

        def send_celery(first: int) -> None:
            cgroup(client.signature("bench.noop", args=(i,))
                   for i in range(first, first + size)).apply_async()
        return send_celery
    from taskq.canvas import Signature, group

    def send_taskq(first: int) -> None:
        group(*(Signature("bench.noop", (i,), app=client)
                for i in range(first, first + size)), app=client).apply_async()
    return send_taskq


def time_sends(kind: str, url: str, count: int, prefix: str, queue: str,
               group_size: int = 0) -> float:
    """In this process: seconds for ``count`` one-by-one ``send_task`` calls after a warm-up
    (with ``group_size``, ``count`` tasks sent as groups of that many)."""
    client = _client(kind, url, prefix, queue)
    try:
        if group_size:
            send = _group_sender(kind, client, group_size)
            send(0)
            started = time.perf_counter()
            for first in range(0, count, group_size):
                send(first)
            return time.perf_counter() - started
        for i in range(WARMUP):
            client.send_task("bench.noop", args=(i,))
        started = time.perf_counter()
        for i in range(count):
            client.send_task("bench.noop", args=(i,))
        return time.perf_counter() - started
    finally:
        client.close()


def publish_once(kind: str, url: str, count: int, baseline: Path | None = None,
                 timeout: float = 600.0, group_size: int = 0) -> PublishRun:
    """One round in a fresh interpreter (run in a scratch directory, so a baseline tree's
    ``taskq`` linked there is the one imported). With ``group_size``, ``count`` (rounded
    up to whole groups) tasks are sent as groups of that many."""
    if group_size:
        count = -(-count // group_size) * group_size
    token = uuid.uuid4().hex[:8]
    prefix, queue = f"benchpub{token}:", f"bench.{token}"
    with tempfile.TemporaryDirectory(prefix="taskq-bench-publish-") as tmp:
        if kind == "baseline":
            assert baseline is not None
            os.symlink(baseline.resolve() / "taskq", Path(tmp) / "taskq")
        code = ("import json, sys; from stress.bench_publish import time_sends; "
                "print(json.dumps(time_sends(*sys.argv[1:3], int(sys.argv[3]), *sys.argv[4:6], "
                "int(sys.argv[6]))))")
        try:
            done = subprocess.run(
                [sys.executable, "-c", code, kind, url, str(count), prefix, queue,
                 str(group_size)],
                cwd=tmp, env={**os.environ, "PYTHONPATH": os.getcwd()}, capture_output=True,
                text=True, timeout=timeout)
        finally:
            cleanup(url, prefix, queue)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} publishing failed:\n{done.stderr[-2000:]}")
    return PublishRun(kind, count, float(json.loads(done.stdout.strip().splitlines()[-1])))


def report(runs: list[PublishRun]) -> dict[str, Any]:
    out: dict[str, Any] = {"load_average": [round(v, 2) for v in os.getloadavg()]}
    for kind in dict.fromkeys(r.kind for r in runs):
        rates = [r.rate for r in runs if r.kind == kind]
        out[kind] = {"runs": len(rates), "median_per_s": round(statistics.median(rates)),
                     "min_per_s": round(min(rates)), "max_per_s": round(max(rates)),
                     "rates": [round(r) for r in rates]}
    if "taskq" in out and "celery" in out:
        out["ratio_taskq_over_celery"] = round(
            out["taskq"]["median_per_s"] / max(out["celery"]["median_per_s"], 1), 2)
    if "taskq" in out and "baseline" in out:
        out["ratio_taskq_over_baseline"] = round(
            out["taskq"]["median_per_s"] / max(out["baseline"]["median_per_s"], 1), 2)
    return out
