"""Celery task code, unchanged, on taskq's worker: ``taskq worker -A celeryproj`` where
``celeryproj`` is a plain Celery project (tests/taskq/celeryproj), called with Celery's own
client. One real worker subprocess per broker (Redis, RabbitMQ), results in Redis."""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

celery = pytest.importorskip("celery")
from celery.exceptions import MaxRetriesExceededError  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "worker"))
from e2e_support import (  # noqa: E402
    REDIS_URL,
    Broker,
    WorkerProcess,
    import_fresh,
    make_broker,
    wait_until,
)

RESULT_TIMEOUT = 60.0


@dataclass
class Project:
    broker: Broker
    worker: WorkerProcess
    tasks: Any  # the celeryproj.tasks module, imported with this broker's settings
    ledger: Path
    tmp: Path

    def lines(self, *prefix: str) -> list[list[str]]:
        try:
            text = self.ledger.read_text()
        except FileNotFoundError:
            return []
        rows = [line.split() for line in text.splitlines()]
        return [r for r in rows if r[:len(prefix)] == list(prefix)]

    def path(self) -> str:
        return str(self.tmp / f"f{uuid.uuid4().hex[:8]}.txt")


def _import_project(env: dict[str, str]) -> Any:
    """(Re-)import celeryproj with this test's settings, as the worker imports it."""
    return import_fresh("celeryproj.tasks", env, HERE)


@pytest.fixture(scope="module", params=["redis", "amqp"])
def project(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Project]:
    broker = make_broker(request.param)
    tmp = tmp_path_factory.mktemp(f"celeryproj-{request.param}")
    ledger = tmp / "signals.log"
    env = {"CELERYPROJ_NAME": broker.name, "CELERYPROJ_BROKER": broker.url,
           "CELERYPROJ_BACKEND": REDIS_URL, "CELERYPROJ_LEDGER": str(ledger)}
    tasks = _import_project(env)
    node = f"dropin-{broker.name}@{socket.gethostname()}"
    worker = WorkerProcess(broker, pool="prefork", concurrency=2, hostname=node, node=node,
                           log_path=tmp / "worker.log", app="celeryproj",
                           args=["--without-mingle", "--without-gossip"],
                           env={**env, "PYTHONPATH": str(HERE)})
    # No TASKQ_* settings: everything the worker knows comes from the Celery app.
    worker.env = {k: v for k, v in worker.env.items()
                  if not k.startswith("TASKQ_") or k == "TASKQ_EMBEDDED_DIR"}
    worker.start()
    try:
        worker.wait_ready(60)
        yield Project(broker, worker, tasks, ledger, tmp)
    finally:
        worker.stop()
        print(worker.log()[-20000:])
        tasks.app.close()
        broker.cleanup()


def test_app_task_and_shared_task_answer_celerys_client(project: Project) -> None:
    t = project.tasks
    assert t.add.delay(2, 3).get(timeout=RESULT_TIMEOUT) == 5
    assert t.add.apply_async((1, 2), priority=9).get(timeout=RESULT_TIMEOUT) == 3
    r = t.whoami.apply_async((1, "a"), {"k": 2})
    info = r.get(timeout=RESULT_TIMEOUT)
    assert info["id"] == r.id == info["current_task_id"]
    assert info["task"] == info["name"] == "celeryproj.tasks.whoami"
    assert (info["args"], info["kwargs"], info["retries"]) == ([1, "a"], {"k": 2}, 0)
    assert info["hostname"] == project.worker.hostname
    assert (info["is_eager"], info["called_directly"]) == (False, False)
    assert info["routing_key"] == project.broker.name
    assert info["pid"] != project.worker.pid  # ran in a pool child
    project.worker.wait_log(r"WARNING.*taskq does not use these settings: "
                            r"broker_channel_error_retry\n")


def test_request_properties_hold_the_message_properties(project: Project) -> None:
    props = project.tasks.properties.apply_async(app_id="1234").get(timeout=RESULT_TIMEOUT)
    assert props["app_id"] == "1234"
    assert props["correlation_id"]


