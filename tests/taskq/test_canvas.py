"""The canvas from a taskq client: chain, group, chord on a taskq worker (Redis and RabbitMQ,
results in Redis), their results, and how a chord counts its parts in the backend."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "worker"))
from e2e_support import REDIS_URL, Broker, WorkerSet, make_broker, wait_until

from taskq import TaskQ, states
from taskq.canvas import Signature, chain, chord, chord_size, group
from taskq.errors import ChordError, ResultBackendError, WorkerLostError
from taskq.result import AsyncResult, GroupResult, result_from_tuple


def client_for(b: Broker) -> TaskQ:
    """A client app whose tasks have the worker's names (canvasmod)."""
    app = b.app()
    for name in ("add", "tsum", "boom", "collect", "die", "nap", "whoami", "fanout",
                 "add_replaced", "add_to_all", "replace_with_chain", "replace_with_boom"):
        app.task(name=f"canvasmod.{name}")(lambda *a: None)
    return app


# -- on a taskq worker ------------------------------------------------------------------------

def test_chain_group_and_chord_from_a_taskq_client(broker: Broker,
                                                    workers: WorkerSet) -> None:
    workers.start(broker, app="canvasmod", pool="threads", concurrency=3)
    app = client_for(broker)
    add, tsum = app.tasks["canvasmod.add"], app.tasks["canvasmod.tsum"]

    res = (add.s(1, 2) | add.s(10) | add.s(100)).apply_async()
    assert res.get(timeout=30) == 113
    assert isinstance(res.parent, AsyncResult) and res.parent.get(timeout=10) == 13
    assert res.parent.parent is not None and res.parent.parent.get(timeout=10) == 3

    g = group(add.s(i, i) for i in range(5)).apply_async()
    assert isinstance(g, GroupResult)
    assert g.get(timeout=30) == [0, 2, 4, 6, 8]
    assert g.ready() and g.successful() and not g.failed() and g.completed_count() == 5

    res = chord([add.s(i, i) for i in range(4)], tsum.s()).apply_async()
    assert res.get(timeout=30) == 12
    assert isinstance(res.parent, GroupResult) and res.parent.get(timeout=10) == [0, 2, 4, 6]

    # group | task is a chord; a chord in a chain passes its body's result on.
    res = (add.s(1, 1) | group(add.s(1), add.s(2)) | tsum.s() | add.s(1000)).apply_async()
    assert res.get(timeout=30) == 1000 + (2 + 1) + (2 + 2)


def test_get_on_a_chain_raises_the_error_of_the_step_that_failed(broker: Broker,
                                                                 workers: WorkerSet) -> None:
    """Given add | boom | add, the last step never runs: it is stored FAILURE with boom's
    error, so get() on the chain raises it instead of waiting forever."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    app = client_for(broker)
    add, boom = app.tasks["canvasmod.add"], app.tasks["canvasmod.boom"]
    res = chain(add.s(1, 1), boom.s(), add.s(5)).apply_async()
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=30)
    assert res.state == states.FAILURE


def test_a_failed_header_part_fails_the_body_with_chord_error(broker: Broker,
                                                              workers: WorkerSet) -> None:
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    app = client_for(broker)
    add, boom, tsum = (app.tasks[f"canvasmod.{n}"] for n in ("add", "boom", "tsum"))
    res = chord([add.s(1, 1), boom.s(), add.s(2, 2)], tsum.s()).apply_async()
    body = app.AsyncResult(res.id)
    with pytest.raises(ChordError) as info:
        body.get(timeout=30)
    part = res.parent.results[1].id
    assert f"Dependency {part} raised ValueError('boom')" in str(info.value)


def test_a_running_task_knows_its_chain_group_and_chord(broker: Broker,
                                                       workers: WorkerSet) -> None:
    """self.request.chain holds the steps still to come (reversed, as Celery has it),
    .group/.group_index a group member's place, .chord the body a header part counts for."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=3)
    app = client_for(broker)
    whoami, collect = app.tasks["canvasmod.whoami"], app.tasks["canvasmod.collect"]

    last = chain(whoami.s(), whoami.s(), whoami.s()).apply_async()
    third = last.get(timeout=30)
    second = third["args"][0]
    first = second["args"][0]
    assert [s["options"]["task_id"] for s in first["chain"]] == [last.id, last.parent.id]
    assert [s["task"] for s in first["chain"]] == ["canvasmod.whoami"] * 2
    assert [s["options"]["task_id"] for s in second["chain"]] == [last.id]
    assert third["chain"] is None and first["group"] is None and first["chord"] is None

    g = group(whoami.s(), whoami.s()).apply_async()
    assert [(m["group"], m["group_index"], m["chord"]) for m in g.get(timeout=30)] == [
        (g.id, 0, None), (g.id, 1, None)]

    body = chord([whoami.s(), whoami.s()], collect.s()).apply_async()
    parts = body.get(timeout=30)
    assert [(p["group"], p["group_index"]) for p in parts] == [(body.parent.id, 0),
                                                                (body.parent.id, 1)]
    assert all(p["chord"]["task"] == "canvasmod.collect" for p in parts)
    assert all(p["chord"]["options"]["task_id"] == body.id for p in parts)


