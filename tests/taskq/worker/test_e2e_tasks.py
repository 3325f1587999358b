"""Tasks run on a real worker and their results come back: retries, eta, revoke, link.

Each test runs on Redis and RabbitMQ, with the solo and the threads pool.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time

import pytest
from e2e_support import Broker, Ledger, StartWorker, wait_until

from taskq import Signature, states

pytestmark = pytest.mark.parametrize("pool", ["solo", "threads"])


def test_task_runs_and_its_result_comes_back(broker: Broker, worker: StartWorker,
                                             pool: str) -> None:
    w = worker(broker, pool=pool)
    client = broker.app()
    result = client.send_task("appmod.add", (2, 3))
    assert result.get(timeout=10) == 5
    assert result.state == states.SUCCESS
    w.wait_log(rf"appmod\.add\[{result.id}\] SUCCESS")


def test_failing_task_stores_its_exception(broker: Broker, worker: StartWorker,
                                           pool: str) -> None:
    worker(broker, pool=pool)
    result = broker.app().send_task("appmod.boom")
    exc = result.get(timeout=10, propagate=False)
    assert result.state == states.FAILURE
    assert isinstance(exc, ValueError) and str(exc) == "boom"


def test_retries_with_countdown_happen(broker: Broker, worker: StartWorker, ledger: Ledger,
                                       pool: str) -> None:
    """Given a task that fails twice and retries with countdown=0.5, it succeeds on the third
    run, and each run starts at least 0.5 s after the previous one."""
    worker(broker, pool=pool)
    result = broker.app().send_task("appmod.flaky", (2, 0.5, str(ledger)))
    assert result.get(timeout=15) == 2
    runs = [line for line in ledger.lines() if line[:2] == ["start", result.id]]
    assert [int(line[4]) for line in runs] == [0, 1, 2]
    times = [float(line[3]) for line in runs]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.45 for gap in gaps), gaps


def test_eta_is_honoured(broker: Broker, worker: StartWorker, ledger: Ledger,
                         pool: str) -> None:
    w = worker(broker, pool=pool)
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    result = broker.app().send_task("appmod.stamp", (str(ledger),), eta=eta)
    w.wait_log(rf"received appmod\.stamp\[{result.id}\]")  # the worker holds it meanwhile
    started = result.get(timeout=10)
    assert started >= eta.timestamp() - 0.01, (started, eta.timestamp())
    assert started - eta.timestamp() < 1.5  # and not much later either


def test_revoked_task_does_not_run_and_is_revoked(broker: Broker, worker: StartWorker,
                                                  ledger: Ledger, pool: str) -> None:
    """Given a task held for its eta, when it is revoked before the eta, then it never runs
    and its state is REVOKED."""
    w = worker(broker, pool=pool)
    client = broker.app()
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.0)
    doomed = client.send_task("appmod.stamp", (str(ledger),), eta=eta)
    w.wait_log(rf"received appmod\.stamp\[{doomed.id}\]")
    client.control.revoke(doomed.id)
    wait_until(lambda: doomed.state == states.REVOKED, 10, "state REVOKED")
    # A marker due just after the revoked task's eta: once it ran, the revoked one had its turn.
    marker = client.send_task("appmod.stamp", (str(ledger),),
                              eta=eta + dt.timedelta(seconds=0.2))
    assert marker.get(timeout=10) >= eta.timestamp()
    assert ledger.starts(doomed.id) == []
    assert doomed.state == states.REVOKED
    w.wait_log(rf"discarded revoked task appmod\.stamp\[{doomed.id}\]")


def test_link_callback_runs_with_the_result(broker: Broker, worker: StartWorker,
                                            ledger: Ledger, pool: str) -> None:
    worker(broker, pool=pool)
    client = broker.app()
    parent = client.send_task("appmod.add", (2, 3),
                              link=Signature("appmod.record", kwargs={"ledger": str(ledger)}))
    assert parent.get(timeout=10) == 5

    def callback_line() -> list[str] | None:
        return next((line for line in ledger.lines()
                     if line[0] == "record" and line[3] == f"parent={parent.id}"), None)

    line = wait_until(callback_line, 10, "the link callback to run")
    assert line[2] == "5"
    assert client.AsyncResult(line[1]).get(timeout=10) == 5


def test_back_to_back_tasks_do_not_stall(broker: Broker, worker: StartWorker,
                                         pool: str) -> None:
    """60 tiny tasks take about a second; a job handed to the pool from inside the loop
    once waited for the loop's 1 s poll timeout (solo: 0.23-0.33 s per task, 7-10 s for 30,
    14 s or more for 60). The bound allows 0.2 s per task for a loaded machine."""
    worker(broker, pool=pool, concurrency=3)
    client = broker.app()
    start = time.monotonic()
    results = [client.send_task("appmod.add", (i, i)) for i in range(60)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(60)]
    assert time.monotonic() - start < 60 * 0.2
