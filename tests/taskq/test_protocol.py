"""Celery protocol v2: the round trip keeps everything; garbage only ever gives
InvalidTaskMessage (or ContentDisallowed for a refused content type)."""

from __future__ import annotations

import datetime as dt
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.serialization import dumps

from taskq.errors import ContentDisallowed, InvalidTaskMessage
from taskq.protocol import TaskMessage, decode, to_wire
from taskq.testing.strategies import json_values, task_args, task_kwargs

header_keys = st.from_regex(r"x_[a-z]{1,10}", fullmatch=True)
aware = st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1),
                     timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5))]))
limits = st.none() | st.floats(0, 1e6, allow_nan=False)


def wire_round_trip(msg: TaskMessage) -> TaskMessage:
    body, headers, properties = to_wire(msg)
    content_type, encoding, payload = dumps(body, serializer="json")
    headers = json.loads(json.dumps(headers))  # headers cross the wire as JSON too
    return decode(payload, content_type=content_type, content_encoding=encoding,
                  headers=headers, properties=properties, accept=["json"])


@given(args=task_args(), kwargs=task_kwargs(),
       extra=st.dictionaries(header_keys, json_values(max_leaves=5), max_size=3),
       eta=st.none() | aware, expires=st.none() | aware, hard=limits, soft=limits,
       retries=st.integers(0, 1000))
def test_round_trip_keeps_every_field(args, kwargs, extra, eta, expires, hard, soft, retries):
    msg = TaskMessage(task="proj.add", id="abc-123", args=tuple(args), kwargs=kwargs,
                      retries=retries, eta=eta, expires=expires, time_limit=hard,
                      soft_time_limit=soft, headers=extra, reply_to="replies",
                      parent_id="p", root_id="r", group="g")
    back = wire_round_trip(msg)
    assert back.task == msg.task and back.id == msg.id
    assert list(back.args) == list(args) and back.kwargs == kwargs
    assert back.retries == retries
    assert back.eta == eta and back.expires == expires
    assert (back.time_limit, back.soft_time_limit) == (hard, soft)
    assert dict(back.headers) == extra
    assert (back.reply_to, back.parent_id, back.root_id, back.group) == ("replies", "p", "r", "g")
    assert back.correlation_id == msg.id


@given(body=json_values(), headers=st.none() | json_values())
def test_arbitrary_json_never_raises_anything_but_invalid_task_message(body, headers):
    payload = json.dumps(body)
    try:
        decode(payload, content_type="application/json", content_encoding="utf-8",
               headers=headers, properties={}, accept=["json"])
    except InvalidTaskMessage:
        pass


