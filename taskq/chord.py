"""Chords on the worker: header parts count themselves, the last one fires the body.

Each header task's message carries the body in its ``chord`` field, and its ``group`` /
``group_index`` headers. When a part ends (SUCCESS or FAILURE, after its result is stored)
the worker calls ``part_done``: the result backend records the part **once per task id and
group index** (a part redelivered under ``acks_late``, or run again after a lost worker,
finds itself already recorded and adds nothing) and, when the count reaches the size the
client set, hands exactly one caller a claim (``ChordJoin``). That caller sends the body
with every part's result in header order, or, if a part failed, stores the body as FAILURE
``ChordError("Dependency <id> raised <exc>")``, runs the body's ``link_error`` and fails
the rest of its chain. No ``chord_unlock`` task polls anything.

A pool child that dies after storing its part's outcome, before it counted the part or sent
the body, leaves that to the worker's main process (``taskq.trace.follow_up``), which gives up
the claim the child held (it told its parent of it) and counts again. Any other claimer that
dies between taking the claim and sending the body leaves the claim to expire
(``CHORD_CLAIM_SECONDS``); a redelivered copy of a part then takes it. So under ``acks_late``
the body runs at least once, never before the last part.
"""

from __future__ import annotations

import functools
import inspect
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from taskq import states
from taskq.canvas import (
    Signature,
    _as_list,
    follow_up_id,
    group,
    once_options,
    signature,
)
from taskq.errors import ChordError
from taskq.task import Context

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.protocol import TaskMessage
    from taskq.task import Task

logger = logging.getLogger("taskq.chord")

COUNTED_STATES = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED})


def message_done(app: TaskQ, msg: TaskMessage, state: str, value: Any, *,
                 on_claimed: Callable[[str, str, bool], None] | None = None,
                 run_id: str | None = None) -> None:
    """A task whose message has a ``chord`` field ended in ``state`` (in run ``run_id``):
    count it."""
    if msg.chord is None or not msg.group or state not in COUNTED_STATES:
        return
    part_done(app, group_id=msg.group, task_id=msg.id, group_index=msg.group_index,
              body=msg.chord, state=state, value=value, parent_id=msg.id,
              root_id=msg.root_id or msg.id, on_claimed=on_claimed, run_id=run_id)


def ended_by_worker(app: TaskQ, msg: TaskMessage, state: str, exc: BaseException) -> None:
    """The worker ended a task its code did not finish (its child was lost, a hard time
    limit, revoked, expired, an unknown task), after storing ``state``: a chord's header part
    counts, so the body fires (failing with ``ChordError``) instead of waiting forever; a
    failed task's errbacks run and the rest of its chain fails (``get()`` on the chain
    raises). Never raises."""
    try:
        message_done(app, msg, state, exc)
        if state != states.FAILURE:
            return
        if msg.errbacks:  # as Celery's worker does for a lost task (mark_as_failure's errbacks)
            run_errbacks(app, msg.errbacks, task_id=msg.id, exc=exc, traceback=None,
                         request=Context.from_message(msg), parent_id=msg.id,
                         root_id=msg.root_id or msg.id)
        if msg.chain:
            fail_chain(app, msg.chain, exc)
    except Exception:
        logger.exception("task %s: ending its chord part or chain failed", msg.id)


def part_done(app: TaskQ, *, group_id: str, task_id: str, group_index: int | None,
              body: Mapping[str, Any], state: str, value: Any, parent_id: str | None,
              root_id: str | None,
              on_claimed: Callable[[str, str, bool], None] | None = None,
              run_id: str | None = None) -> None:
    """Record one part of chord ``group_id``; the part that completes it fires the body.
    ``on_claimed(group_id, token, fired)`` is told of the claim before the body is sent
    (``fired`` False) and once it was sent or failed (True), before the counters are dropped:
    a pool child tells its parent, which gives the claim up if the child dies before the
    body was sent, and finishes the chord if it dies after. The body carries ``run_id``, the
    run of the part that sends it (``canvas.ONCE_HEADER``).

    Never raises: a failure is logged (the part's own result is already stored).
    """
    backend = app.backend
    try:
        join = backend.chord_part_return(group_id, task_id, group_index, state,
                                         backend.prepare_result(state, value))
    except Exception:
        logger.exception("chord %s: counting part %s failed", group_id, task_id)
        return
    if join is None:
        return
    if on_claimed is not None:
        on_claimed(join.group_id, join.token, False)
    callback = signature(body, app)
    try:
        failed = _first_failure(backend, join.parts)
        if failed is not None:
            part_id, exc = failed
            logger.info("chord %s: part %s failed; the body fails", group_id, part_id)
            error = ChordError(f"Dependency {part_id} raised {exc!r}")
            error.__cause__ = exc
            fail_body(app, callback, error)
        else:
            values = header_values(backend, group_id, join.parts)
            options: dict[str, Any] = {}
            if "parent_id" not in callback.options:
                options["parent_id"] = parent_id
            if "root_id" not in callback.options:
                options["root_id"] = root_id
            callback.apply_async((values,), **once_options(callback, options, run_id))
    except Exception as exc:
        logger.exception("chord %s: sending the body failed", group_id)
        fail_body(app, callback, ChordError(f"Callback error: {exc!r}"))
    finally:
        if on_claimed is not None:
            on_claimed(join.group_id, join.token, True)
        try:
            backend.chord_done(join)
        except Exception:
            logger.exception("chord %s: cleaning up its counters failed", group_id)