def test_a_replaced_task_hands_its_id_chain_and_chord_place_to_the_replacement(
        broker: Broker, workers: WorkerSet, tmp_path: Path) -> None:
    """self.replace(sig) on a worker: the caller's result ends with sig's value (a group's
    as one list), a chain goes on after it, a chord counts it once in its place, and the
    replaced task's errback runs when the replacement fails."""
    workers.start(broker, app="canvasmod", pool="prefork", concurrency=2)
    app = client_for(broker)
    t = {n: app.tasks[f"canvasmod.{n}"] for n in (
        "add", "collect", "add_replaced", "add_to_all", "replace_with_chain",
        "replace_with_boom")}
    assert t["add_replaced"].delay(1, 2).get(timeout=30) == 3
    assert t["add_to_all"].delay([1, 2, 3], 10).get(timeout=30) == [11, 12, 13]
    res = chain(t["add"].s(1, 1), t["add_replaced"].s(5), t["replace_with_chain"].s(0)
                ).apply_async()
    assert res.get(timeout=30) == 107
    header = [t["add_replaced"].s(1, 1), t["add_to_all"].s([1], 1),
              t["replace_with_chain"].s(1, 1), t["add"].s(4, 4)]
    assert chord(header, t["collect"].s()).apply_async().get(timeout=30) == [2, [2], 102, 8]

    errback = app.task(name="canvasmod.errback")(lambda *a: None)
    ledger = tmp_path / "errbacks.log"
    failing = t["replace_with_boom"].s().on_error(errback.s(str(ledger))).apply_async()
    with pytest.raises(ValueError, match="boom"):
        failing.get(timeout=30)
    wait_until(lambda: ledger.exists() and f"errback {failing.id}" in ledger.read_text(),
               30, "the replaced task's errback")


def test_results_of_tasks_sent_from_a_task_are_its_children(broker: Broker,
                                                             workers: WorkerSet) -> None:
    """The worker stores what a task sent as its children (a task, a group, a chain's first
    step, whose child is the next step), so collect() walks the whole tree."""
    workers.start(broker, app="canvasmod", pool="prefork", concurrency=2)
    app = client_for(broker)
    res = app.tasks["canvasmod.fanout"].delay(2)
    assert res.get(timeout=30) == 2
    task, grp, first = res.children
    assert task.get(timeout=10) == 4
    assert isinstance(grp, GroupResult) and grp.get(timeout=10) == [0, 2]
    assert first.get(timeout=10) == 2  # stored, so its children are known
    assert [c.get(timeout=10) for c in first.children] == [12]
    assert [v for _, v in res.collect(timeout=10)] == [2, 4, [0, 2], 2, 0, 2, 12]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_map_starmap_and_chunks_run_on_a_taskq_worker(broker: Broker,
                                                      workers: WorkerSet) -> None:
    """task.map / task.starmap are one celery.map / celery.starmap task each, task.chunks a
    group of starmaps, and celery.chunks sent as a task starts that group (its result is the
    group's tuple form, as Celery stores it): the worker has all three built in."""
    workers.start(broker, app="canvasmod", pool="prefork", concurrency=2)
    app = client_for(broker)
    add, tsum = app.tasks["canvasmod.add"], app.tasks["canvasmod.tsum"]

    assert tsum.map([[1, 2], [3, 4, 5]]).apply_async().get(timeout=30) == [3, 12]
    assert add.starmap([(1, 2), (3, 4)]).delay().get(timeout=30) == [3, 7]
    res = add.chunks([(i, i) for i in range(5)], 2).apply_async()
    assert isinstance(res, GroupResult)
    assert res.get(timeout=30) == [[0, 2], [4, 6], [8]]

    sent = app.send_task("celery.chunks", (), {"task": dict(add.s()),
                                               "it": [[1, 1], [2, 2], [3, 3]], "n": 2})
    group_tuple = sent.get(timeout=30)
    restored = result_from_tuple(group_tuple, app.backend, app)
    assert isinstance(restored, GroupResult)
    assert restored.get(timeout=30) == [[2, 4], [6]]


