"""The prefork pool under load in a real worker (SCENARIOS #2, #10, #11; prefork acceptance).

Each task notes its start (pid, wall time) in a ledger file, independent of the broker.
"""

from __future__ import annotations

import collections
import time

import pytest
from e2e_support import Broker, Ledger, StartWorker, wait_until


def _ended(ledger: Ledger) -> set[str]:
    return {p[1] for p in ledger.lines() if p[0] == "end"}


@pytest.mark.parametrize("optimization", ["fair", "fast"])
def test_work_is_shared_between_the_children(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger, optimization: str) -> None:
    worker(redis_broker, pool="prefork", concurrency=2, args=["-O", optimization])
    client = redis_broker.app()
    ids = [client.send_task("appmod.tick", (0.05, str(ledger))).id for _ in range(200)]
    wait_until(lambda: _ended(ledger) >= set(ids), timeout=60, what="200 tasks done")
    per_child = collections.Counter(
        p[2] for p in ledger.lines() if p[0] == "start" and p[1] in set(ids))
    assert len(per_child) == 2, per_child
    shares = [n / 200 for n in per_child.values()]
    assert all(0.35 <= s <= 0.65 for s in shares), per_child


def test_fair_short_tasks_do_not_wait_behind_a_long_one(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    worker(redis_broker, pool="prefork", concurrency=2, args=["-O", "fair"])
    client = redis_broker.app()
    long = client.send_task("appmod.tick", (5, str(ledger)))
    ledger.wait_started(long.id)
    sent = {}
    for _ in range(20):
        result = client.send_task("appmod.tick", (0.01, str(ledger)))
        sent[result.id] = time.time()
    wait_until(lambda: _ended(ledger) >= set(sent), timeout=20, what="short tasks done")
    # One child is busy for 5 s; the other is idle whenever a short task waits. Each short
    # task must start within 500 ms of the previous one ending or of being sent.
    starts = {p[1]: float(p[3]) for p in ledger.lines() if p[0] == "start" and p[1] in sent}
    assert long.id not in _ended(ledger), "the long task should still be running"
    waits = sorted(starts[i] - sent[i] for i in sent)
    assert waits[-1] < 0.5 + 0.02 * len(sent), waits  # 20 x 10 ms back to back at most


@pytest.mark.parametrize("optimization", ["fair", "fast"])
def test_big_arguments_with_a_child_per_task(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger, optimization: str) -> None:
    worker(redis_broker, pool="prefork", concurrency=1,
           args=["-O", optimization, "--max-tasks-per-child", "1"])
    client = redis_broker.app()
    blob = "x" * (8 * 1024 * 1024)
    ids = [client.send_task("appmod.tick", (0, str(ledger), blob)).id for _ in range(4)]
    wait_until(lambda: _ended(ledger) >= set(ids), timeout=60, what="8 MiB tasks done")
    pids = {p[2] for p in ledger.lines() if p[0] == "start" and p[1] in set(ids)}
    assert len(pids) == 4  # each on its own child
