"""Stopping a worker loses nothing it may not lose (DESIGN.md's delivery table, SCENARIOS #13,
#14): warm shutdown finishes running tasks and gives reserved ones back; acks_late tasks come
back after the worker is SIGKILLed; a second SIGTERM or SIGQUIT stops at once."""

from __future__ import annotations

import datetime as dt
import signal
import time

import pytest
from e2e_support import Broker, Ledger, StartWorker, wait_until

from taskq import states


@pytest.mark.parametrize("broker", [
    "amqp",
    "redis",
], indirect=True)
def test_acks_late_task_is_redelivered_after_the_worker_is_killed(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Given worker A running an acks_late task, when A is SIGKILLed and B starts, then the
    task runs again on B and succeeds."""
    a = worker(broker, pool="threads", concurrency=2)
    client = broker.app()
    result = client.send_task("appmod.late_sleeper", (1.5, str(ledger)))
    [(pid_a, _)] = ledger.wait_started(result.id)
    assert pid_a == a.pid
    a.kill()
    b = worker(broker, pool="threads", concurrency=2)
    # RabbitMQ requeues at once when A's connection drops; a Redis lease needs to expire.
    timeout = 10 if broker.kind == "amqp" else 30
    runs = ledger.wait_started(result.id, timeout=timeout, times=2)
    assert [pid for pid, _ in runs] == [a.pid, b.pid]
    assert result.get(timeout=10) == "slept-late"


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_warm_shutdown_finishes_running_tasks_and_gives_back_reserved_ones(
        broker: Broker, worker: StartWorker, ledger: Ledger, pool: str) -> None:
    """SIGTERM while a task runs, eta tasks are held and (threads) others wait for a slot:
    the running task's result is SUCCESS, nothing else ran on A, no WorkerLostError, and a
    worker started afterwards runs every task that was given back."""
    a = worker(broker, pool=pool, concurrency=1)
    client = broker.app()
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2.5)
    held = [client.send_task("appmod.stamp", (str(ledger),), eta=eta) for _ in range(2)]
    for r in held:
        a.wait_log(rf"received appmod\.stamp\[{r.id}\]")
    running = client.send_task("appmod.sleeper", (1.5, str(ledger)))
    ledger.wait_started(running.id)
    reserved = []
    if pool == "threads":  # solo cannot receive while its one task blocks the loop
        reserved = [client.send_task("appmod.stamp", (str(ledger),)) for _ in range(2)]
        for r in reserved:
            a.wait_log(rf"received appmod\.stamp\[{r.id}\]")
    assert not ledger.ended(running.id)

    a.signal(signal.SIGTERM)
    assert a.wait_exit(10) == 0
    assert ledger.ended(running.id)
    assert running.get(timeout=5) == "slept"
    assert running.state == states.SUCCESS
    given_back = held + reserved
    assert all(ledger.starts(r.id) == [] for r in given_back)
    log = a.log()
    assert "warm shutdown" in log
    assert "WorkerLostError" not in log

    b = worker(broker, pool="threads", concurrency=2)
    for r in given_back:
        [(pid, _)] = ledger.wait_started(r.id, timeout=10)
        assert pid == b.pid
    assert all(r.get(timeout=10) >= eta.timestamp() - 0.01 for r in held)
    assert all(r.state == states.SUCCESS for r in given_back)


@pytest.mark.parametrize("signals", [
    pytest.param((signal.SIGTERM, signal.SIGTERM), id="TERM-TERM"),
    pytest.param((signal.SIGQUIT,), id="QUIT"),
])
def test_cold_shutdown_exits_promptly_while_a_task_runs(
        broker: Broker, worker: StartWorker, ledger: Ledger,
        signals: tuple[signal.Signals, ...]) -> None:
    a = worker(broker, pool="threads", concurrency=1)
    client = broker.app()
    running = client.send_task("appmod.sleeper", (60, str(ledger)))
    ledger.wait_started(running.id)
    for n, signum in enumerate(signals):
        if n:
            a.wait_log("warm shutdown")
        a.signal(signum)
    start = time.monotonic()
    a.wait_exit(30)
    assert time.monotonic() - start < 30  # not after the running task's 60 s
    assert "cold shutdown" in a.log()
    assert not ledger.ended(running.id)


def test_acks_late_task_cut_short_by_a_cold_shutdown_runs_again(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """DESIGN.md's table, "main process dies" under acks_late: a task cut short by SIGQUIT
    was never acked, so the next worker runs it (the early-ack one would be lost)."""
    a = worker(broker, pool="threads", concurrency=1)
    client = broker.app()
    result = client.send_task("appmod.late_sleeper", (3.0, str(ledger)))
    ledger.wait_started(result.id)
    a.signal(signal.SIGQUIT)
    a.wait_exit(2.5)
    assert not ledger.ended(result.id)
    b = worker(broker, pool="threads", concurrency=1)
    runs = ledger.wait_started(result.id, timeout=10, times=2)
    assert [pid for pid, _ in runs] == [a.pid, b.pid]
    assert result.get(timeout=10) == "slept-late"


def test_warm_shutdown_waits_for_a_long_task(broker: Broker, worker: StartWorker,
                                             ledger: Ledger) -> None:
    """One SIGTERM does not cut a running task short: the worker is still alive while it
    runs, and exits right after it ends."""
    a = worker(broker, pool="threads", concurrency=2)
    running = broker.app().send_task("appmod.sleeper", (2.0, str(ledger)))
    ledger.wait_started(running.id)
    a.signal(signal.SIGTERM)
    a.wait_log("warm shutdown")
    assert a.alive() and not ledger.ended(running.id)
    assert a.wait_exit(10) == 0
    assert ledger.ended(running.id)
    assert running.get(timeout=5) == "slept"
    wait_until(lambda: "stopped" in a.log(), 5, "the stopped line")


def test_hup_restarts_in_place_and_consumes_again(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(redis_broker, pool="threads")
    offset = len(w.log())
    w.signal(signal.SIGHUP)
    w.wait_log(r"restarting in place", after=offset)
    w.wait_log(r"ready: pool=threads", after=offset + 1)
    assert w.alive()
    client = redis_broker.app()
    result = client.send_task("appmod.stamp", (str(ledger),))
    result.get(timeout=10)
    [(pid, _)] = ledger.starts(result.id)
    assert pid == w.pid  # the same process, exec'd in place


def test_soft_shutdown_timeout_lets_a_short_task_finish_on_a_cold_shutdown(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    w = worker(redis_broker, pool="threads", concurrency=1, args=["--soft-shutdown-timeout",
                                                                  "5"])
    client = redis_broker.app()
    running = client.send_task("appmod.sleeper", (1.0, str(ledger)))
    ledger.wait_started(running.id)
    w.signal(signal.SIGQUIT)
    assert w.wait_exit(10) == 0
    assert ledger.ended(running.id)
    assert running.get(timeout=5) == "slept"


def test_early_ack_jobs_queued_in_a_child_at_a_cold_shutdown_run_on_the_next_worker(
        broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """Early acks are sent before a job reaches a child, so the broker never delivers the jobs
    a fast child still held again. A cold shutdown (not a crash) gives them back to the
    worker, which publishes them again: they run on the next worker, once."""
    a = worker(broker, pool="prefork", concurrency=1, args=["-O", "fast"])
    client = broker.app()
    running = client.send_task("appmod.sleeper", (60.0, str(ledger)))
    ledger.wait_started(running.id)
    queued = [client.send_task("appmod.sleeper", (0.01, str(ledger))) for _ in range(2)]

    def queued_in_child() -> bool:
        replies = client.control.broadcast("stats", destination=[a.hostname], reply=True,
                                           timeout=2)
        return any(r.get(a.hostname, {}).get("pool", {}).get("queued", 0) >= 1
                   for r in replies or [])

    wait_until(queued_in_child, timeout=30, what="a short task queued in the child")
    a.signal(signal.SIGQUIT)
    a.wait_exit(30)
    b = worker(broker, pool="threads", concurrency=2)
    for result in queued:
        assert result.get(timeout=60) == "slept"
        assert [pid for pid, _ in ledger.starts(result.id)] == [b.pid]
