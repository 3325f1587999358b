"""``leases-released``: after the workers stopped, no lease is left in the cell's broker space
and no message of an ended task is still queued (issue 13 #5: 72 leases held after the worker
stopped). The oracle on hand-made evidence; the measurement on the real Redis and SQLite; and
a run with a worker that leaks leases on purpose."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from kombu import Connection, Exchange, Producer, Queue

import taskq  # noqa: F401 - registers the sqlite:// alias
from stress.ledger import Book, Entry
from stress.leftovers import Leftovers, measure
from stress.oracles import Evidence, explore_verdicts, leases_released
from stress.spaces import make_space
from stress.suites import Suite, parse_cell
from taskq.transports.redis import TRANSPORT_ALIAS
from tests.stress.conftest import HERE, write_suite


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _ev(leftovers: Leftovers | None, **oracles: object) -> Evidence:
    """Task a finished, b failed (its child was killed), c was requeued and never ran again."""
    book = Book()
    book.add([_e("published", "a", 1, 0.1, kind="noop", expect="ok"),
              _e("started", "a", 7, 0.2), _e("finished", "a", 7, 0.3, outcome="ok"),
              _e("published", "b", 1, 0.1, kind="noop", expect="ok"),
              _e("started", "b", 8, 0.2), _e("lost", "b", 2, 0.3, requeued=False),
              _e("published", "c", 1, 0.1, kind="noop", expect="ok"),
              _e("started", "c", 8, 0.2), _e("lost", "c", 2, 0.3, requeued=True)])
    return Evidence(suite=Suite("t", "", Path("t.toml"), oracles=dict(oracles)),
                    cell=parse_cell("acks=late-reject"), book=book, faults=[],
                    deadlock=False, deadlock_pending=0, stall_bound=10.0, baseline=None,
                    health=None, worker_starts=1, is_taskq=True, publish_errors=0,
                    directory=Path("."), leftovers=leftovers)


def test_leases_left_after_the_workers_stopped_fail_with_their_count() -> None:
    verdict = leases_released(_ev(Leftovers(leases=("a", "c", None))))
    assert not verdict.passed
    assert "3 lease(s) still held" in verdict.message
    assert verdict.figures["leases_left"] == 3
    assert verdict.figures["leases_of_ended_tasks"] == 1  # a finished; c was requeued


def test_a_queued_message_of_an_ended_task_fails() -> None:
    verdict = leases_released(_ev(Leftovers(queued=("a", "b", "c", "x"))))
    assert not verdict.passed
    assert "2 message(s) of ended tasks still queued: a, b" in verdict.message
    assert verdict.figures == {"leases_left": 0, "leases_of_ended_tasks": 0,
                               "queued_left": 4, "queued_ended": 2}


def test_nothing_left_or_only_unended_tasks_queued_pass() -> None:
    assert leases_released(_ev(Leftovers())).passed
    verdict = leases_released(_ev(Leftovers(queued=("c", "x"))))
    assert verdict.passed and verdict.figures["queued_left"] == 2  # nothing-lost judges them


def test_a_failed_measurement_fails_and_an_unmeasured_transport_says_why() -> None:
    failed = leases_released(_ev(Leftovers(error="ConnectionError: refused")))
    assert not failed.passed and "ConnectionError" in failed.message
    skipped = leases_released(_ev(Leftovers(skipped="amqp: the broker requeues")))
    assert skipped.passed and skipped.message == "not measured: amqp: the broker requeues"


def test_the_oracle_runs_only_when_the_suite_asks_for_it() -> None:
    leaky = Leftovers(leases=("a",))
    assert "leases-released" not in {v.oracle for v in explore_verdicts(_ev(leaky), [])}
    verdicts = explore_verdicts(_ev(leaky, leases_released=True), [])
    assert [(v.oracle, v.passed) for v in verdicts] == [("leases-released", False)]


def _publish(conn: Connection, queue: Queue, task_ids: list[str]) -> None:
    producer = Producer(conn)
    for task_id in task_ids:
        producer.publish([[], {}, {}], exchange=queue.exchange, routing_key=queue.routing_key,
                         declare=[queue], serializer="json",
                         headers={"id": task_id, "task": "stress.noop"})


@pytest.mark.redis
def test_redis_leases_and_queued_messages_are_read_under_the_cells_prefix(
        tmp_path: Path, redis_url: str) -> None:
    # Given a delivery never acked (its lease stays: closing requeues nothing) and one queued
    space = make_space("redis", tmp_path, redis_url)
    try:
        queue = Queue(space.queue, Exchange(space.queue), routing_key=space.queue)
        conn = Connection(space.url, transport=TRANSPORT_ALIAS,
                          transport_options=space.transport_options)
        _publish(conn, queue, ["a", "b"])
        assert conn.default_channel.basic_get(space.queue) is not None
        conn.release()
        # When the cell measures what is left
        left = measure(space)
        # Then it finds the lease of a and the queued b
        assert left == Leftovers(leases=("a",), queued=("b",))
        assert not leases_released(_ev(left)).passed
    finally:
        space.cleanup()
    assert measure(space) == Leftovers()


def test_sqlite_leased_and_ready_rows_of_the_cells_queue_are_read(tmp_path: Path) -> None:
    space = make_space("sqlite", tmp_path)
    assert measure(space) == Leftovers()  # no database yet: nothing can be left
    queue = Queue(space.queue, Exchange(space.queue), routing_key=space.queue)
    conn = Connection(space.url, transport_options=space.transport_options)
    _publish(conn, queue, ["a", "b"])
    assert conn.default_channel.basic_get(space.queue) is not None
    conn.release()
    assert measure(space) == Leftovers(leases=("a",), queued=("b",))


def test_amqp_is_not_measured() -> None:
    left = measure(make_space("amqp", Path(".")))
    assert left.skipped is not None and left.skipped.startswith("amqp:")


LEAKY = """
[suite]
name = "leaky"
description = "a short run without faults"
duration = 3
rate = 20
max_time = 60

[workload]
noop = 1

[oracles]
deadlock_after = 10
min_tasks = 10
leases_released = true
"""


@pytest.mark.redis
def test_a_worker_that_leaves_leases_fails_leases_released(stress_run, tmp_path: Path,
                                                           redis_url: str) -> None:
    # Given a worker that runs every task but never acks every 5th message
    suite = write_suite(tmp_path / "leaky.toml", LEAKY)
    run = stress_run("--suite", str(suite), "--broker", redis_url, "--seed", "2",
                     "--worker-cmd", f"{sys.executable} {HERE / 'leaky_worker.py'} 5")
    # Then nothing is lost, but the leases it held after it stopped are counted
    assert run.code == 1, run.output
    assert run.verdict("nothing-lost")["passed"], run.output
    verdict = run.verdict("leases-released")
    assert not verdict["passed"]
    assert verdict["figures"]["leases_left"] >= 5
    assert verdict["figures"]["leases_of_ended_tasks"] == verdict["figures"]["leases_left"]
