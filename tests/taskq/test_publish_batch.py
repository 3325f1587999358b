"""Publishing many tasks at once: ``send_many``, ``publish_batch``, groups and chords, on the
real brokers. Redis sends a batch in one pipeline, RabbitMQ waits for all its confirms once;
the messages are the ones ``send_task`` sends, so taskq and Celery workers run them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from taskq import TaskQ
from taskq.canvas import group
from taskq.publish import queue_for
from taskq.testing.workers import ThreadWorker
from tests.redis_commands import RedisCommands


@pytest.fixture
def redis_app(redis_url: str, unique: str, redis_client: Any) -> Iterator[TaskQ]:
    options = {"global_keyprefix": f"{unique}:"}
    app = TaskQ("batch", broker=redis_url, backend=redis_url, environ={},
                broker_transport_options=options, result_backend_transport_options=options,
                task_default_queue=unique)

    @app.task(name="batch.add")
    def add(a: int, b: int) -> int:
        return a + b

    yield app
    app.close()
    keys = list(redis_client.scan_iter(match=f"{unique}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@contextlib.contextmanager
def running(app: TaskQ, hostname: str, queue: str) -> Iterator[None]:
    worker = ThreadWorker(app, hostname=hostname, queues=[queue]).start()
    try:
        yield
    finally:
        worker.stop()


def _queued(app: TaskQ, name: str) -> int:
    """Messages in a RabbitMQ queue."""
    with app.connection() as conn:
        _, count, _ = queue_for(app.conf, name)(conn.default_channel).queue_declare(
            passive=True)
    return int(count)


def test_send_many_on_redis_is_one_round_trip_and_each_result_is_returned(
        redis_app, unique, redis_client, monkeypatch):
    add = redis_app.tasks["batch.add"]
    redis_app.send_task("batch.add", (0, 0))  # warm: connection, declaration, binding table
    commands = RedisCommands(monkeypatch)
    results = redis_app.send_many(add.s(i, i) for i in range(30))
    assert commands.sent == [["EVALSHA"] * 30]
    assert len({r.id for r in results}) == 30
    assert redis_client.llen(f"{unique}:{unique}") == 31
    # And a worker runs them: each result is its own call's
    with running(redis_app, f"{unique}@batch", unique):
        assert [r.get(timeout=20) for r in results] == [2 * i for i in range(30)]


def test_a_group_on_redis_is_published_in_one_pipeline(redis_app, unique, monkeypatch):
    add = redis_app.tasks["batch.add"]
    redis_app.send_task("batch.add", (0, 0))
    commands = RedisCommands(monkeypatch)
    result = group(add.s(i, 1) for i in range(10)).apply_async()
    assert commands.sent == [["EVALSHA"] * 10]
    with running(redis_app, f"{unique}@group", unique):
        assert result.get(timeout=20) == [i + 1 for i in range(10)]


def test_a_batch_whose_block_raises_publishes_nothing_on_redis(redis_app, unique,
                                                                redis_client):
    with pytest.raises(ZeroDivisionError), redis_app.publish_batch():
        redis_app.send_task("batch.add", (1, 1))
        with redis_app.publish_batch():  # joins the outer batch
            redis_app.send_task("batch.add", (2, 2))
        _ = 1 / 0
    assert redis_client.llen(f"{unique}:{unique}") == 0
    redis_app.send_task("batch.add", (3, 3))  # the producer is usable after it
    assert redis_client.llen(f"{unique}:{unique}") == 1


def test_send_many_refuses_what_is_not_a_signature(redis_app):
    with pytest.raises(TypeError, match=r"send_many takes signatures such as add.s\(1, 2\)"):
        redis_app.send_many([("batch.add", (1, 2))])


def test_messages_sent_by_the_new_paths_run_on_a_celery_worker(redis_app, unique):
    celery = pytest.importorskip("celery")
    from celery.contrib.testing.worker import start_worker

    options = {"global_keyprefix": f"{unique}:"}
    capp = celery.Celery("batch", broker=redis_app.conf.broker_url,
                         backend=redis_app.conf.broker_url, set_as_current=False)
    capp.conf.update(broker_transport_options=options,
                     result_backend_transport_options=options, task_default_queue=unique,
                     worker_hijack_root_logger=False)

    @capp.task(name="batch.add")
    def add(a: int, b: int) -> int:
        return a + b

    one = redis_app.send_task("batch.add", (20, 1))
    many = redis_app.send_many(redis_app.tasks["batch.add"].s(i, 100) for i in range(5))
    with start_worker(capp, pool="solo", perform_ping_check=False, shutdown_timeout=10,
                      loglevel="WARNING"):
        assert one.get(timeout=20) == 21
        assert [r.get(timeout=20) for r in many] == [100, 101, 102, 103, 104]
    capp.close()


@pytest.fixture
def amqp_app(amqp_url: str, unique: str) -> Iterator[TaskQ]:
    app = TaskQ("batch", broker=amqp_url, environ={}, task_default_queue=unique)

    @app.task(name="batch.add")
    def add(a: int, b: int) -> int:
        return a + b

    yield app
    with Connection(amqp_url) as conn:
        try:
            queue_for(app.conf, unique)(conn.default_channel).delete()
        except Exception:
            pass
    app.close()


def test_send_many_on_rabbitmq_waits_for_the_confirms_once_after_writing_every_message(
        amqp_app, unique, monkeypatch):
    import amqp

    add = amqp_app.tasks["batch.add"]
    amqp_app.send_task("batch.add", (0, 0))  # warm: connection, declaration
    # Given confirms on (taskq's default), what the channel does, in order
    log: list[str] = []
    publish, wait = amqp.channel.Channel._basic_publish, amqp.abstract_channel.AbstractChannel.wait

    def spy_publish(self: Any, *args: Any, **kwargs: Any) -> Any:
        log.append("publish")
        return publish(self, *args, **kwargs)

    def spy_wait(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        if amqp.spec.Basic.Ack in (method if isinstance(method, list) else [method]):
            log.append("wait")
        return wait(self, method, *args, **kwargs)

    monkeypatch.setattr(amqp.channel.Channel, "_basic_publish", spy_publish)
    monkeypatch.setattr(amqp.abstract_channel.AbstractChannel, "wait", spy_wait)
    results = amqp_app.send_many(add.s(i, i) for i in range(50))
    # Then the first message is confirmed (its tag numbers the rest), the others are written
    # without a wait, and the waiting comes once all are written
    assert log[:2] == ["publish", "wait"]
    assert log[2:51] == ["publish"] * 49
    assert log[51:] and set(log[51:]) == {"wait"}
    # And when it returns every message is in the queue (confirmed means enqueued)
    monkeypatch.undo()
    assert len(results) == 50
    assert _queued(amqp_app, unique) == 51
    # And the producer's channel confirms single sends again afterwards
    with amqp_app.producer() as producer:
        channel = producer.channel
        assert channel.basic_publish == channel.basic_publish_confirm
    amqp_app.send_task("batch.add", (1, 2))
    assert _queued(amqp_app, unique) == 52
