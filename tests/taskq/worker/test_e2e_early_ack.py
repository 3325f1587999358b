"""Early acks leave before the job reaches the pool (issue 13 #7).

Acked when the child reported ``started``, a job a child held when the main process died was
never acked: the broker delivered it again, and when the orphaned child started it anyway it
ran twice (seen in ``taskq-stress run --suite kill-main``: a start 3 ms after the kill, another
5.6 s later), which DESIGN.md's table forbids for early ack (its cell says "lost"). Now the
worker sends the ack, waits for the broker's answer, and only then hands the job to a child.
"""

from __future__ import annotations

import pytest
import redis
from e2e_support import REDIS_URL, Broker, Ledger, StartWorker, wait_until


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_an_early_ack_job_in_a_child_when_the_main_process_dies_is_acked_already(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Given an early-ack job that a child has read, when the worker's main process dies
    before the child starts it, then the broker no longer holds the message (it was acked
    before the child got it), and a second worker on the same queue does not run it again."""
    leases_key = f"{broker.name}:taskq:leases"
    first = worker(broker, pool="prefork", concurrency=1, app="appmod_acks", env={
        "APPMOD_KILL_MAIN_READING": "appmod_acks.early", "APPMOD_LEDGER": str(ledger),
        "APPMOD_REDIS_URL": REDIS_URL, "APPMOD_LEASES_KEY": leases_key})
    client = broker.app()
    result = client.send_task("appmod_acks.early", (str(ledger),))
    held = wait_until(lambda: [p for p in ledger.lines() if p[:2] == ["held", result.id]], 20,
                      "the child to see its parent dead")
    assert held[0][2] == "0", "the job reached a child before its early ack was sent"
    wait_until(lambda: not first.alive(), 20, "the first worker's main process to exit")

    worker(broker, pool="threads", concurrency=2, app="appmod_acks")
    assert client.send_task("appmod.add", (2, 2)).get(timeout=20) == 4
    store = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        # A message the dead worker still held comes back when its lease (4 s here) runs
        # out, and runs on the second worker: wait until nothing is held or queued.
        wait_until(lambda: store.zcard(leases_key) == 0
                   and store.llen(f"{broker.name}:{broker.queue}") == 0,
                   30, "no lease held and the queue empty")
    finally:
        store.close()
    assert len(ledger.starts(result.id)) <= 1  # the orphaned child may have run it


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_early_ack_jobs_queued_in_a_fast_child_run_there_once_after_a_lost_connection(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """-O fast: early-ack jobs written to a busy child's pipe were acked before they got
    there, so the broker will not deliver them again: when the connection is lost they stay
    in the child and run, each exactly once (taking them back would lose them)."""
    from test_e2e_connection import _cut_and_see, _three_behind_a_sleeper

    w = worker(broker, pool="prefork", concurrency=1, args=["-O", "fast"],
               env={"TASKQ_WORKER_FAST_QUEUE_DEPTH": "3"})
    running, queued = _three_behind_a_sleeper(w, broker.app(), ledger, 6.0)
    _cut_and_see(broker, w, r"lost the broker connection")
    for r in queued:
        r.get(timeout=20)
    assert running.get(timeout=15) == "slept"
    assert [len(ledger.starts(r.id)) for r in queued] == [1, 1, 1]
    assert "took 3 back from the pool" not in w.log()
