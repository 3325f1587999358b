"""The canvas across taskq and Celery: a Celery 5.7 client's chords on a taskq worker, and a
taskq client's canvas on a Celery worker. Real brokers, a real ``taskq worker`` subprocess,
the real ``celery`` package."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

celery = pytest.importorskip("celery")
from celery import chain as cchain  # noqa: E402
from celery import chord as cchord  # noqa: E402
from celery import group as cgroup  # noqa: E402
from celery.exceptions import ChordError as CeleryChordError  # noqa: E402

WORKER_DIR = Path(__file__).resolve().parent / "worker"
sys.path.insert(0, str(WORKER_DIR))
from e2e_support import (  # noqa: E402
    REDIS_URL,
    Broker,
    Ledger,
    WorkerSet,
    wait_until,
)

from taskq import states  # noqa: E402
from taskq.canvas import chain, chord, group  # noqa: E402
from taskq.result import GroupResult  # noqa: E402

T = TypeVar("T")


def celery_client(b: Broker) -> celery.Celery:
    """A Celery 5.7 client with the same broker keys, queue and result keys as the worker."""
    app = celery.Celery("client", broker=b.url, backend=REDIS_URL, set_as_current=False)
    app.conf.update(
        broker_transport_options={"global_keyprefix": f"{b.name}:"} if b.kind == "redis"
        else {},
        result_backend_transport_options={"global_keyprefix": f"{b.name}:r:"},
        task_default_queue=b.name, task_default_exchange=b.name,
        task_default_routing_key=b.name, result_expires=600,
    )
    return app


def _redis_keys(b: Broker, pattern: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        return list(client.scan_iter(match=f"{b.name}:r:{pattern}", count=1000))
    finally:
        client.close()


# -- a Celery client's chords on a taskq worker -----------------------------------------------

@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_celery_chord_runs_on_a_taskq_worker(broker: Broker, workers: WorkerSet) -> None:
    """Given a chord from a Celery 5.7 client, a taskq worker runs the header, and the last
    part sends the body with the results in header order; the counters are cleaned up."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=3)
    capp = celery_client(broker)
    add, collect = capp.signature("canvasmod.add"), capp.signature("canvasmod.collect")
    result = cchord([add.clone((i, i)) for i in range(6)], collect)()
    assert result.get(timeout=60) == [0, 2, 4, 6, 8, 10]
    assert result.parent.get(timeout=10) == [0, 2, 4, 6, 8, 10]
    gid = result.parent.id
    wait_until(lambda: not [k for k in _redis_keys(broker, f"*{gid}.[jtsd]")], 10,
               "the chord's .j/.t/.s/.d keys to be removed")
    capp.close()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_celery_chains_group_tail_gets_the_chains_root_and_its_parent(
        broker: Broker, workers: WorkerSet) -> None:
    """Given a Celery client's chain ending in a group (Celery's test_group::test_parent_ids),
    every task of the group has the chain's first task as root and the step before it as
    parent (Celery's client leaves root_id=None in the group's options; taskq's worker took
    that as set, and the group's tasks became their own roots)."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=3)
    capp = celery_client(broker)
    ids = capp.signature("canvasmod.ids")
    res = (ids.clone(kwargs={"i": 1}).set(immutable=True)
           | ids.clone(kwargs={"i": 2}).set(immutable=True)
           | cgroup(ids.clone(kwargs={"i": i}).set(immutable=True) for i in range(3, 7)))()
    values = res.get(timeout=60)
    assert values == [[res.parent.parent.id, res.parent.id, i] for i in range(3, 7)]
    capp.close()


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_celery_chord_with_a_failing_part_fails_the_body(broker: Broker, workers: WorkerSet,
                                                          ledger: Ledger) -> None:
    """Given a chord whose second part raises, the body is FAILURE ChordError naming that
    part (a Celery client reads Celery's own ChordError), and the body's link_error runs;
    get() on the chord raises the part's own error first, as it does on a Celery worker."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    capp = celery_client(broker)
    header = [capp.signature("canvasmod.add", (1, 1)), capp.signature("canvasmod.boom"),
              capp.signature("canvasmod.add", (2, 2))]
    body = capp.signature("canvasmod.tsum")
    body.link_error(capp.signature("canvasmod.errback", (str(ledger),)))
    result = cchord(header, body)()
    with pytest.raises(ValueError, match="boom"):  # Celery's get() raises the part's error
        result.get(timeout=60)
    with pytest.raises(CeleryChordError) as info:  # the body's own stored error
        capp.AsyncResult(result.id).get(timeout=60)
    failed_part = result.parent.results[1].id
    assert f"Dependency {failed_part} raised ValueError('boom')" in str(info.value)
    assert result.state == states.FAILURE
    wait_until(lambda: ["errback", result.id] in ledger.lines(), 60,
               "the body's errback to run with the body's id")
    capp.close()


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_celery_chord_with_a_chain_in_its_header(broker: Broker, workers: WorkerSet) -> None:
    """Given chord([add(1,1) | add(10), add(2,2)], tsum): the chain's last step is the
    part that counts, and the body gets 12 + 4."""
    workers.start(broker, app="canvasmod", pool="threads", concurrency=2)
    capp = celery_client(broker)
    add = capp.signature("canvasmod.add")
    header = [cchain(add.clone((1, 1)), add.clone((10,))), add.clone((2, 2))]
    result = cchord(header, capp.signature("canvasmod.tsum"))()
    assert result.get(timeout=60) == 16
    capp.close()


def test_nested_group_results_cross_between_celery_and_taskq(redis_broker: Broker,
                                                             workers: WorkerSet) -> None:
    """Given a Celery client's group holding a chain that ends in a group and a chord, run on
    a taskq worker: Celery's get() is the nested list; a GroupResult Celery saved restores
    in taskq with the same nesting, and one taskq saved restores in Celery."""
    workers.start(redis_broker, app="canvasmod", pool="threads", concurrency=3)
    capp = celery_client(redis_broker)
    add, tsum = capp.signature("canvasmod.add"), capp.signature("canvasmod.tsum")
    theirs = cgroup(cchain(add.clone((1, 1)), cgroup(add.clone((2,)), add.clone((3,)))),
                    add.clone((4, 4)), cchord([add.clone((1, 1))], tsum))()
    assert theirs.get(timeout=60) == [[4, 5], 8, 2]
    theirs.save()
    client = redis_broker.app()
    ours = GroupResult.restore(theirs.id, app=client)
    assert ours is not None and ours.as_tuple() == _tuples(theirs.as_tuple())
    assert ours.get(timeout=10) == [[4, 5], 8, 2]

    ours = GroupResult("g-" + theirs.id, ours.results, app=client).save()
    reader = celery_client(redis_broker)
    back = reader.GroupResult.restore(ours.id)
    assert _tuples(back.as_tuple()) == ours.as_tuple()
    # join(), not get(): Celery 5.7's get() (join_native) on a restored nested group times
    # out even when Celery saved the group itself.
    assert back.join(timeout=10) == [[4, 5], 8, 2]
    reader.close()
    capp.close()


def _tuples(value: object) -> object:
    """Celery's as_tuple() with lists where JSON brings them back as lists."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value) if isinstance(value, tuple) else [
            _tuples(v) for v in value]
    return value


def _children_seen(capp: celery.Celery) -> list[object]:
    """The tree fanout's result.children and collect() give a Celery client."""
    res = capp.send_task("canvasmod.fanout", (2,))
    assert res.get(timeout=60) == 2
    tree = [(type(r).__name__, r.id, value, [c.id for c in r.children or []])
            for r, value in res.collect(timeout=10)]
    return [res.id, tree]


def _seen_on_both(broker: Broker, workers: WorkerSet, tmp_path: Path,
                  seen: Callable[[celery.Celery], T], **worker: Any) -> tuple[T, T]:
    """What ``seen`` reads through a Celery client when a Celery worker runs the tasks, then
    when a taskq worker (``canvasmod``, started with ``worker``) does."""
    capp = celery_client(broker)
    try:
        with celery_worker(broker, tmp_path):
            on_celery = seen(capp)
        w = workers.start(broker, app="canvasmod", **worker)
        on_taskq = seen(capp)
        w.stop()
    finally:
        capp.close()
    return on_celery, on_taskq


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_a_celery_client_reads_the_same_children_from_taskq_as_from_celery(
        broker: Broker, workers: WorkerSet, tmp_path: Path) -> None:
    """Given a task that sends a task, a group and a chain, a Celery client's
    result.children and collect() see the same tree (up to fresh ids) whether a Celery
    worker or a taskq worker ran it."""
    on_celery, on_taskq = _seen_on_both(broker, workers, tmp_path, _children_seen,
                                        pool="prefork", concurrency=2)
    assert _ids_by_order(on_taskq) == _ids_by_order(on_celery)
    assert [value for _, _, value, _ in on_taskq[1]] == [2, 4, [0, 2], 2, 0, 2, 12]


def _replaced_seen(capp: celery.Celery) -> list[object]:
    """What a Celery client's get() returns for tasks that replace themselves: alone, as a
    chain's step, as chord parts, and when the replacement fails."""
    sig = capp.signature
    seen: list[object] = [
        sig("canvasmod.add_replaced", (1, 2)).delay().get(timeout=60),
        sig("canvasmod.add_to_all", ([1, 2, 3], 10)).delay().get(timeout=60),
        sig("canvasmod.replace_with_chain", (1, 2)).delay().get(timeout=60),
        cchain(sig("canvasmod.add", (1, 1)), sig("canvasmod.add_replaced", (5,)),
               sig("canvasmod.add", (10,)))().get(timeout=60),
        cchord([sig("canvasmod.add_replaced", (1, 1)), sig("canvasmod.add_to_all", ([1], 1)),
                sig("canvasmod.replace_with_chain", (1, 1)), sig("canvasmod.add", (4, 4))],
               sig("canvasmod.collect"))().get(timeout=60),
    ]
    failing = sig("canvasmod.replace_with_boom").delay()
    with pytest.raises(ValueError, match="boom"):
        failing.get(timeout=60)
    seen.append(failing.state)
    return seen


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_a_celery_clients_replaced_tasks_end_as_on_a_celery_worker(
        broker: Broker, workers: WorkerSet, tmp_path: Path) -> None:
    """Given tasks that call self.replace() (a task, a group, a chain, a failing chain), a
    Celery client's get() returns the same on a taskq worker as on a Celery worker: the
    replacement takes the replaced task's id, its chain and its place in a chord."""
    on_celery, on_taskq = _seen_on_both(broker, workers, tmp_path, _replaced_seen,
                                        pool="prefork", concurrency=2)
    expected = [3, [11, 12, 13], 103, 17, [2, [2], 102, 8], states.FAILURE]
    assert on_celery == expected
    assert on_taskq == expected


def _mapped_seen(capp: celery.Celery) -> list[object]:
    """What a Celery client's xmap, xstarmap and chunks return, and celery.chunks sent as a
    task (the group's tuple form, then what that group returns)."""
    from celery.canvas import chunks as cchunks
    from celery.canvas import xmap as cxmap
    from celery.canvas import xstarmap as cxstarmap

    add, tsum = capp.signature("canvasmod.add"), capp.signature("canvasmod.tsum")
    sent = capp.send_task("celery.chunks", (), {"task": dict(add), "it": [[1, 1], [2, 2], [3, 3]],
                                                "n": 2})
    group_tuple = sent.get(timeout=60)
    return [
        cxmap(tsum, [[1, 2], [3, 4, 5]], app=capp).apply_async().get(timeout=60),
        cxstarmap(add, [(1, 2), (3, 4)], app=capp).apply_async().get(timeout=60),
        cchunks(add, [(i, i) for i in range(5)], 2, app=capp).apply_async().get(timeout=60),
        group_tuple,
        capp.GroupResult(group_tuple[0][0], [capp.AsyncResult(r[0][0]) for r in group_tuple[1]])
        .get(timeout=60),
    ]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_a_celery_clients_map_starmap_and_chunks_run_as_on_a_celery_worker(
        broker: Broker, workers: WorkerSet, tmp_path: Path) -> None:
    """Given xmap, xstarmap and chunks from a Celery 5.7 client, a taskq worker runs the
    celery.map, celery.starmap and celery.chunks built-ins with the same results as a Celery
    worker (up to fresh ids)."""
    on_celery, on_taskq = _seen_on_both(broker, workers, tmp_path, _mapped_seen,
                                        pool="prefork", concurrency=2)
    assert _ids_by_order(on_taskq) == _ids_by_order(on_celery)
    assert on_taskq[:3] == [[3, 12], [3, 7], [[0, 2], [4, 6], [8]]]
    assert on_taskq[4] == [[2, 4], [6]]


# -- a taskq client's canvas on a Celery worker -----------------------------------------------

CELERY_WORKER_MODULE = '''
import json, os
from celery import Celery
app = Celery("canvasmod_celery", broker=os.environ["TASKQ_BROKER_URL"],
             backend=os.environ["TASKQ_RESULT_BACKEND"])
app.conf.update(
    broker_transport_options=json.loads(os.environ.get("CELERY_BROKER_OPTIONS", "{}")),
    result_backend_transport_options=json.loads(
        os.environ["TASKQ_RESULT_BACKEND_TRANSPORT_OPTIONS"]),
    task_default_queue=os.environ["TASKQ_TASK_DEFAULT_QUEUE"],
    task_default_exchange=os.environ["TASKQ_TASK_DEFAULT_EXCHANGE"],
    task_default_routing_key=os.environ["TASKQ_TASK_DEFAULT_ROUTING_KEY"],
    worker_hijack_root_logger=False,
)

@app.task(name="canvasmod.add")
def add(x, y):
    return x + y

@app.task(name="canvasmod.tsum")
def tsum(values):
    return sum(values)

@app.task(name="canvasmod.collect")
def collect(values):
    return list(values)

@app.task(name="canvasmod.fanout")
def fanout(n):
    from celery import chain, group
    add.delay(n, n)
    group(add.s(i, i) for i in range(n)).delay()
    chain(add.s(1, 1), add.s(10)).delay()
    return n

@app.task(name="canvasmod.boom")
def boom(*args):
    raise ValueError("boom")

@app.task(name="canvasmod.add_replaced", bind=True)
def add_replaced(self, x, y):
    return self.replace(add.s(x, y))

@app.task(name="canvasmod.add_to_all", bind=True)
def add_to_all(self, nums, val):
    from celery import group
    return self.replace(group(add.s(n, val) for n in nums))

@app.task(name="canvasmod.replace_with_chain", bind=True)
def replace_with_chain(self, x, y):
    from celery import chain
    return self.replace(chain(add.s(x, y), add.s(100)))

@app.task(name="canvasmod.replace_with_boom", bind=True)
def replace_with_boom(self, *args):
    from celery import chain
    return self.replace(chain(add.s(1, 1), boom.s()))

@app.task(name="canvasmod.whoami", bind=True)
def whoami(self, *args):
    r = self.request
    return {"chain": r.chain, "group": r.group, "group_index": r.group_index,
            "chord": r.chord, "args": list(args)}
'''


@contextlib.contextmanager
def celery_worker(b: Broker, tmp_path: Path) -> Iterator[None]:
    """A Celery 5.7 worker (solo pool, subprocess) on the broker's keys and queue, running
    CELERY_WORKER_MODULE; its log is printed if the test fails."""
    (tmp_path / "canvasmod_celery.py").write_text(CELERY_WORKER_MODULE)
    env = {**os.environ, **b.env, "PYTHONPATH": str(tmp_path),
           "CELERY_BROKER_OPTIONS": b.env.get("TASKQ_BROKER_TRANSPORT_OPTIONS", "{}")}
    log = tmp_path / "celery.log"
    celery_bin = Path(sys.executable).parent / "celery"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            # Its own node name: two of these on the shared RabbitMQ as celery@<host> fight
            # over one exclusive pidbox queue, and the second dies (RESOURCE_LOCKED).
            [str(celery_bin), "-A", "canvasmod_celery", "worker", "-P", "solo",
             "-n", f"celery-{b.name}@%h", "--without-mingle", "--without-gossip", "-l", "info"],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if sys.exc_info()[0] is not None:
            print(log.read_text(errors="replace"))


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _ids_by_order(value: object) -> object:
    """``value`` with each task id replaced by the order it first appears in: two runs of one
    canvas compare equal when they agree on everything but the fresh ids."""
    seen: dict[str, str] = {}
    text = _UUID.sub(lambda m: seen.setdefault(m.group(0), f"<id{len(seen)}>"),
                     json.dumps(value))
    return json.loads(text)


def test_a_taskq_chord_and_chain_run_on_a_celery_worker(redis_broker: Broker,
                                                        tmp_path: Path) -> None:
    """Given a Celery worker (subprocess), a taskq client's chain and chord, written as
    Celery writes them, run there and taskq reads the results."""
    with celery_worker(redis_broker, tmp_path):
        from taskq import TaskQ

        client = TaskQ("client", environ=redis_broker.env)
        client.task(name="canvasmod.add")(lambda x, y: x + y)
        client.task(name="canvasmod.tsum")(lambda values: sum(values))
        add, tsum = client.tasks["canvasmod.add"], client.tasks["canvasmod.tsum"]
        res = chain(add.s(1, 2), add.s(10), add.s(100)).apply_async()
        assert res.get(timeout=60) == 113
        assert res.parent is not None and res.parent.get(timeout=10) == 13
        res = chord([add.s(i, i) for i in range(4)], tsum.s()).apply_async()
        assert res.get(timeout=60) == 12
        assert group(add.s(1, 1), add.s(2, 2)).apply_async().get(timeout=60) == [2, 4]
        client.close()


def test_a_chord_split_between_a_celery_and_a_taskq_worker_completes_once(
        redis_broker: Broker, workers: WorkerSet, tmp_path: Path) -> None:
    """Given a Celery client's chord whose header parts go half to a queue only a Celery
    worker consumes and half to one only a taskq worker consumes, on one Redis (broker and
    results), the parts count together: the body runs once, on either worker, with every
    part's result in header order."""
    celery_side = dataclasses.replace(redis_broker, env={
        **redis_broker.env, **{f"TASKQ_TASK_DEFAULT_{k}": f"{redis_broker.name}-celery"
                               for k in ("QUEUE", "EXCHANGE", "ROUTING_KEY")}})
    capp = celery_client(redis_broker)
    try:
        with celery_worker(celery_side, tmp_path):
            w = workers.start(redis_broker, app="canvasmod", pool="prefork", concurrency=2)
            add = capp.signature("canvasmod.add")
            header = [add.clone((i, i)).set(queue=f"{redis_broker.name}-celery") if i % 2
                      else add.clone((i, i)) for i in range(8)]
            result = cchord(header, capp.signature("canvasmod.collect"))()
            assert result.get(timeout=60) == [0, 2, 4, 6, 8, 10, 12, 14]
            parts = [r.id for r in result.parent.results]
            taskq_log = w.log()
            celery_log = (tmp_path / "celery.log").read_text(errors="replace")
            assert all(f"canvasmod.add[{p}] SUCCESS" in taskq_log for p in parts[::2])
            assert all(f"canvasmod.add[{p}] succeeded" in celery_log for p in parts[1::2])
            # Behind anything either worker might still send: a second body would run first.
            assert capp.send_task("canvasmod.add", (1, 1)).get(timeout=60) == 2
            assert capp.send_task("canvasmod.add", (2, 2),
                                  queue=f"{redis_broker.name}-celery").get(timeout=60) == 4
            body = re.escape(result.id)
            runs = (len(re.findall(rf"canvasmod\.collect\[{body}\] SUCCESS", w.log()))
                    + len(re.findall(rf"canvasmod\.collect\[{body}\] succeeded",
                                     (tmp_path / "celery.log").read_text(errors="replace"))))
            assert runs == 1
    finally:
        capp.close()


# -- the same Celery client on a taskq worker and on a Celery worker --------------------------

def _request_fields_seen(capp: celery.Celery) -> list[object]:
    """What whoami's self.request says in a chain, a group and a chord's header."""
    who = capp.signature("canvasmod.whoami")
    seen: list[object] = []
    res = cchain(who.clone(), who.clone(), who.clone())()
    third = res.get(timeout=60)
    second = third["args"][0]
    first = second["args"][0]
    # A Celery worker sends a chain's last step with chain=[], a taskq worker with none.
    assert not third["chain"]
    seen += [first, {**second, "args": None}, {**third, "args": None, "chain": None}]
    seen.append(cgroup(who.clone(), who.clone())().get(timeout=60))
    seen.append(cchord([who.clone(), who.clone()], capp.signature("canvasmod.collect"))()
                .get(timeout=60))
    return seen


@pytest.mark.parametrize("broker", ["redis", "amqp"], indirect=True)
def test_self_request_canvas_fields_match_a_celery_worker(broker: Broker, workers: WorkerSet,
                                                          tmp_path: Path) -> None:
    """Given the same canvases from a Celery client, self.request.chain, .group,
    .group_index and .chord inside the task are the same on a taskq worker as on Celery's
    (up to the fresh task ids)."""
    on_celery, on_taskq = _seen_on_both(broker, workers, tmp_path, _request_fields_seen,
                                        pool="threads", concurrency=3)
    assert _ids_by_order(on_taskq) == _ids_by_order(on_celery)