def test_a_nested_group_on_a_worker_gets_nested_lists_and_restores(broker: Broker,
                                                                   workers: WorkerSet) -> None:
    """A group holding a chain that ends in a group and a chord: get() is a nested list,
    and the saved GroupResult restores with the same nesting (parents included)."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=3)
    app = client_for(broker)
    add, tsum = app.tasks["canvasmod.add"], app.tasks["canvasmod.tsum"]
    res = group(add.s(1, 1) | group(add.s(2), add.s(3)), add.s(4, 4),
                chord([add.s(1, 1)], tsum.s())).apply_async()
    assert res.get(timeout=30) == [[4, 5], 8, 2]
    res.save()
    back = GroupResult.restore(res.id, app=app)
    assert back is not None and back.as_tuple() == res.as_tuple()
    assert back.get(timeout=10) == [[4, 5], 8, 2]
    assert isinstance(back.results[0], GroupResult) and back.results[0].parent is not None
    assert back.results[0].parent.get(timeout=10) == 2
    res.delete()


def test_a_chain_ending_in_a_group_counts_each_member_in_the_chord_and_nests(
        broker: Broker, workers: WorkerSet) -> None:
    """A chord header part that is a chain ending in a group: each of that group's members
    is a part of the chord (the group's own id must not replace the chord's), and the body
    gets their values nested, ``[[a, b]]``, as from Celery's worker. Both as a chord in a
    chain (sent by the worker when the chain reaches it) and sent by the client."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    app = client_for(broker)
    add, collect = app.tasks["canvasmod.add"], app.tasks["canvasmod.collect"]
    res = chain(add.si(1, 0),
                group(add.si(1, 100), chain(add.si(1, 200),
                                            group(add.si(1, 1000), add.si(1, 2000)))),
                collect.s()).apply_async()
    assert res.get(timeout=60) == [101, [1001, 2001]]
    res = chord([chain(add.s(40, 2), group(add.s(0), add.s(1)))], collect.s()).apply_async()
    assert res.get(timeout=60) == [[42, 43]]


