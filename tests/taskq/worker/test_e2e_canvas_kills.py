"""A real ``taskq worker -P prefork`` (app ``appmod_pool``) whose pool child dies after it
stored a task's outcome and before it sent what follows it (issue 15, found by
``taskq-stress run --suite canvas``): the next step of a chain, a chord's body. The outcome
stays stored (issue 13 #9) and the worker's main process sends what follows, once.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Broker, Ledger, StartWorker, wait_until

from taskq import states
from taskq.canvas import Signature, chain, chord


def _records(ledger: Ledger, task_id: str) -> int:
    return sum(1 for p in ledger.lines() if p[:2] == ["record", task_id])


def _kill_the_stalled_child(flag: Path) -> None:
    pid = int(wait_until(lambda: flag.exists() and flag.read_text(), 30, "the stall"))
    os.kill(pid, signal.SIGKILL)


def _chord_of_two_sleepers(client: Any, ledger: Ledger, fired: Any) -> Any:
    """chord([sleeper(0), sleeper(0)], record(fired)), sent."""
    header = [Signature("appmod.sleeper", (0, str(ledger)), immutable=True, app=client)
              for _ in range(2)]
    body = Signature("appmod.record", (fired,), {"ledger": str(ledger)}, immutable=True,
                     app=client)
    return chord(header, body, app=client).apply_async()


def _chord_fires_once_past_a_killed_stall(broker: Broker, worker: StartWorker,
                                          ledger: Ledger, tmp_path: Path, stall: str) -> None:
    """A one-child worker whose chord code stalls where ``stall`` (an appmod_pool variable)
    says; a two-part chord is sent, the stalled child killed: the body runs, once, and the
    worker goes on."""
    flag = tmp_path / "stalled"
    worker(broker, pool="prefork", concurrency=1, app="appmod_pool", env={stall: str(flag)})
    client = broker.app()
    result = _chord_of_two_sleepers(client, ledger, "fired")
    _kill_the_stalled_child(flag)
    assert result.get(timeout=60) == "fired"
    assert client.send_task("appmod.add", (1, 1)).get(timeout=30) == 2
    assert _records(ledger, result.id) == 1


def _stalled_worker(broker: Broker, worker: StartWorker, flag: Path, at_send: int = 1) -> None:
    # One child: the parts run one after another; the first send of a task's child (the
    # next step, the body; or the ``at_send``th) stalls after the store, for the test to
    # kill it there.
    worker(broker, pool="prefork", concurrency=1, app="appmod_pool",
           env={"APPMOD_STALL_AFTER_STORE": str(flag), "APPMOD_STALL_AT_SEND": str(at_send)})


@pytest.mark.parametrize("broker", ["redis_broker", "amqp_broker"])
def test_a_chain_goes_on_when_a_steps_child_dies_after_storing_it(
        request: pytest.FixtureRequest, worker: StartWorker, ledger: Ledger, tmp_path: Path,
        broker: str) -> None:
    """Given a chain whose first step stored SUCCESS and is sending the second, when its
    child is killed, then the second step still runs, once."""
    b: Broker = request.getfixturevalue(broker)
    flag = tmp_path / "stalled"
    _stalled_worker(b, worker, flag)
    client = b.app()
    first = Signature("appmod.sleeper", (0, str(ledger)), immutable=True, app=client)
    second = Signature("appmod.record", ("next",), {"ledger": str(ledger)}, immutable=True,
                       app=client)
    result = chain(first, second, app=client).apply_async()
    _kill_the_stalled_child(flag)
    assert result.get(timeout=60) == "next"
    assert result.parent.state == states.SUCCESS
    # Behind anything the worker might still send: a duplicate would run before this ends.
    assert client.send_task("appmod.add", (1, 1)).get(timeout=30) == 2
    assert _records(ledger, result.id) == 1


def test_what_the_dead_child_had_sent_is_not_sent_again(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger, tmp_path: Path) -> None:
    """Given a step with a link callback and a next chain step, whose child sent the callback
    and is killed before it sent the next step, then the worker sends only the next step:
    each runs once."""
    flag = tmp_path / "stalled"
    _stalled_worker(redis_broker, worker, flag, at_send=2)
    client = redis_broker.app()
    first = Signature("appmod.sleeper", (0, str(ledger)), immutable=True, app=client)
    callback = Signature("appmod.record", ("linked",), {"ledger": str(ledger)},
                         immutable=True, app=client)
    callback_id = callback.freeze().id
    first.link(callback)
    second = Signature("appmod.record", ("next",), {"ledger": str(ledger)}, immutable=True,
                       app=client)
    result = chain(first, second, app=client).apply_async()
    _kill_the_stalled_child(flag)
    assert result.get(timeout=60) == "next"
    assert client.send_task("appmod.add", (1, 1)).get(timeout=30) == 2
    assert _records(ledger, result.id) == 1
    assert _records(ledger, callback_id) == 1


@pytest.mark.parametrize("broker", ["redis_broker", "amqp_broker"])
def test_a_chord_body_runs_once_when_the_last_parts_child_dies_holding_the_claim(
        request: pytest.FixtureRequest, worker: StartWorker, ledger: Ledger, tmp_path: Path,
        broker: str) -> None:
    """Given a chord whose last header part stored SUCCESS, completed the count and took the
    claim to fire the body, when its child is killed before the body is sent, then the body
    still runs, once (under early acks no part comes back to take the claim once it
    expired: the worker gives the dead child's claim up)."""
    b: Broker = request.getfixturevalue(broker)
    flag = tmp_path / "stalled"
    _stalled_worker(b, worker, flag)
    client = b.app()
    result = _chord_of_two_sleepers(client, ledger, {"fired": True})
    _kill_the_stalled_child(flag)
    assert result.get(timeout=60) == {"fired": True}
    assert [r.state for r in result.parent.results] == [states.SUCCESS] * 2
    assert client.send_task("appmod.add", (1, 1)).get(timeout=30) == 2
    assert _records(ledger, result.id) == 1


def test_a_chord_body_the_dead_child_had_sent_is_not_sent_again(
        redis_broker: Broker, worker: StartWorker, ledger: Ledger, tmp_path: Path) -> None:
    """Given a chord whose last part sent the body and is killed before it dropped the
    chord's counters, then the worker finishes the chord without firing the body again."""
    _chord_fires_once_past_a_killed_stall(redis_broker, worker, ledger, tmp_path,
                                          "APPMOD_STALL_IN_CHORD_DONE")


@pytest.mark.parametrize("broker", ["redis_broker", "amqp_broker"])
def test_a_chord_body_runs_when_the_last_parts_child_dies_before_it_reports_its_claim(
        request: pytest.FixtureRequest, worker: StartWorker, ledger: Ledger, tmp_path: Path,
        broker: str) -> None:
    """Given a chord whose last header part completed the count and took the claim to fire
    the body, when its child is killed before it told the worker, then the body still runs,
    once: the worker gives up the claim the part holds (its token is the part's own) and
    counts it again (canvas suite, Redis seeds 3 and 4, acks_late + reject_on_worker_lost:
    the claim outlived the child, the recount could not take it, and the body never ran)."""
    _chord_fires_once_past_a_killed_stall(request.getfixturevalue(broker), worker, ledger,
                                          tmp_path, "APPMOD_STALL_AFTER_CLAIM")
