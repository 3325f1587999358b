"""taskq's Redis leases with real workers (the worker issue's acceptance):

- SIGKILL a worker holding 20 reserved and running acks_late tasks: a second worker runs all
  of them once their leases end (not before; and not after kombu's hour or 100 s sweep);
- a live worker running a task longer than three leases is not sent that task again.
"""

from __future__ import annotations

import json

import redis
from e2e_support import REDIS_URL, Broker, Ledger, StartWorker, wait_until

LEASE = 4.0  # e2e_support gives Redis workers lease_timeout=4, restore_interval=0.5


def test_a_killed_workers_reserved_and_running_tasks_come_back_within_the_lease(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    assert json.loads(redis_broker.env["TASKQ_BROKER_TRANSPORT_OPTIONS"])["lease_timeout"] \
        == LEASE
    a = worker(redis_broker, pool="threads", concurrency=4,
               env={"TASKQ_WORKER_PREFETCH_MULTIPLIER": "5"})
    client = redis_broker.app()
    results = [client.send_task("appmod.late_sleeper", (30, str(ledger))) for _ in range(20)]
    wait_until(lambda: sum(bool(ledger.starts(r.id)) for r in results) == 4, timeout=30,
               what="four tasks running")
    for r in results:
        a.wait_log(rf"received appmod\.late_sleeper\[{r.id}\]")  # all 20 held by A
    a.kill()
    # A's leases end at these deadlines (ms of the Redis clock: this host's wall clock, as
    # the ledger's times are); none of its tasks may start again before them.
    client_redis = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        deadlines = [score / 1000 for _, score in client_redis.zrange(
            f"{redis_broker.name}:taskq:leases", 0, -1, withscores=True)]
    finally:
        client_redis.close()
    assert len(deadlines) == 20
    b = worker(redis_broker, pool="threads", concurrency=20,
               env={"TASKQ_WORKER_PREFETCH_MULTIPLIER": "1"})
    # Generous for a loaded machine, and still far below kombu's visibility timeout (an
    # hour) and its restore sweep (about every 100 s).
    wait_until(lambda: all(any(pid == b.pid for pid, _ in ledger.starts(r.id))
                           for r in results),
               timeout=60, what="every task started on the second worker")
    restarts = [t for r in results for pid, t in ledger.starts(r.id) if pid == b.pid]
    assert min(restarts) >= min(deadlines), "a task came back before its lease ended"


def test_a_live_worker_keeps_its_long_task_through_three_leases(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    # Renewed every 0.5 s, a 6 s lease survives a 5.5 s stall of the worker's loop.
    lease = 6.0
    options = {**json.loads(redis_broker.env["TASKQ_BROKER_TRANSPORT_OPTIONS"]),
               "lease_timeout": lease, "renew_interval": 0.5}
    env = {"TASKQ_BROKER_TRANSPORT_OPTIONS": json.dumps(options)}
    worker(redis_broker, pool="threads", concurrency=1, env=env)
    worker(redis_broker, pool="threads", concurrency=1, env=env)  # a second one, waiting
    client = redis_broker.app()
    long = client.send_task("appmod.late_sleeper", (3.5 * lease, str(ledger)))
    assert long.get(timeout=3.5 * lease + 60) == "slept-late"
    assert len(ledger.starts(long.id)) == 1  # never delivered a second time