def test_a_failed_step_before_a_group_ending_a_header_chain_fails_the_chord(
        broker: Broker, workers: WorkerSet) -> None:
    """A header part that is a chain ending in a group counts once per task of that group;
    when a step before the group fails, each of those tasks fails and counts, so the body
    ends FAILURE ChordError instead of waiting for parts that never come."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    app = client_for(broker)
    add, boom, tsum = (app.tasks[f"canvasmod.{n}"] for n in ("add", "boom", "tsum"))
    res = chord([chain(boom.si(), group(add.s(1), add.s(2))), add.si(1, 1)],
                tsum.s()).apply_async()
    with pytest.raises(ChordError, match="boom"):
        app.AsyncResult(res.id).get(timeout=60)


def test_a_groups_link_error_after_its_own_joins_it(broker: Broker, workers: WorkerSet,
                                                     tmp_path: Path) -> None:
    """``group.link_error(e)`` on a group that has its own link_error adds ``e`` to it (that
    option replaces the tasks' errbacks when the group is sent): both run."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    app = client_for(broker)
    boom = app.tasks["canvasmod.boom"]
    errback = app.task(name="canvasmod.errback")(lambda *a: None)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    g = group(boom.s()).set(link_error=errback.s(str(first)))
    g.link_error(errback.s(str(second)))
    res = g.apply_async()
    failed = res.results[0].id
    wait_until(lambda: first.exists() and second.exists(), 30, "both errbacks")
    assert first.read_text().splitlines() == [f"errback {failed}"]
    assert second.read_text().splitlines() == [f"errback {failed}"]


def test_a_failed_header_fails_each_task_of_a_group_body_with_its_errbacks(
        broker: Broker, workers: WorkerSet, tmp_path: Path) -> None:
    """Celery 5.7's rule for a group body when a header part fails: each task of the body
    ends FAILURE with the part's own error (get() raises it, not a ChordError), and runs its
    own errbacks (one set as a single signature too) and the chord's, once each; a chord in
    the body fails as its body, whose errbacks run."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    app = client_for(broker)
    add, boom, tsum = (app.tasks[f"canvasmod.{n}"] for n in ("add", "boom", "tsum"))
    errback = app.task(name="canvasmod.errback")(lambda *a: None)
    own, chorded = tmp_path / "own.log", tmp_path / "chord.log"
    first = tsum.s().set(link_error=errback.s(str(own)))
    inner = chord([add.si(2, 2)], tsum.s())
    res = chord([add.si(1, 1), boom.si()], group(inner, first)).apply_async(
        link_error=errback.s(str(chorded)))
    assert isinstance(res, GroupResult)
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=60)
    inner_id, first_id = (r.id for r in res.results)
    wait_until(lambda: chorded.exists() and len(chorded.read_text().splitlines()) >= 2, 30,
               "the chord's errback, once per task of the body")
    wait_until(lambda: own.exists(), 30, "the first task's own errback")
    assert sorted(chorded.read_text().splitlines()) == sorted(
        [f"errback {inner_id}", f"errback {first_id}"])
    assert own.read_text().splitlines() == [f"errback {first_id}"]
    for r in res.results:
        assert r.state == states.FAILURE


def test_a_groups_own_link_error_replaces_its_tasks_and_gets_the_chords(
        broker: Broker, workers: WorkerSet, tmp_path: Path) -> None:
    """``group(...).set(link_error=e)`` as a chord body: when the group runs, ``e`` replaces
    the errbacks of its tasks (as in Celery), and the chord's own link_error joins it, so a
    failing task of the body runs each once."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    app = client_for(broker)
    add, boom, tsum = (app.tasks[f"canvasmod.{n}"] for n in ("add", "boom", "tsum"))
    errback = app.task(name="canvasmod.errback")(lambda *a: None)
    grouped, chorded = tmp_path / "group.log", tmp_path / "chord.log"
    body = group(boom.s(), tsum.s()).set(link_error=errback.s(str(grouped)))
    res = chord([add.si(1, 1)], body).apply_async(link_error=errback.s(str(chorded)))
    with pytest.raises(ValueError, match="boom"):
        res.get(timeout=60)
    failed = res.results[0].id
    wait_until(lambda: grouped.exists() and chorded.exists(), 30, "both errbacks")
    assert grouped.read_text().splitlines() == [f"errback {failed}"]
    assert chorded.read_text().splitlines() == [f"errback {failed}"]
    assert res.results[1].get(timeout=30) == 2
    with pytest.raises(TypeError, match="link"):
        group(tsum.s()).apply_async(link_error=errback.s(str(grouped)))


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_parts_the_worker_ends_count_toward_the_chord(broker: Broker, workers: WorkerSet,
                                                      tmp_path: Path) -> None:
    """Given a header part whose child dies and one that expired before it ran, the worker
    stores their FAILURE / REVOKED and counts them: the body fails with ChordError instead of
    waiting forever, and a chain after a lost step fails with the step's error."""
    workers.start(broker, app="canvasmod", pool="prefork", concurrency=2)
    app = client_for(broker)
    add, die, tsum = (app.tasks[f"canvasmod.{n}"] for n in ("add", "die", "tsum"))
    res = chord([add.s(1, 1), die.s(), add.s(2, 2)], tsum.s()).apply_async()
    with pytest.raises(ChordError) as info:
        app.AsyncResult(res.id).get(timeout=30)
    assert f"Dependency {res.parent.results[1].id} raised WorkerLostError" in str(info.value)

    res = chord([add.s(1, 1), add.s(2, 2).set(expires=-5)], tsum.s()).apply_async()
    with pytest.raises(ChordError) as info:
        app.AsyncResult(res.id).get(timeout=30)
    assert "TaskRevokedError" in str(info.value)

    # A chain after a lost step fails with its error, and the lost step's errback runs.
    errback = app.task(name="canvasmod.errback")(lambda *a: None)
    ledger = tmp_path / "errbacks.log"
    step = die.s().on_error(errback.s(str(ledger)))
    lost = chain(add.s(1, 1), step, add.s(5)).apply_async()
    with pytest.raises(WorkerLostError):
        lost.get(timeout=30)
    lost_id = lost.parent.id
    wait_until(lambda: ledger.exists() and f"errback {lost_id}" in ledger.read_text(), 30,
               "the lost step's errback")


@pytest.mark.parametrize("what", ["chord body", "chain step"])
def test_what_a_killed_child_sent_runs_once_when_its_parent_sends_it_again(
        broker: Broker, workers: WorkerSet, tmp_path: Path, what: str) -> None:
    """Given early acks, when a child sends a chord's body (or a chain's next step) and dies
    before it tells its parent, the parent sends it again on its behalf: the same task id,
    twice on the queue. One copy runs; the other is dropped (its run-once key is taken)."""
    ledger, marker = tmp_path / "ran.log", tmp_path / "died"
    workers.start(broker, app="canvasmod", pool="prefork", concurrency=2,
                  env={"CANVASMOD_DIE_AFTER_SENDING": f"canvasmod.counted:{marker}"})
    app = client_for(broker)
    add, counted = app.tasks["canvasmod.add"], app.task(name="canvasmod.counted")(
        lambda *a: None)
    if what == "chord body":
        res = chord([add.s(1, 1), add.s(2, 2)], counted.s(str(ledger))).apply_async()
        expected: object = [2, 4]
    else:
        res = chain(add.s(1, 1), counted.s(str(ledger))).apply_async()
        expected = 2
    assert app.AsyncResult(res.id).get(timeout=60) == expected
    # The child makes the marker after its publish returns, so the copy it sent can have run
    # (and the result above arrived) before the marker is there: wait for it.
    wait_until(marker.exists, 30, "the child that sent it to be killed")
    dropped = re.compile(rf"canvasmod.counted\[{res.id}\]: a second copy")

    def runs() -> list[str]:
        return [line for line in ledger.read_text().splitlines() if res.id in line]

    wait_until(lambda: len(runs()) > 1 or dropped.search(workers.workers[0].log()), 60,
               "the second copy to run or be dropped")
    assert len(runs()) == 1, runs()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_part_that_expires_queued_in_its_child_counts_toward_the_chord(
        broker: Broker, workers: WorkerSet) -> None:
    """Given -O fast (a child holds a job besides the one it runs), when a chord's part
    expires while it waits in the child, then the child stores it REVOKED and counts it: the
    body fails with ChordError instead of waiting forever."""
    workers.start(broker, app="canvasmod", pool="prefork", concurrency=1, args=["-O", "fast"])
    app = client_for(broker)
    add, nap, tsum = (app.tasks[f"canvasmod.{n}"] for n in ("add", "nap", "tsum"))
    busy = nap.delay(4)
    res = chord([add.s(1, 1).set(expires=2)], tsum.s()).apply_async()
    with pytest.raises(ChordError) as info:
        app.AsyncResult(res.id).get(timeout=30)
    assert "TaskRevokedError" in str(info.value)
    assert busy.get(timeout=30) == 4


# -- counting a chord's parts (Redis and SQL backends; no worker) ----------------------------

@pytest.fixture(params=["redis", "sqlite"])
def chord_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskQ]:
    if request.param == "redis":
        b = make_broker("redis")
        app = b.app()
        yield app
        b.cleanup()
    else:
        app = TaskQ("t", backend=f"db+sqlite:///{tmp_path / 'results.db'}", environ={})
        yield app
        app.close()


