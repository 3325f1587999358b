"""Celery's task message protocol, version 2: encoding and validating decoding.

A message is three parts (https://docs.celeryq.dev, "Message Protocol"):

- headers: ``lang, task, id, shadow, eta, expires, group, group_index, retries, timelimit,
  root_id, parent_id, argsrepr, kwargsrepr, origin, ignore_result`` and any custom headers;
- properties: ``correlation_id`` (the task id), ``reply_to``, plus the content type and
  encoding kombu carries;
- body: ``[args, kwargs, {"callbacks", "errbacks", "chain", "chord"}]``.

``decode`` accepts only what it can run: anything else raises ``InvalidTaskMessage`` naming
the field, or ``ContentDisallowed`` for a content type the receiver does not accept.
"""

from __future__ import annotations

import datetime as dt
import os
import reprlib
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from kombu.exceptions import ContentDisallowed as _KombuContentDisallowed
from kombu.serialization import loads, prepare_accept_content

from taskq.errors import ContentDisallowed, InvalidTaskMessage

__all__ = ["TaskMessage", "decode", "decode_headers_body", "origin_name", "to_wire"]

# Headers that belong to the protocol; every other header is the caller's own.
PROTOCOL_HEADERS = frozenset({
    "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
    "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr", "origin", "ignore_result",
    "replaced_task_nesting",
})
# Celery's stamps (``stamped_headers``, ``stamps``) are kept among the caller's headers: they
# travel on with the message (retries keep them) and revoke_by_stamped_headers reads them.

Signature = dict[str, Any]


@dataclass(frozen=True)
class TaskMessage:
    """One task invocation as carried on the wire."""

    task: str
    id: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    eta: dt.datetime | None = None
    expires: dt.datetime | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    origin: str | None = None
    argsrepr: str | None = None
    kwargsrepr: str | None = None
    ignore_result: bool = False
    reply_to: str | None = None
    replaced_task_nesting: int = 0
    """How many ``Task.replace`` calls led to this task (a Celery header)."""
    callbacks: tuple[Signature, ...] = ()
    errbacks: tuple[Signature, ...] = ()
    chain: tuple[Signature, ...] = ()
    chord: Signature | None = None
    headers: Mapping[str, Any] = field(default_factory=dict)
    """Custom (non-protocol) headers, such as those passed to ``apply_async(headers=...)``."""
    properties: Mapping[str, Any] = field(default_factory=dict)
    """The other message properties it arrived with (``app_id``, ``priority``, ...), as
    Celery's ``self.request.properties`` shows them; never published again."""

    @property
    def correlation_id(self) -> str:
        return self.id

    def evolve(self, **changes: Any) -> TaskMessage:
        return replace(self, **changes)


def origin_name() -> str:
    return f"gen{os.getpid()}@{socket.gethostname()}"


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 20
ARGSREPR_MAX = 1024  # as Celery: headers stay small (RabbitMQ refuses header frames > frame_max)


def short_repr(value: Any) -> str:
    """``repr`` for the ``argsrepr``/``kwargsrepr`` headers, at most ``ARGSREPR_MAX`` chars."""
    text = _REPR.repr(value)
    return text if len(text) <= ARGSREPR_MAX else text[:ARGSREPR_MAX - 3] + "..."


def to_wire(msg: TaskMessage) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
    """``(body, headers, properties)`` ready for ``kombu.Producer.publish``."""
    headers: dict[str, Any] = dict(msg.headers)
    headers.update({
        "lang": "py",
        "task": msg.task,
        "id": msg.id,
        "shadow": msg.shadow,
        "eta": _iso(msg.eta),
        "expires": _iso(msg.expires),
        "group": msg.group,
        "group_index": msg.group_index,
        "retries": msg.retries,
        "timelimit": [msg.time_limit, msg.soft_time_limit],
        "root_id": msg.root_id or msg.id,
        "parent_id": msg.parent_id,
        "argsrepr": msg.argsrepr if msg.argsrepr is not None else short_repr(tuple(msg.args)),
        "kwargsrepr": (msg.kwargsrepr if msg.kwargsrepr is not None
                       else short_repr(dict(msg.kwargs))),
        "origin": msg.origin or origin_name(),
        "ignore_result": msg.ignore_result,
    })
    if msg.replaced_task_nesting:
        headers["replaced_task_nesting"] = msg.replaced_task_nesting
    properties: dict[str, Any] = {"correlation_id": msg.id}
    if msg.reply_to:
        properties["reply_to"] = msg.reply_to
    embed = {
        "callbacks": list(msg.callbacks) or None,
        "errbacks": list(msg.errbacks) or None,
        "chain": list(msg.chain) or None,
        "chord": msg.chord,
    }
    body = (list(msg.args), dict(msg.kwargs), embed)
    return body, headers, properties


# -- decoding ---------------------------------------------------------------------------------

def decode(
    body: bytes | str,
    *,
    content_type: str | None,
    content_encoding: str | None,
    headers: Mapping[str, Any] | None,
    properties: Mapping[str, Any] | None,
    accept: Collection[str] | None,
) -> TaskMessage:
    """Deserialize and validate a raw message (``InvalidTaskMessage``, ``ContentDisallowed``)."""
    if not content_type:
        raise InvalidTaskMessage("content_type", "missing; the sender must set a content type")
    try:
        payload = loads(body, content_type, content_encoding or "utf-8",
                        accept=prepare_accept_content(accept) if accept is not None else None)
    except _KombuContentDisallowed as exc:
        raise ContentDisallowed(
            f"content type {content_type!r} is not accepted (accept_content={sorted(accept or [])})"
            "; add it to accept_content on the receiving side or publish with an accepted "
            "serializer"
        ) from exc
    except Exception as exc:
        raise InvalidTaskMessage("body", f"cannot be decoded as {content_type}: {exc}") from None
    return decode_headers_body(payload, headers, properties)