@given(raw=st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_invalid_task_message(raw):
    try:
        decode(raw, content_type="application/json", content_encoding="utf-8",
               headers={"task": "t", "id": "i"}, properties={}, accept=["json"])
    except InvalidTaskMessage:
        pass


GOOD_HEADERS = {"task": "t", "id": "i", "retries": 0}


@pytest.mark.parametrize(("headers", "body", "field"), [
    ({"id": "i"}, [[], {}, {}], "headers.task"),
    ({"task": "t", "id": 5}, [[], {}, {}], "headers.id"),
    ({**GOOD_HEADERS, "retries": -1}, [[], {}, {}], "headers.retries"),
    ({**GOOD_HEADERS, "eta": "tomorrow"}, [[], {}, {}], "headers.eta"),
    ({**GOOD_HEADERS, "timelimit": [1]}, [[], {}, {}], "headers.timelimit"),
    (GOOD_HEADERS, [[], {}], "body"),
    (GOOD_HEADERS, ["notalist", {}, {}], "body.args"),
    (GOOD_HEADERS, [[], {"1": 1, "x": 2}, {"callbacks": [{"no": "task"}]}], "body.embed.callbacks"),
    (GOOD_HEADERS, [[], {}, "embed"], "body.embed"),
])
def test_malformed_messages_name_the_field(headers, body, field):
    with pytest.raises(InvalidTaskMessage) as info:
        decode(json.dumps(body), content_type="application/json", content_encoding="utf-8",
               headers=headers, properties={}, accept=["json"])
    assert info.value.field == field
    assert field in str(info.value)


def test_protocol_1_messages_are_named_as_such():
    body = json.dumps({"task": "t", "id": "i", "args": [], "kwargs": {}})
    with pytest.raises(InvalidTaskMessage, match="protocol 1"):
        decode(body, content_type="application/json", content_encoding="utf-8", headers={},
               properties={}, accept=["json"])


def test_pickle_is_refused_unless_accepted():
    payload = pickle.dumps(([], {}, {}))
    with pytest.raises(ContentDisallowed, match="accept_content"):
        decode(payload, content_type="application/x-python-serialize",
               content_encoding="binary", headers=GOOD_HEADERS, properties={},
               accept=["json"])
    msg = decode(payload, content_type="application/x-python-serialize",
                 content_encoding="binary", headers=GOOD_HEADERS, properties={},
                 accept=["json", "pickle"])
    assert msg.task == "t"


def test_custom_headers_are_kept_and_protocol_headers_are_not():
    msg = TaskMessage(task="t", id="i", headers={"tenant": "acme"})
    _body, headers, _props = to_wire(msg)
    assert headers["tenant"] == "acme" and headers["lang"] == "py"
    back = wire_round_trip(msg)
    assert dict(back.headers) == {"tenant": "acme"}


def test_naive_eta_is_taken_as_utc():
    headers = {**GOOD_HEADERS, "eta": "2030-01-01T10:00:00"}
    msg = decode(json.dumps([[], {}, {}]), content_type="application/json",
                 content_encoding="utf-8", headers=headers, properties={}, accept=["json"])
    assert msg.eta == dt.datetime(2030, 1, 1, 10, tzinfo=dt.UTC)


def test_argsrepr_headers_stay_small_for_big_arguments() -> None:
    # RabbitMQ refuses a header frame larger than frame_max (128 KiB): Celery caps these too.
    body, headers, _props = to_wire(TaskMessage(task="t", id="1", args=("x" * (1 << 20),),
                                                kwargs={"blob": "y" * (1 << 20)}))
    assert len(headers["argsrepr"]) <= 1024 and headers["argsrepr"].startswith("('xxx")
    assert len(headers["kwargsrepr"]) <= 1024
    args, kwargs, _embed = body  # the arguments themselves travel whole in the body
    assert len(args[0]) == len(kwargs["blob"]) == 1 << 20


def test_replaced_task_nesting_travels_as_celerys_header() -> None:
    """Task.replace counts how deep a replacement is in the replaced_task_nesting header (as
    Celery writes and reads it); a plain message has none, and a bad value reads as 0."""
    _body, headers, _props = to_wire(TaskMessage(task="t", id="i", replaced_task_nesting=2))
    assert headers["replaced_task_nesting"] == 2
    assert wire_round_trip(TaskMessage(task="t", id="i", replaced_task_nesting=2)
                           ).replaced_task_nesting == 2
    assert "replaced_task_nesting" not in to_wire(TaskMessage(task="t", id="i"))[1]
    bad = {**GOOD_HEADERS, "replaced_task_nesting": "x"}
    msg = decode(json.dumps([[], {}, {}]), content_type="application/json",
                 content_encoding="utf-8", headers=bad, properties={}, accept=["json"])
    assert msg.replaced_task_nesting == 0


def test_celerys_stamps_stay_with_the_message_and_match_a_stamped_revoke():
    from taskq.protocol import decode_headers_body, to_wire
    from taskq.worker.state import revoked_by_stamps

    headers = {"task": "t", "id": "i", "stamped_headers": ["mon", "tags"],
               "stamps": {"mon": "m1", "tags": ["a", "b"]}}
    msg = decode_headers_body([[], {}, {}], headers, {})
    assert to_wire(msg)[1]["stamps"] == {"mon": "m1", "tags": ["a", "b"]}
    assert revoked_by_stamps(msg.headers, {"mon": ["m1"]})
    assert revoked_by_stamps(msg.headers, {"tags": ["b", "z"]})
    assert not revoked_by_stamps(msg.headers, {"mon": ["m"]})  # no substring match
    assert not revoked_by_stamps(msg.headers, {"other": ["m1"]})
    assert not revoked_by_stamps({}, {"mon": ["m1"]})