@pytest.fixture
def redis_broker_sql(tmp_path: Path) -> Iterator[Broker]:
    """A Redis broker with results in an SQLite database."""
    b = make_broker("redis")
    b.env["TASKQ_RESULT_BACKEND"] = f"db+sqlite:///{tmp_path / 'results.db'}"
    b.env.pop("TASKQ_RESULT_BACKEND_TRANSPORT_OPTIONS")
    yield b
    b.cleanup()


def test_a_part_recorded_twice_counts_once(chord_app: TaskQ) -> None:
    """A part redelivered under acks_late reports again: the count is kept per (task id,
    group index), so the body fires once, on the last distinct part, and a late duplicate
    after that does nothing."""
    backend = chord_app.backend
    gid = str(uuid.uuid4())
    backend.set_chord_size(gid, 2)
    assert backend.chord_part_return(gid, "a", 0, states.SUCCESS, 1) is None
    assert backend.chord_part_return(gid, "a", 0, states.SUCCESS, 1) is None  # again
    join = backend.chord_part_return(gid, "b", 1, states.SUCCESS, 2)
    assert join is not None and [p[2] for p in join.parts] == [1, 2]
    assert backend.chord_part_return(gid, "b", 1, states.SUCCESS, 2) is None  # claimed
    backend.chord_done(join)
    assert backend.chord_part_return(gid, "a", 0, states.SUCCESS, 1) is None  # done


