"""Leases across the worker's life (issue 13, items 2, 5, 6, 8), with real workers on Redis
and the embedded SQLite broker:

- a pool that blocks the loop (solo) keeps the lease of a task longer than the lease, and
  settles its ack at once: the task runs once;
- after a reconnect, the reserved messages of the lost connection go back at once (another
  worker runs them) and the running acks_late tasks keep their leases under the new one;
- a reserved request whose lease was lost is dropped, not run;
- a SQLite write lock held past the busy timeout is retried in place, not a lost connection.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from e2e_support import (
    REDIS_URL,
    Broker,
    Ledger,
    StartWorker,
    make_broker,
    wait_until,
)


def lease_broker(kind: str, tmp_path: Path, **options: float) -> Broker:
    """A Redis (own key prefix) or SQLite (own file) broker with these lease options."""
    if kind == "redis":
        broker = make_broker("redis")
        options = {"global_keyprefix": f"{broker.name}:", **options}  # type: ignore[dict-item]
        broker.env["TASKQ_BROKER_TRANSPORT_OPTIONS"] = json.dumps(options)
        return broker
    broker = make_broker("redis")  # results in Redis under its prefix; messages in SQLite
    url = f"sqlite:///{tmp_path}/broker.db"
    broker.url = url
    broker.kind = "sqlite"
    broker.env["TASKQ_BROKER_URL"] = url
    broker.env["TASKQ_BROKER_TRANSPORT_OPTIONS"] = json.dumps(options)
    return broker


@pytest.fixture
def brokers() -> Iterator[list[Broker]]:
    made: list[Broker] = []
    yield made
    for b in made:
        b.cleanup()


def messages_left(broker: Broker) -> int:
    """Messages of the test's queue still on the broker: queued or leased."""
    if broker.kind == "sqlite":
        db = sqlite3.connect(broker.url.removeprefix("sqlite:///"), timeout=10)
        try:
            return int(db.execute("SELECT count(*) FROM taskq_messages WHERE queue = ?",
                                  (broker.queue,)).fetchone()[0])
        finally:
            db.close()
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        return int(client.zcard(f"{broker.name}:taskq:leases")
                   + client.llen(f"{broker.name}:{broker.queue}"))
    finally:
        client.close()


def expire_leases(broker: Broker) -> int:
    """Make every lease of the test's broker run out now and put its message back, as the
    restore sweep of another consumer does after a lease expires unrenewed."""
    if broker.kind == "sqlite":
        db = sqlite3.connect(broker.url.removeprefix("sqlite:///"), timeout=10)
        try:
            with db:
                n = db.execute("UPDATE taskq_messages SET lease = NULL, deadline = NULL, "
                               "head = 0, redelivered = 1 WHERE lease IS NOT NULL").rowcount
            return int(n)
        finally:
            db.close()
    from taskq.transports import redis_lua

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    leases, leased = f"{broker.name}:taskq:leases", f"{broker.name}:taskq:leased"
    expired = f"{broker.name}:taskq:expired"
    try:
        ids = client.zrange(leases, 0, -1)
        if not ids:
            return 0
        with client.pipeline(transaction=True) as pipe:  # no renewal can come in between
            pipe.zadd(leases, dict.fromkeys(ids, 0))
            pipe.eval(redis_lua.RESTORE, 3, leases, leased, expired, 1000,
                      redis_lua.EXPIRED_KEPT_MS)
            return int(pipe.execute()[1])
    finally:
        client.close()


# -- item 2: a pool that blocks the loop ------------------------------------------------------
LEASE = 3.0


@pytest.mark.parametrize("pool", ["solo", "threads"])
@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_task_three_leases_long_runs_once(
        kind: str, pool: str, tmp_path: Path, brokers: list[Broker], worker: StartWorker,
        ledger: Ledger) -> None:
    """Given a 3 s lease, when an acks_late and an early-ack task each run for two leases
    (the solo pool runs them on the loop's thread, one behind the other), then each runs once and
    nothing is left on the broker (threads: the same, as a check that it never blocks)."""
    broker = lease_broker(kind, tmp_path, lease_timeout=LEASE, restore_interval=0.25)
    brokers.append(broker)
    worker(broker, pool=pool, concurrency=1)
    client = broker.app()
    late = client.send_task("appmod.late_sleeper", (2 * LEASE, str(ledger)))
    early = client.send_task("appmod.sleeper", (2 * LEASE, str(ledger)))
    assert late.get(timeout=60) == "slept-late"
    assert early.get(timeout=60) == "slept"
    wait_until(lambda: messages_left(broker) == 0, 30, "every message acked")
    assert client.send_task("appmod.add", (1, 1)).get(timeout=30) == 2  # after any rerun
    assert [len(ledger.starts(r.id)) for r in (late, early)] == [1, 1]


