"""Revoked, terminated and expired tasks end as REVOKED, as on Celery's worker.

- ``revoke(terminate=True)`` of a running task: REVOKED with ``TaskRevokedError('terminated')``
  (not FAILURE ``WorkerLostError``), for a taskq client and for a Celery client;
- a task whose ``expires`` passes while it waits (its countdown, or behind a busy pool) is
  never run: REVOKED (``expired``);
- with ``rpc://`` results the client hears REVOKED on its reply queue (not PENDING forever).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from e2e_support import REDIS_URL, Broker, Ledger, StartWorker, wait_until

from taskq import states
from taskq.errors import TaskRevokedError

celery = pytest.importorskip("celery")


def _celery_client(broker: Broker) -> Any:
    """A Celery client app that talks to this test's broker corner and result keys."""
    app = celery.Celery("revoke_client", broker=broker.url, backend=REDIS_URL,
                        set_as_current=False)
    options = json.loads(broker.env.get("TASKQ_BROKER_TRANSPORT_OPTIONS", "{}"))
    app.conf.update(
        broker_transport_options={k: v for k, v in options.items()
                                  if k == "global_keyprefix"},
        result_backend_transport_options=json.loads(
            broker.env["TASKQ_RESULT_BACKEND_TRANSPORT_OPTIONS"]),
        task_default_queue=broker.queue,
    )
    return app


