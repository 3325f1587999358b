"""Interop with the real Celery package: either side sends, runs and reads the other's work."""

from __future__ import annotations

import datetime as dt

import pytest

celery = pytest.importorskip("celery")
from celery.contrib.testing.worker import start_worker  # noqa: E402
from kombu import Consumer  # noqa: E402

from taskq import TaskQ  # noqa: E402
from taskq.protocol import decode  # noqa: E402
from taskq.publish import queue_for  # noqa: E402


def celery_app(url: str, unique: str, backend: str | None = None) -> celery.Celery:
    app = celery.Celery("interop", broker=url, backend=backend, set_as_current=False)
    options = {"global_keyprefix": f"{unique}:"} if url.startswith("redis") else {}
    app.conf.update(broker_transport_options=options,
                    result_backend_transport_options=options, task_default_queue=unique,
                    worker_hijack_root_logger=False)
    return app


@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_a_celery_message_decodes_to_the_same_call(broker, request, unique):
    url = request.getfixturevalue(f"{broker}_url")
    capp = celery_app(url, unique)
    eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
    sent = capp.send_task("proj.add", (1, "two"), {"k": [3]}, eta=eta, expires=3600,
                          time_limit=30, soft_time_limit=20, retries=2, queue=unique)
    tq = TaskQ("t", broker=url, environ={}, task_default_queue=unique,
               broker_transport_options=capp.conf.broker_transport_options)
    got = []
    with tq.connection() as conn:
        queue = queue_for(tq.conf, unique)
        with Consumer(conn, [queue], callbacks=[lambda b, m: got.append(m)], accept=["json"]):
            for _ in range(20):
                if got:
                    break
                try:
                    conn.drain_events(timeout=0.5)
                except TimeoutError:
                    pass
        assert got, "the Celery message never arrived"
        m = got[0]
        m.ack()
        msg = decode(m.body, content_type=m.content_type, content_encoding=m.content_encoding,
                     headers=m.headers, properties=m.properties, accept=["json"])
        queue(conn.default_channel).delete()
    assert (msg.task, msg.id) == ("proj.add", sent.id)
    assert list(msg.args) == [1, "two"] and msg.kwargs == {"k": [3]}
    assert msg.eta is not None and abs((msg.eta - eta).total_seconds()) < 1
    assert msg.expires is not None and msg.expires > eta
    assert (msg.retries, msg.time_limit, msg.soft_time_limit) == (2, 30, 20)
    capp.close()


def test_a_taskq_task_runs_on_a_celery_worker_and_taskq_reads_the_result(redis_url, unique):
    capp = celery_app(redis_url, unique, backend=redis_url)

    @capp.task(name="interop.mul")
    def mul(a, b):
        return a * b

    @capp.task(name="interop.fail")
    def fail():
        raise KeyError("missing thing")

    tq = TaskQ("t", broker=redis_url, backend=redis_url, environ={}, task_default_queue=unique,
               broker_transport_options={"global_keyprefix": f"{unique}:"},
               result_backend_transport_options={"global_keyprefix": f"{unique}:"})
    with start_worker(capp, pool="solo", perform_ping_check=False, shutdown_timeout=10,
                      loglevel="WARNING"):
        assert tq.send_task("interop.mul", (6, 7)).get(timeout=20) == 42
        with pytest.raises(KeyError, match="missing thing"):
            tq.send_task("interop.fail").get(timeout=20)
    tq.close()
    capp.close()


@pytest.mark.parametrize("separator", [":", ""])
def test_celery_reads_a_result_stored_by_taskq(redis_url, unique, separator):
    """Under the same keys, with a global_keyprefix that ends in a separator or not (Celery
    5.5+ then puts '_' after it, for results as for groups)."""
    capp = celery_app(redis_url, unique, backend=redis_url)
    options = {"global_keyprefix": f"{unique}{separator}"}
    capp.conf.result_backend_transport_options = options
    tq = TaskQ("t", backend=redis_url, environ={}, result_backend_transport_options=options)
    tq.backend.mark_as_done("ok-id", {"answer": 42})
    tq.backend.mark_as_failure("bad-id", ValueError("nope"))
    assert capp.AsyncResult("ok-id").get(timeout=5) == {"answer": 42}
    with pytest.raises(ValueError, match="nope"):
        capp.AsyncResult("bad-id").get(timeout=5)
    capp.close()
