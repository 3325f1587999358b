"""taskq's Redis leases with real workers (the worker issue's acceptance):

- SIGKILL a worker holding 20 reserved and running acks_late tasks: a second worker runs all
  of them within the lease plus 5 s;
- a live worker running a task longer than three leases is not sent that task again.
"""

from __future__ import annotations

import json
import time

from e2e_support import Broker, Ledger, StartWorker, wait_until

LEASE = 4.0  # e2e_support gives Redis workers lease_timeout=4, restore_interval=0.5


def test_a_killed_workers_reserved_and_running_tasks_come_back_within_the_lease(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    assert json.loads(redis_broker.env["TASKQ_BROKER_TRANSPORT_OPTIONS"])["lease_timeout"] \
        == LEASE
    a = worker(redis_broker, pool="threads", concurrency=4,
               env={"TASKQ_WORKER_PREFETCH_MULTIPLIER": "5"})
    client = redis_broker.app()
    results = [client.send_task("appmod.late_sleeper", (30, str(ledger))) for _ in range(20)]
    wait_until(lambda: sum(bool(ledger.starts(r.id)) for r in results) == 4, timeout=10,
               what="four tasks running")
    for r in results:
        a.wait_log(rf"received appmod\.late_sleeper\[{r.id}\]")  # all 20 held by A
    a.kill()
    killed_at = time.monotonic()
    b = worker(redis_broker, pool="threads", concurrency=20,
               env={"TASKQ_WORKER_PREFETCH_MULTIPLIER": "1"})
    wait_until(lambda: all(any(pid == b.pid for pid, _ in ledger.starts(r.id))
                           for r in results),
               timeout=LEASE + 5 + 10, what="every task started on the second worker")
    elapsed = time.monotonic() - killed_at
    print(f"all 20 tasks restarted on B {elapsed:.2f} s after A was killed")
    assert elapsed < LEASE + 5 + 3  # + B's own start-up


def test_a_live_worker_keeps_its_long_task_through_three_leases(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    worker(redis_broker, pool="threads", concurrency=1)
    worker(redis_broker, pool="threads", concurrency=1)  # a second consumer, waiting
    client = redis_broker.app()
    long = client.send_task("appmod.late_sleeper", (3.5 * LEASE, str(ledger)))
    assert long.get(timeout=4 * LEASE + 10) == "slept-late"
    assert len(ledger.starts(long.id)) == 1  # never delivered a second time