def _running_child(ledger: Ledger, task_id: str) -> int:
    [(pid, _)] = ledger.wait_started(task_id, timeout=30)
    return pid


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_terminated_task_is_revoked_for_taskq_and_celery_clients(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(broker, pool="prefork", concurrency=1)
    client = broker.app()
    capp = _celery_client(broker)
    try:
        # A taskq client sends, revokes with terminate, and reads the state.
        running = client.send_task("appmod.late_sleeper", (60, str(ledger)))
        _running_child(ledger, running.id)
        client.control.revoke(running.id, terminate=True, destination=[w.hostname])
        wait_until(lambda: running.state in states.READY_STATES, 30, "the terminated task's state")
        assert running.state == states.REVOKED
        with pytest.raises(TaskRevokedError, match="terminated"):
            running.get(timeout=5)
        assert not ledger.ended(running.id)
        w.wait_log(rf"appmod\.late_sleeper\[{running.id}\] terminated")

        # A Celery client sends, terminates through Celery's control, and reads the state.
        sent = capp.send_task("appmod.sleeper", (60, str(ledger)), queue=broker.queue)
        _running_child(ledger, sent.id)
        capp.control.revoke(sent.id, terminate=True, destination=[w.hostname])
        wait_until(lambda: capp.AsyncResult(sent.id).state in {"REVOKED", "FAILURE"}, 30,
                   "the Celery client to see the terminated task's state")
        theirs = capp.AsyncResult(sent.id)
        assert theirs.state == "REVOKED"
        with pytest.raises(celery.exceptions.TaskRevokedError, match="terminated"):
            theirs.get(timeout=5)
        # Neither stays acked-but-unfinished nor comes back: the worker still runs new work.
        assert client.send_task("appmod.add", (2, 3)).get(timeout=30) == 5
        assert len(ledger.starts(running.id)) == 1 and len(ledger.starts(sent.id)) == 1
    finally:
        capp.close()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_task_that_expires_while_it_waits_is_revoked_and_never_runs(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(broker, pool="prefork", concurrency=1)
    client = broker.app()
    # Held for its countdown, which ends after its expiry.
    held = client.send_task("appmod.stamp", (str(ledger),), countdown=3, expires=1)
    # Queued behind a busy pool (concurrency 1) until after its expiry.
    busy = client.send_task("appmod.sleeper", (4, str(ledger)))
    ledger.wait_started(busy.id, timeout=30)
    behind = client.send_task("appmod.stamp", (str(ledger),), expires=1)
    for result in (held, behind):
        wait_until(lambda r=result: r.state in states.READY_STATES, 40,
                   f"the expired task {result.id} to be stored")
        assert result.state == states.REVOKED
        with pytest.raises(TaskRevokedError, match="expired"):
            result.get(timeout=5)
    assert busy.get(timeout=30) == "slept"
    assert ledger.starts(held.id) == [] and ledger.starts(behind.id) == []
    w.wait_log(rf"discarded expired task appmod\.stamp\[{held.id}\]")


def test_rpc_client_hears_revoked_for_expired_and_revoked_tasks(
        amqp_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    env = {"TASKQ_RESULT_BACKEND": "rpc://"}
    w = worker(amqp_broker, pool="prefork", concurrency=1, env=env)
    client = amqp_broker.app(**env)
    expired = client.send_task("appmod.stamp", (str(ledger),), countdown=3, expires=1)
    held = client.send_task("appmod.stamp", (str(ledger),), countdown=30)
    already = client.send_task("appmod.stamp", (str(ledger),), expires=-5)
    w.wait_log(rf"received appmod\.stamp\[{held.id}\]", 30)
    client.control.revoke(held.id, destination=[w.hostname])
    for result, reason in ((expired, "expired"), (held, "revoked"), (already, "expired")):
        with pytest.raises(TaskRevokedError, match=reason):
            result.get(timeout=30)
        assert result.state == states.REVOKED
    assert client.send_task("appmod.add", (1, 1)).get(timeout=30) == 2
    assert ledger.starts(expired.id) == ledger.starts(held.id) == []
    assert ledger.starts(already.id) == []


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_terminate_reaches_a_task_queued_in_its_child_when_it_starts(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Given ``-O fast`` (a child holds a job besides the one it runs), when a task queued in
    the child is revoked with terminate, then its child is signalled as soon as it starts it:
    REVOKED ``terminated``, not run to the end."""
    w = worker(broker, pool="prefork", concurrency=1, args=["-O", "fast"])
    client = broker.app()
    busy = client.send_task("appmod.late_sleeper", (3, str(ledger)))
    ledger.wait_started(busy.id, timeout=30)
    queued = client.send_task("appmod.late_sleeper", (60, str(ledger)))
    w.wait_log(rf"received appmod\.late_sleeper\[{queued.id}\]", 30)
    assert ledger.starts(queued.id) == []  # still behind the busy one, in the child
    client.control.revoke(queued.id, terminate=True, destination=[w.hostname])
    wait_until(lambda: queued.state in states.READY_STATES, 40, "the queued task's end state")
    assert queued.state == states.REVOKED
    with pytest.raises(TaskRevokedError, match="terminated"):
        queued.get(timeout=5)
    assert busy.get(timeout=30) == "slept-late"
    assert not ledger.ended(queued.id)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_revoke_stores_revoked_for_ids_no_worker_started_before_it_replies(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """As Celery 5.7's worker: a revoke of ids this worker does not hold stores REVOKED for
    those whose state says nobody started them, before the reply; a state another worker
    set (STARTED, a custom one) stays, and a task running here without terminate runs on."""
    w = worker(broker, pool="prefork", concurrency=1)
    client = broker.app()
    capp = _celery_client(broker)
    backend = client.backend
    try:
        elsewhere, custom, unseen = (f"revoke-{n}-{broker.queue}" for n in ("a", "b", "c"))
        backend.store_result(elsewhere, {"hostname": "other@host"}, states.STARTED)
        backend.store_result(custom, {"step": 1}, "PROGRESS")
        running = client.send_task("appmod.sleeper", (3, str(ledger)))
        ledger.wait_started(running.id, timeout=30)
        replies = capp.control.revoke([elsewhere, custom, unseen, running.id], reply=True,
                                      timeout=10, destination=[w.hostname])
        assert replies and w.hostname in replies[0]
        assert backend.get_task_meta(unseen)["status"] == states.REVOKED
        assert backend.get_task_meta(elsewhere)["status"] == states.STARTED
        assert backend.get_task_meta(custom)["status"] == "PROGRESS"
        assert running.get(timeout=30) == "slept"
        assert running.state == states.SUCCESS
    finally:
        capp.close()