def header_values(backend: Any, group_id: str, parts: Iterable[tuple[str, str, Any]]
                  ) -> list[Any]:
    """The body's argument: each part's value in header order, or, when the client saved
    the header because a part is a group (a chain ending in one), the values in that
    nested shape (``[[a, b], c]``), as Celery's worker gives them."""
    values = {tid: backend.result_from_meta({"status": s, "result": v})
              for tid, s, v in parts}
    flat = [values[tid] for tid, _s, _v in parts]
    try:
        saved = backend.restore_group(group_id)
    except Exception:  # a backend without saved groups: the flat list
        return flat
    try:
        nested = _shaped(saved, values)
    except (KeyError, TypeError, ValueError):
        logger.warning("chord %s: its saved header does not match its parts; the body gets "
                       "them in a flat list", group_id)
        return flat
    return nested if isinstance(nested, list) else flat


def _shaped(saved: Any, values: Mapping[str, Any]) -> Any:
    """A saved result tuple ``((id, parent), children)`` with each leaf's value."""
    if saved is None:
        return None
    (rid, _parent), children = saved
    if children is None:
        return values[rid]
    return [_shaped(child, values) for child in children]


def _first_failure(backend: Any, parts: Iterable[tuple[str, str, Any]]
                   ) -> tuple[str, BaseException] | None:
    for tid, state, value in parts:
        if state in states.PROPAGATE_STATES:
            exc = backend.result_from_meta({"status": state, "result": value})
            return tid, exc if isinstance(exc, BaseException) else RuntimeError(repr(exc))
    return None


def fail_body(app: TaskQ, body: Signature, exc: BaseException) -> None:
    """The body cannot run: store it as FAILURE ``exc``, run its errbacks, fail what follows.

    A group body fails each of its tasks, as Celery 5.7's worker does: with the header's own
    error (the ``ChordError``'s cause), each running its own errbacks and the group's, once
    each; a task that is a chord fails as its body (the result it stands for)."""
    if not isinstance(body, group):
        _fail_member(app, body, body.options.setdefault("task_id", str(uuid.uuid4())),
                     _as_list(body.options.get("link_error")), exc)
        return
    cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    group_errbacks = _as_list(body.options.get("link_error"))
    frozen = body.freeze()
    for member, result in zip(body.tasks, frozen.results, strict=False):
        errbacks = [*_result_errbacks(member), *group_errbacks]
        unique = [eb for i, eb in enumerate(errbacks) if eb not in errbacks[:i]]
        _fail_member(app, member, result.id, unique, cause)
    try:
        app.backend.mark_as_failure(frozen.id, cause)
    except Exception:
        logger.exception("storing the failure of chord body group %s failed", frozen.id)
    fail_chain(app, body.options.get("chain") or (), cause)


def _fail_member(app: TaskQ, member: Signature, task_id: str,
                 errbacks: list[Mapping[str, Any]], exc: BaseException) -> None:
    try:
        app.backend.mark_as_failure(task_id, exc)
    except Exception:
        logger.exception("storing the failure of chord body %s failed", task_id)
    request = Context(id=task_id, task=member.name, args=member.args,
                      kwargs=dict(member.kwargs), called_directly=False)
    run_errbacks(app, errbacks, task_id=task_id, exc=exc, traceback=None, request=request,
                 parent_id=task_id, root_id=task_id)
    # A body that is itself a part of an enclosing chord counts there as failed.
    outer = member.options.get("chord")
    if outer is not None and member.options.get("group_id"):
        part_done(app, group_id=member.options["group_id"], task_id=task_id,
                  group_index=member.options.get("group_index"), body=outer,
                  state=states.FAILURE, value=exc, parent_id=task_id, root_id=task_id)
    fail_chain(app, member.options.get("chain") or (), exc)