# -- item 5: a reconnect hands the old connection's leases over -------------------------------
CUT_LEASE = 30.0  # long, so that "before the lease" leaves a busy machine 25 s


def test_after_a_cut_reserved_tasks_go_to_an_idle_worker_and_running_ones_keep_their_lease(
        tmp_path: Path, brokers: list[Broker], worker: StartWorker, ledger: Ledger) -> None:
    """Given a worker with both children busy on acks_late tasks longer than the lease and 6
    more reserved, when its Redis connections are killed once, then a second, idle worker
    runs the 6 within a few seconds (not after the 30 s lease), the running tasks run once,
    and their acks (through the adopted leases) leave nothing on the broker."""
    broker = lease_broker("redis", tmp_path, lease_timeout=CUT_LEASE, restore_interval=0.5)
    brokers.append(broker)
    a = worker(broker, pool="prefork", concurrency=2,
               env={"TASKQ_WORKER_PREFETCH_MULTIPLIER": "4"})
    client = broker.app()
    running = [client.send_task("appmod.late_sleeper", (1.5 * CUT_LEASE, str(ledger)))
               for _ in range(2)]
    for r in running:
        ledger.wait_started(r.id, timeout=20)
    reserved = [client.send_task("appmod.late_sleeper", (0.1, str(ledger))) for _ in range(6)]
    for r in reserved:
        a.wait_log(rf"received appmod\.late_sleeper\[{r.id}\]")
    b = worker(broker, pool="threads", concurrency=6)

    offset = len(a.log())
    cut_at = time.monotonic()
    assert a.kill_redis_clients() >= 1
    a.wait_log(r"lost the broker connection", 10, after=offset)
    wait_until(lambda: all(any(pid == b.pid for pid, _ in ledger.starts(r.id))
                           for r in reserved),
               CUT_LEASE - 5, "the 6 reserved tasks to run on the idle worker")
    print(f"the 6 reserved tasks ran on the idle worker {time.monotonic() - cut_at:.2f} s "
          "after the cut")
    for r in running:
        assert r.get(timeout=2 * CUT_LEASE + 20) == "slept-late"
    wait_until(lambda: messages_left(broker) == 0, 15, "no message or lease left")
    assert [len(ledger.starts(r.id)) for r in running + reserved] == [1] * 8
    a.wait_log(r"took over the leases of 2 tasks", 1, after=offset)


def test_a_task_that_ends_while_the_broker_is_away_is_acked_by_the_next_connection(
        tmp_path: Path, brokers: list[Broker], worker: StartWorker, ledger: Ledger) -> None:
    """Given an acks_late task running while the worker's broker connection is down (a fault
    proxy that refuses connections), when the task ends before the worker reconnects, then
    the next connection settles its lease: nothing is left on the broker well before the
    lease would expire, and the task ran once (before, its ack was dropped with the lost
    connection and the task ran again after its lease)."""
    from chaos.proxy import FaultProxy

    broker = lease_broker("redis", tmp_path, lease_timeout=CUT_LEASE, restore_interval=0.5)
    brokers.append(broker)
    with FaultProxy("127.0.0.1:6379") as proxy:
        w = worker(broker, pool="prefork", concurrency=1,
                   env={"TASKQ_BROKER_URL": proxy.url("redis", "/0")})
        client = broker.app()  # publishes and reads results straight from Redis
        task = client.send_task("appmod.late_sleeper", (2, str(ledger)))
        ledger.wait_started(task.id, timeout=20)
        offset = len(w.log())
        proxy.down(cut=True)
        w.wait_log(r"lost the broker connection", 10, after=offset)
        assert task.get(timeout=30) == "slept-late"  # it ended while the broker was away
        proxy.up()
        w.wait_log(r"connected to .* again", 30, after=offset)
        wait_until(lambda: messages_left(broker) == 0, CUT_LEASE / 2,
                   "the lease of the task that ended while the broker was away to be settled")
        assert len(ledger.starts(task.id)) == 1
        w.stop()


