"""Celery's worker settings and task methods on a real ``taskq worker`` (issue 16): ``imports``
loads task modules at start, ``broker_connection_retry_on_startup`` off makes a worker that
cannot reach its broker exit instead of waiting, ``update_state`` shows a custom state."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from e2e_support import HERE, TASKQ, Broker, StartWorker, wait_until


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_the_imports_setting_registers_the_tasks_of_its_modules(
        broker: Broker, worker: StartWorker) -> None:
    worker(broker, env={"TASKQ_IMPORTS": "appmod_imported"})
    result = broker.app().send_task("appmod_imported.imported")
    assert result.get(timeout=30) == "imported"


def test_a_worker_without_retry_on_startup_exits_when_the_broker_is_unreachable(
        redis_broker: Broker) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **redis_broker.env, "PYTHONPATH": path, "TASKQ_BROKER_URL": url,
           "TASKQ_BROKER_CONNECTION_RETRY_ON_STARTUP": "false"}
    out = subprocess.run([*TASKQ, "worker", "-A", "appmod", "-P", "threads", "-c", "1",
                          "--without-mingle", "--without-gossip"], env=env,
                         capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert f"cannot reach the broker at {url}" in text, text
    assert "broker_connection_retry_on_startup is off" in text, text
    assert "Traceback" not in text and " ready: pool=" not in text, text


def test_update_state_shows_a_custom_state_and_meta_to_the_client(
        broker: Broker, worker: StartWorker, tmp_path: Path) -> None:
    worker(broker, env={"TASKQ_IMPORTS": "appmod_progress"})
    gate = tmp_path / "gate"
    result = broker.app().send_task("appmod_progress.progress", (str(gate),))
    wait_until(lambda: result.state == "PROGRESS", 60, "the PROGRESS state")
    assert result.info == {"done": 1, "of": 2}
    gate.write_text("go")
    assert result.get(timeout=60) == "finished"


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_task_made_from_a_base_class_has_its_methods_on_the_worker(
        broker: Broker, worker: StartWorker) -> None:
    worker(broker, env={"TASKQ_IMPORTS": "appmod_options"})
    result = broker.app().send_task("appmod_options.greet", ("ann",))
    assert result.get(timeout=30) == "hello ann from appmod_options.greet"


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_trail_false_keeps_no_children_in_the_result(broker: Broker,
                                                      worker: StartWorker) -> None:
    worker(broker, env={"TASKQ_IMPORTS": "appmod_options"})
    client = broker.app()
    trailed = client.send_task("appmod_options.spawn")
    untrailed = client.send_task("appmod_options.spawn_without_trail")
    assert trailed.get(timeout=30) == untrailed.get(timeout=30) == "sent"
    [child] = trailed.children
    assert child.get(timeout=30) == 2
    assert not untrailed.children


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_base_classs_handlers_run_on_the_worker_as_on_celery(
        broker: Broker, worker: StartWorker, tmp_path: Path) -> None:
    worker(broker, pool="prefork", concurrency=1, env={"TASKQ_IMPORTS": "appmod_options"})
    client = broker.app()
    ok_path, bad_path = tmp_path / "ok.txt", tmp_path / "bad.txt"
    ok = client.send_task("appmod_options.audited", (str(ok_path), False))
    bad = client.send_task("appmod_options.audited", (str(bad_path), True))
    assert ok.get(timeout=30) == "ok"
    with pytest.raises(ValueError, match="boom"):
        bad.get(timeout=30)

    def lines(path: Path) -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    wait_until(lambda: len(lines(ok_path)) == 3, 30, "the success handlers")
    assert lines(ok_path) == [f"before_start {ok.id}", f"on_success {ok.id} ok {ok.id}",
                              f"after_return {ok.id} SUCCESS"]
    wait_until(lambda: len(lines(bad_path)) == 5, 30, "the retry and failure handlers")
    assert lines(bad_path) == [
        f"before_start {bad.id}", f"on_retry {bad.id} KeyError", f"before_start {bad.id}",
        f"on_failure {bad.id} ValueError ValueError", f"after_return {bad.id} FAILURE"]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_throws_logs_an_expected_failure_at_info_without_a_traceback(
        broker: Broker, worker: StartWorker) -> None:
    w = worker(broker, pool="prefork", concurrency=1, env={"TASKQ_IMPORTS": "appmod_options"})
    result = broker.app().send_task("appmod_options.picky", ("k1",))
    with pytest.raises(KeyError):
        result.get(timeout=30)
    assert result.state == "FAILURE"
    line = w.wait_log(rf"(?m)INFO/MainProcess \d+\] taskq\.worker: task "
                      rf"appmod_options\.picky\[{result.id}\] raised expected: "
                      r"KeyError\('k1'\)$", 30)
    assert not w.log()[line.end():].lstrip("\n").startswith("Traceback")
    assert f"picky[{result.id}] FAILURE" not in w.log()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_send_events_false_sends_no_task_events_for_that_task(
        broker: Broker, worker: StartWorker) -> None:
    from taskq.events import EventReceiver

    worker(broker, pool="prefork", concurrency=1, args=["-E"],
           env={"TASKQ_IMPORTS": "appmod_options"})
    client = broker.app()
    events: list[dict[str, Any]] = []
    with client.connection() as conn, EventReceiver(
            conn, handlers={"*": events.append}) as receiver:
        quiet = client.send_task("appmod_options.quiet")
        loud = client.send_task("appmod.add", (1, 2))
        assert quiet.get(timeout=30) == "quiet" and loud.get(timeout=30) == 3
        receiver.capture(timeout=30, stop=lambda: any(
            e.get("uuid") == loud.id and e.get("type") == "task-succeeded" for e in events))
    assert {e["type"] for e in events if e.get("uuid") == loud.id} >= {
        "task-received", "task-started", "task-succeeded"}
    assert not [e for e in events if e.get("uuid") == quiet.id]


def test_result_extended_stores_name_args_worker_and_queue_as_celery_reads_them(
        broker: Broker, worker: StartWorker) -> None:
    w = worker(broker, env={"TASKQ_RESULT_EXTENDED": "1"})
    client = broker.app()
    result = client.send_task("appmod.add", (2, 3))
    assert result.get(timeout=30) == 5
    assert (result.name, result.args, result.kwargs) == ("appmod.add", [2, 3], {})
    assert (result.worker, result.retries, result.queue) == (w.hostname, 0, broker.queue)
    worker(broker)  # result_extended off there: none of it (either worker may take it)
    off = client.send_task("appmod.add", (1, 1))
    assert off.get(timeout=30) == 2
    assert (off.name is not None) == (off.worker == w.hostname)
    import celery
    # and Celery's client reads the same fields (Celery 5.4, which ci/test-oldest-kombu.sh
    # runs, reads results under other keys when a global_keyprefix is set: see pyproject)
    if broker.kind == "redis" and tuple(celery.VERSION[:2]) >= (5, 5):
        import json

        from celery import Celery

        capp = Celery("ext", broker=broker.url, backend=broker.env["TASKQ_RESULT_BACKEND"],
                      set_as_current=False)
        capp.conf.result_backend_transport_options = json.loads(
            broker.env["TASKQ_RESULT_BACKEND_TRANSPORT_OPTIONS"])
        try:
            cres = capp.AsyncResult(result.id)
            assert (cres.name, cres.args, cres.kwargs, cres.worker, cres.queue) == (
                "appmod.add", [2, 3], {}, w.hostname, broker.queue)
        finally:
            capp.close()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_task_annotations_from_the_environment_reach_the_worker(
        broker: Broker, worker: StartWorker) -> None:
    annotations = '{"appmod.sleeper": {"time_limit": 1}}'
    worker(broker, pool="prefork", concurrency=1,
           env={"TASKQ_TASK_ANNOTATIONS": annotations})
    result = broker.app().send_task("appmod.sleeper", (30,))
    wait_until(lambda: result.state == "FAILURE", 60, "the annotated hard time limit")
    assert type(result.result).__name__ == "TimeLimitExceeded"


def test_the_message_priority_is_in_delivery_info_and_kept_by_a_retry(
        broker: Broker, worker: StartWorker) -> None:
    worker(broker, env={"TASKQ_IMPORTS": "appmod_options"})
    result = broker.app().send_task("appmod_options.priority_seen", priority=7)
    assert result.get(timeout=30) == 7


def test_send_event_sends_a_custom_event_for_the_running_task(
        broker: Broker, worker: StartWorker) -> None:
    from taskq.events import EventReceiver

    w = worker(broker, env={"TASKQ_IMPORTS": "appmod_options"})  # no -E: sent all the same
    client = broker.app()
    events: list[dict[str, Any]] = []
    with client.connection() as conn, EventReceiver(
            conn, handlers={"task-progress": events.append}) as receiver:
        result = client.send_task("appmod_options.progress_event")
        assert result.get(timeout=30) == "sent"
        receiver.capture(timeout=30, stop=lambda: any(e.get("uuid") == result.id
                                                       for e in events))
    [event] = [e for e in events if e.get("uuid") == result.id]
    assert (event["done"], event["of"], event["hostname"]) == (1, 2, w.hostname)


def test_acks_on_failure_or_timeout_false_dead_letters_a_failed_late_task(
        amqp_broker: Broker, worker: StartWorker) -> None:
    """As Celery: the failed task's message is rejected without requeue, so RabbitMQ
    dead-letters it; with the default it is acked (gone). Both end FAILURE."""
    import json

    b = amqp_broker
    dead = f"{b.name}-dead"
    spec = json.dumps([{"name": b.name, "exchange": b.name, "routing_key": b.name,
                        "queue_arguments": {"x-dead-letter-exchange": "",
                                            "x-dead-letter-routing-key": dead}}])
    with b.raw_connection() as conn:
        channel = conn.default_channel
        channel.queue_declare(dead, durable=False, auto_delete=False)
        try:
            worker(b, env={"TASKQ_IMPORTS": "appmod_options", "TASKQ_TASK_QUEUES": spec})
            client = b.app(TASKQ_TASK_QUEUES=spec)
            rejected = client.send_task("appmod_options.fails_dead_lettered")
            acked = client.send_task("appmod_options.fails_acked")
            for result in (rejected, acked):
                with pytest.raises(ValueError):
                    result.get(timeout=30)

            def dead_ids() -> list[str]:
                ids = []
                while (message := channel.basic_get(dead, no_ack=True)) is not None:
                    ids.append(message.headers["id"])
                return ids

            seen: list[str] = []
            wait_until(lambda: seen.extend(dead_ids()) or seen, 30, "a dead-lettered message")
            assert seen == [rejected.id]
        finally:
            channel.queue_delete(dead)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_inspect_scheduled_answers_in_celerys_shape(broker: Broker, worker: StartWorker
                                                    ) -> None:
    w = worker(broker)
    client = broker.app()
    later = client.send_task("appmod.add", (1, 2), countdown=120, priority=3)

    def entries() -> list[dict[str, Any]]:
        [reply] = client.control.broadcast("scheduled", destination=[w.hostname], reply=True,
                                           timeout=5) or [{}]
        return list(reply.get(w.hostname) or [])

    [entry] = wait_until(entries, 30, "the eta task among the scheduled")
    assert entry["priority"] == 6  # Celery's timer priority for eta tasks
    assert entry["request"]["id"] == later.id
    assert entry["request"]["delivery_info"]["priority"] == 3
    assert entry["eta"].endswith("+00:00")
    client.control.revoke(later.id)


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_returned_result_is_stored_as_its_tuple_and_an_unencodable_value_fails(
        broker: Broker, worker: StartWorker) -> None:
    """Given a task that returns the result of a chain it sent, then the stored value is the
    result's as_tuple() (its id and its parent's), as on Celery's worker (Celery's
    test_groupresult_serialization); given a task that returns what the serializer cannot
    encode, then it ends FAILURE (EncodeError) and get() raises. Both stayed PENDING for ever
    (taskq logged that the store failed)."""
    worker(broker, env={"TASKQ_IMPORTS": "appmod_options"})
    client = broker.app()
    sent = client.send_task("appmod_options.send_a_chain").get(timeout=30)
    (last_id, ((first_id, none), _)), _ = sent
    assert none is None and client.AsyncResult(last_id).get(timeout=30) == 4
    assert client.AsyncResult(first_id).get(timeout=30) == 2
    bad = client.send_task("appmod_options.unencodable")
    with pytest.raises(Exception, match="not JSON serializable") as raised:
        bad.get(timeout=30)
    assert type(raised.value).__name__ == "EncodeError" and bad.state == "FAILURE"