def _result_errbacks(sig: Signature) -> list[Mapping[str, Any]]:
    """The errbacks linked to the result ``sig`` stands for: a chord's own and its body's
    (recursively), a group's own and each of its tasks', any other signature's own."""
    errbacks: list[Mapping[str, Any]] = []
    while isinstance(sig, Signature) and sig.subtask_type == "chord":
        errbacks += _as_list(sig.options.get("link_error"))
        body = sig.kwargs.get("body")
        if not isinstance(body, Mapping):
            return errbacks
        sig = signature(body, sig._app)
    errbacks += _as_list(sig.options.get("link_error"))
    if isinstance(sig, group):
        for task in sig.tasks:
            errbacks += _result_errbacks(task)
    return errbacks


def fail_chain(app: TaskQ, chain: Iterable[Mapping[str, Any]], exc: BaseException) -> None:
    """A step failed: the steps after it will never run, so store them as FAILURE ``exc``
    (``get()`` on a chain then raises), count chord parts among them, and descend into a
    chord step's body."""
    pending = list(chain)
    while pending:
        raw = pending.pop(0)
        sig = signature(raw, app)
        if isinstance(sig, group):
            # each task of the group fails, and counts where it belongs: a group ending a
            # chain in a chord's header counts once per task there (chord_size)
            pending[:0] = [task.clone() for task in sig.tasks]
            continue
        options = sig.options
        task_id = options.get("task_id")
        if task_id:
            try:
                app.backend.mark_as_failure(task_id, exc)
            except Exception:
                logger.exception("storing the failure of chain step %s failed", task_id)
            if options.get("chord") is not None and options.get("group_id"):
                part_done(app, group_id=options["group_id"], task_id=task_id,
                          group_index=options.get("group_index"), body=options["chord"],
                          state=states.FAILURE, value=exc, parent_id=task_id,
                          root_id=task_id)
        if sig.subtask_type == "chord":
            body = sig.kwargs.get("body")
            if body is not None:
                pending.append(body)


def _takes_request(task: Task, sig: Signature) -> bool:
    """Celery's rule: an errback left with more than one positional argument to fill, once
    its signature's own arguments are bound (``partial(fn, *args, **kwargs)``: a keyword
    argument binds its parameter and every later one by keyword), gets ``(request, exc,
    traceback)``; otherwise the failed task's id."""
    bound_self = (None,) if task.bind else ()
    try:
        params = list(inspect.signature(
            functools.partial(task.fn, *bound_self, *sig.args, **sig.kwargs)).parameters.values())
    except (TypeError, ValueError):  # arguments that do not fit: count the function's own
        try:
            params = list(inspect.signature(task.fn).parameters.values())[len(bound_self):]
        except (TypeError, ValueError):
            return False
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return True
    return len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) > 1


def run_errbacks(app: TaskQ, errbacks: Iterable[Mapping[str, Any]], *, task_id: str,
                 exc: BaseException, traceback: str | None, request: Any,
                 parent_id: str | None, root_id: str | None, eager: bool = False,
                 run_id: str | None = None) -> None:
    """Run a failed task's errbacks as Celery does: one registered here whose function takes
    ``(request, exc, traceback)`` is called in this process; any other is sent as a task
    with the failed task's id as its first argument."""
    for position, raw in enumerate(errbacks):
        sig = signature(raw, app)
        task = app.tasks.get(sig.name)
        try:
            if task is not None and not sig.immutable and _takes_request(task, sig):
                task.run(request, exc, traceback, *sig.args, **sig.kwargs)
            elif eager and task is not None:
                task.apply((task_id, *sig.args), dict(sig.kwargs))
            else:
                options: dict[str, Any] = {}
                if "parent_id" not in sig.options:
                    options["parent_id"] = parent_id
                if "root_id" not in sig.options:
                    options["root_id"] = root_id
                follow_up_id(sig, run_id, "errback", position)
                sig.apply_async((task_id,), **once_options(sig, options, run_id))
        except Exception:
            logger.exception("errback %s of task %s failed", sig.name, task_id)