def test_an_early_ack_whose_reply_was_lost_runs_its_task_once_after_the_reconnect(
        tmp_path: Path, brokers: list[Broker], worker: StartWorker, ledger: Ledger) -> None:
    """Given a worker whose first early-ack script runs on Redis and loses its reply with the
    connection (the ack applied, the worker not told: a cut between the two), when it
    reconnects, then it learns that the ack arrived and runs the task, once. Before, it took
    the ack for not sent and gave the message back, which Redis had already deleted: the task
    was lost (canvas suite, Redis seed 4)."""
    broker = lease_broker("redis", tmp_path, lease_timeout=CUT_LEASE, restore_interval=0.5)
    brokers.append(broker)
    w = worker(broker, pool="prefork", concurrency=1, app="appmod_acks",
               env={"APPMOD_LOSE_ACK_REPLY": "1"})
    client = broker.app()
    task = client.send_task("appmod_acks.early", (str(ledger),))
    assert task.get(timeout=CUT_LEASE / 2) == "ran"  # well before its lease could run out
    w.wait_log(r"confirmed the early acks of 1 tasks", 10)
    wait_until(lambda: messages_left(broker) == 0, 15, "no message or lease left")
    assert client.send_task("appmod.add", (1, 1)).get(timeout=30) == 2
    assert len(ledger.starts(task.id)) == 1


# -- item 6: a lost lease is told to the worker -----------------------------------------------
@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_reserved_requests_whose_lease_was_lost_are_dropped_not_run(
        kind: str, tmp_path: Path, brokers: list[Broker], worker: StartWorker,
        ledger: Ledger) -> None:
    """Given three tasks reserved behind a running one, when their leases run out (the
    messages go back to the queue, where any worker may take them), then the worker drops
    its requests for them, and each of the three runs exactly once."""
    broker = lease_broker(kind, tmp_path, lease_timeout=4, restore_interval=0.5)
    brokers.append(broker)
    w = worker(broker, pool="threads", concurrency=1)
    client = broker.app()
    blocker = client.send_task("appmod.sleeper", (8, str(ledger)))
    ledger.wait_started(blocker.id)
    reserved = [client.send_task("appmod.stamp", (str(ledger),)) for _ in range(3)]
    for r in reserved:
        w.wait_log(rf"received appmod\.stamp\[{r.id}\]")
    offset = len(w.log())
    assert expire_leases(broker) == 3
    for r in reserved:
        r.get(timeout=30)
    assert blocker.get(timeout=30) == "slept"
    wait_until(lambda: messages_left(broker) == 0, 15, "every message acked")
    assert client.send_task("appmod.add", (2, 2)).get(timeout=30) == 4  # after any copy
    assert [len(ledger.starts(r.id)) for r in reserved] == [1, 1, 1]
    w.wait_log(r"dropped 3 reserved tasks .*lease was lost", 1, after=offset)


# -- item 8: a locked SQLite database is retried in place -------------------------------------
def _hold_write_lock(path: str, seconds: float, holding: threading.Event) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    holding.set()
    time.sleep(seconds)  # the stimulus: another process's write transaction this long
    db.execute("COMMIT")
    db.close()


def test_a_write_lock_past_the_busy_timeout_keeps_reservations_and_acks(
        tmp_path: Path, brokers: list[Broker], worker: StartWorker, ledger: Ledger) -> None:
    """Given running acks_late tasks that finish while another process holds the write lock
    for 3 s (the busy timeout is 0.5 s) and more tasks reserved, then the worker keeps its
    connection, and every task runs exactly once."""
    broker = lease_broker("sqlite", tmp_path, lease_timeout=4, restore_interval=0.5,
                          busy_timeout=0.5)
    brokers.append(broker)
    w = worker(broker, pool="threads", concurrency=2,
               env={"TASKQ_WORKER_PREFETCH_MULTIPLIER": "3"})
    client = broker.app()
    running = [client.send_task("appmod.late_sleeper", (1.5, str(ledger))) for _ in range(2)]
    for r in running:
        ledger.wait_started(r.id)
    reserved = [client.send_task("appmod.late_sleeper", (0.5, str(ledger))) for _ in range(4)]
    for r in reserved:
        w.wait_log(rf"received appmod\.late_sleeper\[{r.id}\]")
    holding = threading.Event()
    holder = threading.Thread(target=_hold_write_lock,
                              args=(broker.url.removeprefix("sqlite:///"), 3.0, holding))
    holder.start()
    try:
        assert holding.wait(5)
        w.wait_log(r"stayed locked", 10)  # the worker met the lock
    finally:
        holder.join()
    for r in running + reserved:
        assert r.get(timeout=30) == "slept-late"
    wait_until(lambda: messages_left(broker) == 0, 20, "every message acked")
    assert client.send_task("appmod.add", (3, 3)).get(timeout=30) == 6  # after any copy
    assert [len(ledger.starts(r.id)) for r in running + reserved] == [1] * 6
    assert "lost the broker connection" not in w.log()

