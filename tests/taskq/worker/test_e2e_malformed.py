"""Messages the worker cannot run are rejected with a logged reason, and the worker carries on.

Raw messages go straight onto the worker's queue through a plain kombu ``Producer``. One live
worker per broker serves the whole module (its log is read from an offset per test), and a
hypothesis test throws arbitrary bodies and headers at it before checking that a normal task
still completes.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import Broker, WorkerProcess, WorkerSet, make_broker, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu import Exchange, Producer

from taskq import TaskQ, states


class Live:
    """The module's worker, a client app and a raw producer on the same broker."""

    def __init__(self, broker: Broker, worker: WorkerProcess) -> None:
        self.broker = broker
        self.worker = worker
        self.client: TaskQ = broker.app()
        self.conn = broker.raw_connection()
        self.producer = Producer(self.conn.channel())
        self.exchange = Exchange(broker.name, "direct", durable=True)

    def publish(self, body: Any, *, content_type: str | None = "application/json",
                content_encoding: str | None = "utf-8", headers: dict[str, Any] | None = None,
                correlation_id: str | None = None) -> None:
        properties: dict[str, Any] = {}
        if correlation_id is not None:
            properties["correlation_id"] = correlation_id
        self.producer.publish(body, exchange=self.exchange, routing_key=self.broker.name,
                              content_type=content_type, content_encoding=content_encoding,
                              headers=headers, serializer=None, retry=True, **properties)

    def log_from(self, offset: int, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        return self.worker.wait_log(pattern, timeout, after=offset)

    def offset(self) -> int:
        return len(self.worker.log())

    def still_works(self) -> None:
        assert self.worker.alive(), self.worker.log()
        assert self.client.send_task("appmod.add", (20, 22)).get(timeout=15) == 42

    def close(self) -> None:
        self.conn.release()


@pytest.fixture(scope="module", params=["redis", "amqp"])
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Live]:
    broker = make_broker(request.param)
    workers = WorkerSet(tmp_path_factory.mktemp("malformed"))
    try:
        live = Live(broker, workers.start(broker, pool="threads", concurrency=2))
        yield live
        live.close()
    finally:
        workers.stop_all()
        broker.cleanup()


@pytest.fixture
def live(shared: Live, request: pytest.FixtureRequest) -> Iterator[Live]:
    yield shared
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(shared.worker.log())


def _headers(task_id: str, task: str = "appmod.add", **more: Any) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0,
            "eta": None, "expires": None, "timelimit": [None, None], **more}


def _body(args: list[Any], embed: dict[str, Any] | None = None) -> str:
    return json.dumps([args, {}, embed or {"callbacks": None, "errbacks": None,
                                            "chain": None, "chord": None}])


def _meta(live: Live, task_id: str) -> dict[str, Any]:
    def stored() -> dict[str, Any] | None:
        meta = live.client.backend.get_task_meta(task_id)
        return dict(meta) if meta["status"] in states.READY_STATES else None

    return wait_until(stored, 10, f"a stored state for {task_id}")


