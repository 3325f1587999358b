"""The shop's tests: every fixture of taskq's pytest plugin, on a real worker."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shop import tasks

from taskq.testing import assert_no_lost, wait_for
from taskq.testing.strategies import IdempotencyMachine, task_args

# Waits are conditions with a deadline: a loaded CI machine may take seconds where a laptop
# takes milliseconds, so the deadlines are generous (they only matter when something hangs).
WAIT = 60


def test_add_runs_on_a_real_worker(taskq_app, taskq_worker):
    result = tasks.add.delay(2, 3)
    assert result.get(timeout=WAIT) == 5


def test_receipt_is_retried_until_sent(taskq_app, taskq_worker):
    result = tasks.send_receipt.delay("ann@example.org", fail_times=2)
    assert result.get(timeout=WAIT) == "sent to ann@example.org after 2 retries"


def test_many_tasks_none_lost(taskq_app, taskq_worker):
    ids = [tasks.add.delay(i, i).id for i in range(20)]
    final = assert_no_lost(taskq_app, ids, timeout=WAIT)
    assert set(final.values()) == {"SUCCESS"}


def test_events_show_the_task_life(taskq_app, taskq_worker, taskq_events):
    result = tasks.add.delay(1, 1)
    wait_for(result, "SUCCESS")
    seen = taskq_events.wait_for(result.id, "task-succeeded")
    assert seen.index("task-started") < seen.index("task-succeeded")


def test_session_worker_serves_many_tests(taskq_session_app, taskq_session_worker):
    assert tasks.add.apply_async((4, 4)).get(timeout=WAIT) == 8


@pytest.mark.taskq(worker_pool="solo")
def test_marker_picks_the_pool(taskq_app, taskq_worker):
    assert taskq_worker.worker.pool_kind == "solo"
    assert tasks.add.delay(1, 2).get(timeout=WAIT) == 3


@pytest.mark.taskq_private_broker  # a network fault: a broker with connections to cut
def test_worker_survives_a_cut_broker(taskq_chaos, taskq_app, taskq_worker):
    assert tasks.add.delay(1, 1).get(timeout=WAIT) == 2
    assert taskq_chaos.cut_broker() >= 1
    assert tasks.add.delay(2, 2).get(timeout=WAIT) == 4


@settings(max_examples=20)
@given(args=task_args(max_size=3))
def test_any_json_arguments_survive_the_trip(args):
    # Eager: the same semantics as the worker, no broker needed.
    from shop.app import app

    echo = app.tasks.get("shop.tasks.echo") or app.task(name="shop.tasks.echo")(lambda *a: list(a))
    assert echo.apply(args).get() == args


class ChargeIsIdempotent(IdempotencyMachine):
    task = tasks.charge

    def __init__(self) -> None:
        super().__init__()
        tasks.LEDGER.clear()

    @classmethod
    def arguments(cls):
        return st.tuples(st.tuples(st.uuids().map(str), st.integers(1, 10_000)).map(list),
                         st.just({}))

    def observe(self):
        return dict(tasks.LEDGER)


TestChargeIsIdempotent = ChargeIsIdempotent.TestCase
TestChargeIsIdempotent.settings = settings(max_examples=20, stateful_step_count=10)


@pytest.mark.taskq(worker_pool="prefork")
def test_report_is_rerun_when_its_child_is_killed(taskq_app, taskq_worker, taskq_chaos,
                                                  tmp_path):
    """acks_late + reject_on_worker_lost: kill the child running my task; it runs again."""
    from chaos import wait_until

    marker = tmp_path / "first-run"
    result = tasks.build_report.delay(30, str(marker))
    wait_until(marker.exists, timeout=WAIT, what="the report started")
    taskq_chaos.kill_child(running=result.id)
    assert result.get(timeout=WAIT)["rerun"] is True


@pytest.mark.taskq(worker_pool="prefork")
def test_a_frozen_child_finishes_after_it_thaws(taskq_app, taskq_worker, taskq_chaos):
    import time

    result = tasks.build_report.delay(0.5)
    started = time.monotonic()
    taskq_chaos.freeze_child(1.0, running=result.id)
    assert result.get(timeout=WAIT)["rerun"] is False
    assert time.monotonic() - started >= 1.0


@pytest.mark.taskq_private_broker
def test_worker_recovers_from_a_black_holed_broker(taskq_chaos, taskq_app, taskq_worker):
    assert tasks.add.delay(1, 2).get(timeout=WAIT) == 3
    taskq_chaos.blackhole_broker(1.0)
    assert tasks.add.delay(2, 3).get(timeout=WAIT) == 5


@pytest.mark.taskq_private_broker
def test_worker_survives_a_broker_restart(taskq_chaos, taskq_app, taskq_worker):
    if taskq_chaos.scheme != "redis":
        pytest.skip("restart_broker runs a private redis-server")
    assert tasks.add.delay(1, 1).get(timeout=WAIT) == 2
    taskq_chaos.restart_broker()
    assert tasks.add.delay(3, 3).get(timeout=WAIT) == 6
