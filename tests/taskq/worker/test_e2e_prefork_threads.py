"""``taskq worker -P prefork --threads N`` on a real broker: N tasks at once in each child,
and a child's death still reported task by task (DESIGN.md's table: each running task whose
process dies is FAILURE WorkerLostError under early acks)."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
from e2e_support import Broker, Ledger, StartWorker, wait_until

from taskq.errors import WorkerLostError


def test_one_child_with_three_threads_runs_three_tasks_at_once_and_reports_its_death(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(broker, pool="prefork", concurrency=1, args=["--threads", "3"])
    assert "prefork x 1 x 3 threads" in w.log()
    client = broker.app()
    results = [client.send_task("appmod.sleeper", (60, str(ledger))) for _ in range(3)]
    # All three start, none having ended: at once, and in the one child process
    starts = [ledger.wait_started(r.id, timeout=20)[0] for r in results]
    pids = {pid for pid, _ in starts}
    assert len(pids) == 1 and not any(ledger.ended(r.id) for r in results)
    (child,) = pids
    assert psutil.Process(child).ppid() == w.pid
    os.kill(child, signal.SIGKILL)
    for result in results:  # each of the three, not only the one a kill is pinned on
        with pytest.raises(WorkerLostError, match="SIGKILL"):
            result.get(timeout=20)
    # The pool is back: a new child runs tasks
    assert client.send_task("appmod.add", (2, 3)).get(timeout=20) == 5
    wait_until(lambda: child not in [p.pid for p in psutil.Process(w.pid).children()],
               timeout=10, what="the killed child gone from the worker's children")