def test_revoke_by_stamped_headers_discards_the_stamped_tasks(project: Project) -> None:
    """Celery's stamps travel with the message, and revoke_by_stamped_headers (Celery's
    command and reply) keeps the tasks stamped with a revoked value from running."""
    from celery.exceptions import TaskRevokedError

    t, node = project.tasks, project.worker.hostname
    mark = uuid.uuid4().hex
    [reply] = t.app.control.revoke_by_stamped_headers({"mon": [mark]}, destination=[node],
                                                      reply=True, timeout=10)
    assert reply[node] == {
        "ok": f"headers {{'mon': ['{mark}']}} flagged as revoked, but not terminated"}
    stamped = t.add.si(1, 1)
    stamped.stamp(mon=mark)
    other = t.add.si(2, 2)
    other.stamp(mon="not-" + mark)
    revoked, kept = stamped.apply_async(), other.apply_async()
    assert kept.get(timeout=RESULT_TIMEOUT) == 4
    with pytest.raises(TaskRevokedError):
        revoked.get(timeout=RESULT_TIMEOUT)


def test_retry_republishes_with_retries_plus_one(project: Project) -> None:
    path = project.path()
    r = project.tasks.flaky.delay(path)
    assert r.get(timeout=RESULT_TIMEOUT) == 2
    assert Path(path).read_text().split("\n")[:3] == ["attempt 0", "attempt 1", "attempt 2"]
    wait_until(lambda: len(project.lines("retry", r.id)) == 2, 30, "two task_retry signals")


def test_retry_past_max_retries_raises_max_retries_exceeded(project: Project) -> None:
    r = project.tasks.always_retry.delay()
    with pytest.raises(MaxRetriesExceededError):
        r.get(timeout=RESULT_TIMEOUT)


def test_update_state_is_seen_by_the_client(project: Project) -> None:
    gate = Path(project.path())
    r = project.tasks.progress.delay(str(gate))
    wait_until(lambda: r.state == "PROGRESS", 30, "the PROGRESS state")
    assert r.info == {"done": 1, "of": 2}
    gate.write_text("go")
    assert r.get(timeout=RESULT_TIMEOUT) == "finished"


def test_custom_base_class_handlers_run(project: Project) -> None:
    path = project.path()
    r = project.tasks.explode.delay(path)
    with pytest.raises(ValueError, match="boom"):
        r.get(timeout=RESULT_TIMEOUT)
    wait_until(lambda: Path(path).exists() and "after_return" in Path(path).read_text(),
               30, "after_return")
    assert Path(path).read_text().splitlines() == [
        f"on_failure {r.id} ValueError boom True", f"after_return {r.id} FAILURE"]
    wait_until(lambda: project.lines("failure", r.id, "ValueError"), 30, "task_failure")

    path = project.path()
    ok = project.tasks.audited_ok.delay(path)
    assert ok.get(timeout=RESULT_TIMEOUT) == "ok-0"
    wait_until(lambda: Path(path).exists() and "after_return" in Path(path).read_text(),
               30, "after_return")
    assert Path(path).read_text().splitlines() == [
        f"on_success {ok.id} ok-0", f"after_return {ok.id} SUCCESS"]


def test_a_lost_task_sends_task_failure_from_the_main_process(project: Project) -> None:
    """As Celery's worker (Request.on_failure): a task whose pool process died ends FAILURE
    with WorkerLostError, and the main process sends ``task_failure`` with the task's args,
    an einfo and the request on the task's stack; the task's own on_failure is not called."""
    path = project.path()
    r = project.tasks.dies.delay(path)
    wait_until(lambda: r.state == "FAILURE", RESULT_TIMEOUT, "the lost task's FAILURE")
    assert type(r.result).__name__ == "WorkerLostError"
    wait_until(lambda: project.lines("failure", r.id), 30, "task_failure of the lost task")
    assert project.lines("failure", r.id) == [
        ["failure", r.id, "WorkerLostError", str(project.worker.pid), r.id, "1", "True"]]
    assert not Path(path).exists()  # on_failure / after_return: not for a lost task