def decode_headers_body(
    payload: Any, headers: Mapping[str, Any] | None, properties: Mapping[str, Any] | None
) -> TaskMessage:
    """Validate an already deserialized body with its headers and properties."""
    if not isinstance(headers, Mapping):
        raise InvalidTaskMessage("headers", f"expected a mapping, got {type(headers).__name__}")
    if "task" not in headers and isinstance(payload, Mapping) and "task" in payload:
        raise InvalidTaskMessage(
            "headers", "this is a protocol 1 message; taskq speaks protocol 2 (Celery >= 4)"
        )
    props = properties if isinstance(properties, Mapping) else {}
    args, kwargs, embed = _body(payload)
    hard, soft = _timelimit(headers.get("timelimit"))
    return TaskMessage(
        task=_required_str(headers, "task"),
        id=_required_str(headers, "id"),
        args=args,
        kwargs=kwargs,
        retries=_retries(headers.get("retries", 0)),
        eta=_datetime(headers, "eta"),
        expires=_datetime(headers, "expires"),
        time_limit=hard,
        soft_time_limit=soft,
        root_id=_optional_str(headers, "root_id"),
        parent_id=_optional_str(headers, "parent_id"),
        group=_optional_str(headers, "group"),
        group_index=_optional_int(headers, "group_index"),
        shadow=_optional_str(headers, "shadow"),
        origin=_optional_str(headers, "origin"),
        argsrepr=_optional_str(headers, "argsrepr"),
        kwargsrepr=_optional_str(headers, "kwargsrepr"),
        ignore_result=bool(headers.get("ignore_result") or False),
        reply_to=_optional_str(props, "reply_to", where="properties"),
        replaced_task_nesting=_nesting(headers.get("replaced_task_nesting")),
        callbacks=_signatures(embed, "callbacks"),
        errbacks=_signatures(embed, "errbacks"),
        chain=_signatures(embed, "chain"),
        chord=_chord(embed),
        headers={k: v for k, v in headers.items() if k not in PROTOCOL_HEADERS},
        properties={k: v for k, v in props.items() if k not in _NOT_PROPERTIES
                    and isinstance(v, str | int | float | bool)},
    )


# Set from the message's fields (to_wire), or kombu's own bookkeeping.
_NOT_PROPERTIES = frozenset({"correlation_id", "reply_to", "delivery_info", "delivery_tag",
                             "body_encoding"})


def _body(payload: Any) -> tuple[tuple[Any, ...], dict[str, Any], Mapping[str, Any]]:
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        raise InvalidTaskMessage("body", "expected [args, kwargs, embed]")
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple):
        raise InvalidTaskMessage("body.args", f"expected a list, got {type(args).__name__}")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidTaskMessage("body.kwargs", "expected a mapping with string keys")
    if embed is None:
        embed = {}
    if not isinstance(embed, Mapping):
        raise InvalidTaskMessage("body.embed", f"expected a mapping, got {type(embed).__name__}")
    return tuple(args), dict(kwargs), embed


def _required_str(headers: Mapping[str, Any], key: str) -> str:
    value = headers.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidTaskMessage(f"headers.{key}", f"expected a non-empty string, got {value!r}")
    return value


def _optional_str(
    headers: Mapping[str, Any], key: str, *, where: str = "headers"
) -> str | None:
    value = headers.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidTaskMessage(f"{where}.{key}", f"expected a string or null, got {value!r}")


def _optional_int(headers: Mapping[str, Any], key: str) -> int | None:
    value = headers.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise InvalidTaskMessage(f"headers.{key}", f"expected an integer or null, got {value!r}")


def _retries(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidTaskMessage("headers.retries", f"expected an integer >= 0, got {value!r}")


def _nesting(value: Any) -> int:
    """``replaced_task_nesting`` is informational: a value that is not a count is 0."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _datetime(headers: Mapping[str, Any], key: str) -> dt.datetime | None:
    value = headers.get(key)
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise InvalidTaskMessage(
                f"headers.{key}", f"expected an ISO 8601 date and time, got {value!r}"
            ) from None
    else:
        raise InvalidTaskMessage(f"headers.{key}", f"expected an ISO 8601 string, got {value!r}")
    # A naive time is taken as UTC, as Celery does with enable_utc.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _limit(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise InvalidTaskMessage("headers.timelimit", f"limits must be numbers >= 0, got {value!r}")


def _timelimit(value: Any) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise InvalidTaskMessage("headers.timelimit", f"expected [hard, soft], got {value!r}")
    return _limit(value[0]), _limit(value[1])


def _signatures(embed: Mapping[str, Any], key: str) -> tuple[Signature, ...]:
    value = embed.get(key)
    if value is None:
        return ()
    if isinstance(value, list | tuple) and all(
        isinstance(sig, Mapping) and isinstance(sig.get("task"), str) for sig in value
    ):
        return tuple(dict(sig) for sig in value)
    raise InvalidTaskMessage(f"body.embed.{key}", "expected a list of signatures with a 'task'")


def _chord(embed: Mapping[str, Any]) -> Signature | None:
    value = embed.get("chord")
    if value is None:
        return None
    if isinstance(value, Mapping):
        return dict(value)
    raise InvalidTaskMessage("body.embed.chord", f"expected a signature, got {value!r}")