def test_a_run_once_key_is_taken_once_until_given_back(chord_app: TaskQ) -> None:
    backend, key = chord_app.backend, f"{uuid.uuid4()}:0:0"
    assert backend.claim_once(key)
    assert not backend.claim_once(key), "a key is taken once"
    backend.release_once(key)
    assert backend.claim_once(key), "a key given back can be taken again"
    backend.release_once(key)


def test_parts_are_joined_in_header_order(chord_app: TaskQ) -> None:
    backend = chord_app.backend
    gid = str(uuid.uuid4())
    backend.set_chord_size(gid, 3)
    assert backend.chord_part_return(gid, "c", 2, states.SUCCESS, "third") is None
    assert backend.chord_part_return(gid, "a", 0, states.SUCCESS, "first") is None
    join = backend.chord_part_return(gid, "b", 1, states.SUCCESS, "second")
    assert join is not None
    assert [(p[0], p[2]) for p in join.parts] == [("a", "first"), ("b", "second"),
                                                  ("c", "third")]
    backend.chord_done(join)


def test_group_result_saves_and_restores(chord_app: TaskQ) -> None:
    results = [chord_app.AsyncResult(str(uuid.uuid4())) for _ in range(3)]
    saved = GroupResult(str(uuid.uuid4()), results, app=chord_app).save()
    restored = GroupResult.restore(saved.id, app=chord_app)
    assert restored is not None and [r.id for r in restored] == [r.id for r in results]
    saved.delete()
    assert GroupResult.restore(saved.id, app=chord_app) is None


def test_a_chord_on_a_taskq_worker_with_sql_results(redis_broker_sql: Broker,
                                                    workers: WorkerSet) -> None:
    """The SQL backend counts a chord's parts on a worker (threads pool, 3 at once)."""
    workers.start(redis_broker_sql, app="canvasmod", pool="threads", concurrency=3)
    app = client_for(redis_broker_sql)
    add, tsum = app.tasks["canvasmod.add"], app.tasks["canvasmod.tsum"]
    res = chord([add.s(i, i) for i in range(8)], tsum.s()).apply_async()
    assert res.get(timeout=30) == 56


def test_rpc_backend_refuses_chords_with_a_clear_error() -> None:
    app = TaskQ("t", broker="memory://", backend="rpc://", environ={})
    add = app.task(name="canvasmod.add")(lambda x, y: x + y)
    with pytest.raises(ResultBackendError, match=r"chords need a result backend .*rpc://"):
        chord([add.s(1, 1)], add.s(1)).apply_async()


# -- the wire: what a taskq client writes is Celery's layout ----------------------------------

def test_signatures_have_celerys_layout_and_celery_reads_them() -> None:
    celery_canvas = pytest.importorskip("celery.canvas")
    app = TaskQ("t", backend=REDIS_URL, environ={})
    add = app.task(name="canvasmod.add")(lambda x, y: x + y)
    tsum = app.task(name="canvasmod.tsum")(lambda v: sum(v))
    c = chord([add.s(1, 1), add.s(2, 2) | add.s(3)], tsum.s().set(queue="q"))
    wire = dict(c)
    assert wire["subtask_type"] == "chord" and wire["task"] == "celery.chord"
    theirs = celery_canvas.Signature.from_dict(_plain(wire))
    assert isinstance(theirs, celery_canvas.chord)
    assert theirs.body["task"] == "canvasmod.tsum" and theirs.body.options == {"queue": "q"}
    assert isinstance(theirs.tasks[1], celery_canvas._chain)
    assert theirs.__length_hint__() == 2 == sum(chord_size(t) for t in c.tasks)
    ours = Signature.from_dict(_plain(dict(theirs)), app=app)
    assert isinstance(ours, chord) and isinstance(ours.tasks[1], chain)
    app.close()


def _plain(value: object) -> object:
    import json

    return json.loads(json.dumps(value))
