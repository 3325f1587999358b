"""``task_queues``: queues declared as given (kombu Queues with arguments, exchanges, routing
keys), e.g. a RabbitMQ priority queue that a Celery deployment declared first."""

from __future__ import annotations

import json

from e2e_support import Broker, Ledger, StartWorker
from kombu import Exchange, Queue

from taskq import TaskQ
from taskq.publish import queue_for
from taskq.worker.consumer import queues_for


def test_a_priority_queue_declared_by_a_celery_deployment_is_consumed(
        amqp_broker: Broker, worker: StartWorker) -> None:
    b = amqp_broker
    # Given the queue on RabbitMQ with x-max-priority, as a Celery deployment declares it
    existing = Queue(b.name, Exchange(b.name, "direct"), routing_key=b.name, durable=True,
                     queue_arguments={"x-max-priority": 10})
    with b.raw_connection() as conn:
        existing(conn.default_channel).declare()
    # When task_queues describes it, the worker starts on it and runs what a client sends
    spec = json.dumps([{"name": b.name, "exchange": b.name, "routing_key": b.name,
                        "queue_arguments": {"x-max-priority": 10}}])
    w = worker(b, env={"TASKQ_TASK_QUEUES": spec})
    client = b.app(TASKQ_TASK_QUEUES=spec)
    results = [client.send_task("appmod.add", (i, 1), priority=i % 10) for i in range(5)]
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(5)]
    assert w.alive()


def test_a_quorum_queue_is_consumed_with_a_per_consumer_prefetch(
        amqp_broker: Broker, worker: StartWorker, ledger: Ledger) -> None:
    """RabbitMQ refuses a global prefetch on a quorum queue (540 NOT_IMPLEMENTED at
    basic.consume): the worker consumes it with a per-consumer prefetch, as Celery 5.5 does,
    instead of retrying for ever as if the broker were down."""
    b = amqp_broker
    spec = json.dumps([{"name": b.name, "exchange": b.name, "routing_key": b.name,
                        "queue_arguments": {"x-queue-type": "quorum"}}])
    w = worker(b, env={"TASKQ_TASK_QUEUES": spec})
    client = b.app(TASKQ_TASK_QUEUES=spec)
    results = [client.send_task("appmod.add", (i, 1)) for i in range(5)]
    late = client.send_task("appmod.late_sleeper", (0.1, str(ledger)))
    assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(5)]
    assert late.get(timeout=60) == "slept-late"
    assert w.alive() and "global qos" not in w.log()


def test_task_queues_keep_their_arguments_and_a_worker_without_q_consumes_them_all() -> None:
    app = TaskQ("q", broker="amqp://guest:guest@127.0.0.1:5672//", environ={}, task_queues=[
        Queue("hi", Exchange("prio", "topic"), routing_key="hi.#",
              queue_arguments={"x-max-priority": 10}),
        {"name": "quorum", "queue_arguments": {"x-queue-type": "quorum"}},
        "plain",
    ])
    consumed = queues_for(app, None, None)
    assert [q.name for q in consumed] == ["hi", "quorum", "plain"]
    hi, quorum, plain = consumed
    assert hi.queue_arguments == {"x-max-priority": 10}
    assert (hi.exchange.name, hi.exchange.type, hi.routing_key) == ("prio", "topic", "hi.#")
    assert quorum.queue_arguments == {"x-queue-type": "quorum"}
    assert (quorum.exchange.name, quorum.routing_key) == ("quorum", "quorum")
    assert (plain.exchange.name, plain.routing_key) == ("plain", "plain")
    # publishing to them declares the same queue, so the broker never sees two shapes
    assert queue_for(app.conf, "hi").queue_arguments == {"x-max-priority": 10}
    assert [q.name for q in queues_for(app, ["plain"], None)] == ["plain"]
    assert queue_for(app.conf, None).name == "celery"  # the default queue is not among them
    app.close()


def test_task_queues_from_the_environment_in_celerys_dict_form() -> None:
    env = {"TASKQ_TASK_QUEUES": json.dumps({"a": {"routing_key": "ka"}, "b": None})}
    app = TaskQ("q", broker="amqp://guest:guest@127.0.0.1:5672//", environ=env)
    a, b = queues_for(app, None, None)
    assert (a.name, a.routing_key, b.name) == ("a", "ka", "b")
    app.close()