def test_a_hard_time_limit_runs_the_failure_handlers_from_the_main_process(
        project: Project) -> None:
    """As Celery's worker (Request.on_timeout): the task's on_failure and after_return run
    with TimeLimitExceeded, and ``task_failure`` is sent, though its process was killed."""
    path = project.path()
    r = project.tasks.overruns.delay(path)
    wait_until(lambda: r.state == "FAILURE", RESULT_TIMEOUT, "the overrun task's FAILURE")
    assert type(r.result).__name__ == "TimeLimitExceeded"
    wait_until(lambda: project.lines("failure", r.id), 30, "task_failure of the overrun")
    assert project.lines("failure", r.id)[0][:4] == [
        "failure", r.id, "TimeLimitExceeded", str(project.worker.pid)]
    wait_until(lambda: Path(path).exists() and "after_return" in Path(path).read_text(),
               30, "after_return")
    lines = Path(path).read_text().splitlines()
    assert lines[0].startswith(f"on_failure {r.id} TimeLimitExceeded ")
    assert lines[1:] == [f"after_return {r.id} FAILURE"]


def test_autoretry_for_retries_with_backoff_then_succeeds(project: Project) -> None:
    path = project.path()
    r = project.tasks.autoretried.delay(path)
    assert r.get(timeout=RESULT_TIMEOUT) == 2
    assert Path(path).read_text().splitlines() == ["attempt 0", "attempt 1", "attempt 2"]


def test_signals_fire_in_the_worker(project: Project) -> None:
    r = project.tasks.add.delay(1, 1)
    assert r.get(timeout=RESULT_TIMEOUT) == 2
    wait_until(lambda: project.lines("postrun", r.id), 30, "task_postrun")
    assert project.lines("postrun", r.id) == [["postrun", r.id, "celeryproj.tasks.add",
                                               "SUCCESS"]]
    prerun = project.lines("prerun", r.id)
    assert len(prerun) == 1 and int(prerun[0][3]) != project.worker.pid
    assert project.lines("success", r.id, "celeryproj.tasks.add")
    wait_until(lambda: len(project.lines("process_init")) >= 2, 30, "worker_process_init")
    assert {int(x[1]) for x in project.lines("process_init")} - {project.worker.pid}
    assert [int(x[1]) for x in project.lines("worker_ready")] == [project.worker.pid]


def test_reject_and_ignore_end_as_on_celery(project: Project) -> None:
    rejected = project.tasks.refuse.delay()
    ignored = project.tasks.ignored.delay()
    wait_until(lambda: project.lines("postrun", rejected.id), 30, "task_postrun of refuse")
    wait_until(lambda: project.lines("postrun", ignored.id), 30, "task_postrun of ignored")
    assert project.lines("postrun", rejected.id)[0][3] == "REJECTED"
    assert project.lines("postrun", ignored.id)[0][3] == "IGNORED"
    # Rejected without requeue: a terminal FAILURE with Celery's Reject, as Celery 5.7
    # stores it (a state Celery's client does not know left its get() waiting for ever).
    with pytest.raises(celery.exceptions.Reject, match="not for me"):
        rejected.get(timeout=RESULT_TIMEOUT)
    assert rejected.state == "FAILURE"
    assert project.tasks.add.delay(3, 4).get(timeout=RESULT_TIMEOUT) == 7  # carries on


def test_a_tasks_rate_limit_spaces_out_its_starts(project: Project) -> None:
    sent_at = time.time()
    results = [project.tasks.limited.delay() for _ in range(3)]
    starts = [r.get(timeout=RESULT_TIMEOUT) for r in results]
    # "30/m": one start every 2 s, so the third no earlier than 4 s after sending (a slow
    # machine only makes it later; 0.2 s for the clocks of two processes)
    assert max(starts) - sent_at >= 4.0 - 0.2, starts


def test_replace_and_children_work_as_on_celery(project: Project) -> None:
    """Celery's self.replace() ends with the replacement's value (a group's as a list), and
    what the task sent through Celery's client is its result's children."""
    t = project.tasks
    assert t.add_replaced.delay(1, 2).get(timeout=RESULT_TIMEOUT) == 3
    assert t.add_to_all.delay([1, 2], 10).get(timeout=RESULT_TIMEOUT) == [11, 12]
    res = t.spawn.delay(2)
    assert res.get(timeout=RESULT_TIMEOUT) == 2
    assert [c.get(timeout=RESULT_TIMEOUT) for c in res.children] == [0, 2, [0, 2]]