CASES = {
    # name: (publish keyword arguments given a task id, the reason the log must name)
    "garbage-json": (lambda tid: {"body": b"\x00{not json", "headers": _headers(tid)},
                     r"invalid task message: body: cannot be decoded as application/json"),
    "json-not-a-task": (lambda tid: {"body": json.dumps({"hello": "world"}),
                                     "headers": _headers(tid)},
                        r"invalid task message: body: expected \[args, kwargs, embed\]"),
    "pickle-not-accepted": (
        lambda tid: {"body": pickle.dumps(([1, 2], {}, {})),
                     "content_type": "application/x-python-serialize",
                     "content_encoding": "binary", "headers": _headers(tid)},
        r"content type 'application/x-python-serialize' is not accepted"),
    "bad-eta": (lambda tid: {"body": _body([1, 2]), "headers": _headers(tid, eta="tomorrow")},
                r"invalid task message: headers\.eta: expected an ISO 8601"),
    "bad-kwargs": (lambda tid: {"body": json.dumps([[1], [2], {}]), "headers": _headers(tid)},
                   r"invalid task message: body\.kwargs: expected a mapping"),
    "protocol-1": (lambda tid: {"body": json.dumps({"task": "appmod.add", "id": tid,
                                                    "args": [1, 2], "kwargs": {}}),
                                "headers": {"id": tid}},
                   r"protocol 1 message; taskq speaks protocol 2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_message_is_rejected_with_its_reason_and_id(live: Live, case: str) -> None:
    make, reason = CASES[case]
    task_id = str(uuid.uuid4())
    start = live.offset()
    live.publish(**make(task_id))
    live.log_from(start, rf"rejected message {re.escape(task_id)}: .*{reason}")
    live.still_works()


def test_message_without_headers_is_rejected_naming_its_correlation_id(live: Live) -> None:
    task_id = str(uuid.uuid4())
    start = live.offset()
    live.publish(_body([1, 2]), headers=None, correlation_id=task_id)
    live.log_from(start, rf"rejected message {re.escape(task_id)}: invalid task message: "
                         r"headers\.task: expected a non-empty string")
    live.still_works()


def test_unknown_task_is_rejected_and_stored_as_not_registered(live: Live) -> None:
    start = live.offset()
    result = live.client.send_task("appmod.no_such_task", (1,))
    live.log_from(start, rf"rejected message {result.id}: task 'appmod.no_such_task' is not "
                         r"registered")
    meta = _meta(live, result.id)
    assert meta["status"] == states.FAILURE
    assert meta["result"]["exc_type"] == "NotRegistered"
    live.still_works()


def test_a_chord_field_that_is_not_a_signature_is_rejected(live: Live) -> None:
    """Chords are run (taskq.chord); a ``chord`` field that is not a signature is not."""
    task_id = str(uuid.uuid4())
    start = live.offset()
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": "not-a-signature"}
    live.publish(_body([1, 2], embed), headers=_headers(task_id))
    live.log_from(start, rf"rejected message {task_id}: invalid task message: "
                         r"body\.embed\.chord: expected a signature")
    live.still_works()


def test_expired_task_is_not_run_and_stored_as_revoked(live: Live) -> None:
    start = live.offset()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    result = live.client.send_task("appmod.add", (1, 2), expires=past)
    live.log_from(start, rf"rejected message {result.id}: task appmod\.add\[{result.id}\] "
                         r"expired at")
    assert _meta(live, result.id)["status"] == states.REVOKED
    live.still_works()


# -- arbitrary input -----------------------------------------------------------------------------

_ints = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_scalars = st.none() | st.booleans() | _ints | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
_protocolish = st.fixed_dictionaries({}, optional={
    "task": st.sampled_from(["appmod.add", "appmod.no_such_task", ""]) | _scalars,
    "id": st.uuids().map(str) | _scalars,
    "eta": st.sampled_from(["2020-01-01T00:00:00", "soon"]) | _scalars,
    "expires": _scalars,
    "retries": _scalars,
    "timelimit": _json,
    "group_index": _scalars,
    "parent_id": _scalars,
})
_headers_st = st.none() | st.dictionaries(st.text(min_size=1, max_size=12), _json, max_size=4) \
    | _protocolish
_bodies = st.binary(max_size=200) | _json.map(json.dumps) | st.tuples(_json, _json, _json).map(
    lambda t: json.dumps(list(t)))
_content_types = st.sampled_from(["application/json", "application/x-python-serialize",
                                  "application/x-yaml", "text/plain", "application/data"])
_encodings = st.sampled_from(["utf-8", "binary", "latin-1"])


def test_arbitrary_messages_never_stop_the_worker(live: Live) -> None:
    """Given arbitrary bodies, headers, content types and encodings on the worker's queue,
    the worker stays up, logs no traceback, and a normal task queued behind them completes."""
    start = live.offset()

    @settings(max_examples=30, deadline=None)
    @given(body=_bodies, headers=_headers_st, content_type=_content_types, encoding=_encodings)
    def throw(body: Any, headers: dict[str, Any] | None, content_type: str,
              encoding: str) -> None:
        # Bytes go out as they are, labelled with whatever encoding was drawn.
        raw = body if isinstance(body, bytes) else body.encode("utf-8")
        live.publish(raw, headers=headers, content_type=content_type,
                     content_encoding=encoding)

    throw()
    live.still_works()
    text = live.worker.log()[start:]
    assert "rejected message" in text
    assert "Traceback" not in text, text
