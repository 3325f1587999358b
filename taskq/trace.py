"""Running one task for one message: the same code for the worker's children and ``apply()``.

``execute`` pushes the request context, calls the task, turns what happened into an
``Outcome`` (SUCCESS, FAILURE, RETRY, IGNORED, REJECTED), stores the state in the result
backend (the child stores, so storing scales with concurrency) and sends ``link`` /
``link_error`` callbacks and the next step of an embedded chain.
"""

from __future__ import annotations

import logging
import os
import time
import traceback as tb
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionInfo
from kombu.exceptions import EncodeError

from taskq import chord, states
from taskq.app import run_hooks
from taskq.backends.base import DisabledBackend
from taskq.canvas import ONCE_HEADER, Signature, follow_up_id, once_options, signature
from taskq.errors import Ignore, Reject, Retry, TaskqError
from taskq.result import EagerResult
from taskq.task import Context, Task

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from taskq.app import TaskQ
    from taskq.protocol import TaskMessage

logger = logging.getLogger("taskq.trace")

IGNORED = "IGNORED"  # not a stored state: the task raised Ignore


@dataclass(frozen=True)
class Outcome:
    """What happened when a task ran."""

    state: str
    value: Any = None
    traceback: str | None = None
    runtime: float = 0.0
    requeue: bool = False
    retry: Retry | None = None

    @property
    def succeeded(self) -> bool:
        return self.state == states.SUCCESS


def _format_tb(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


def _call(task: Task, msg: TaskMessage) -> Any:
    try:
        return task.run(*msg.args, **msg.kwargs)
    except Exception as exc:
        if not task.autoretry_for or not isinstance(exc, task.autoretry_for):
            raise
        if isinstance(exc, Retry | Ignore | Reject):
            raise
        options = dict(task.retry_kwargs)
        options.setdefault("countdown", task.backoff_countdown(task.request.retries))
        task.retry(exc=exc, **options)
        raise  # pragma: no cover - retry() always raises


def execute(
    task: Task,
    msg: TaskMessage,
    *,
    delivery_info: Mapping[str, Any] | None = None,
    hostname: str | None = None,
    eager: bool = False,
    store: bool = True,
    on_storing: Callable[[bool], None] | None = None,
    on_stored: Callable[[str, bool], None] | None = None,
    on_claimed: Callable[[str, str, bool], None] | None = None,
    on_followed: Callable[[], None] | None = None,
    on_sent: Callable[[int], None] | None = None,
    run_id: str | None = None,
) -> Outcome:
    """Run ``task`` for ``msg`` and record the outcome; never raises for a task's own error.

    With ``track_started`` (the task's or ``task_track_started``) STARTED is stored first,
    with this process's pid and the worker's hostname, as Celery does. ``on_storing(writes)``
    runs just before the outcome is stored and ``on_stored(state, urgent)`` just after (before
    callbacks are sent): the prefork child uses them to shield the store from its soft-limit
    signal and to tell the parent that the outcome is final (a death after that must not undo
    it). ``writes`` says whether the backend is written at all, ``urgent`` whether anything
    runs after the store (a write was made, or a handler, chord count or message follows): when
    neither, the child tells the parent with its ``done``, which says the same.
    ``on_claimed(group_id, token, fired)`` runs when this part completed its chord and holds
    the claim to fire the body (again with ``fired`` once the body was sent),
    ``on_followed()`` once the chord part is counted and everything that follows the outcome
    is sent: a child that dies between ``on_stored`` and ``on_followed`` leaves that to the
    parent (``follow_up``); ``on_sent(n)`` after each of what follows is sent (n so far), so
    the parent sends only the rest. What follows the outcome carries ``run_id`` (the pool's
    name for this run, ``Job.run_id``): the parent sends it again with the same one.
    """
    once = None if eager else _once_key(task, msg)
    if once is not None and not _claim_once(task, msg, once):
        return Outcome(IGNORED)
    context = Context.from_message(msg, delivery_info=delivery_info, hostname=hostname,
                                   is_eager=eager)
    backend = task.app.backend if store else None
    ignore_result = task.ignore_result or msg.ignore_result
    started = time.monotonic()
    einfo: ExceptionInfo | None = None
    task.push_request(context)
    task.app.push_current(context)
    run_hooks(task.app.hooks.task_prerun, task, msg.id)
    try:
        if backend is not None and not eager and not ignore_result and task.track_started:
            _store_started(task, context)
        task.before_start(msg.id, context.args, context.kwargs)
        value = _call(task, msg)
    except Retry as retry:
        einfo = ExceptionInfo()
        outcome = Outcome(states.RETRY, retry.exc or retry, _format_tb(retry),
                          time.monotonic() - started, retry=retry)
    except Ignore:
        outcome = Outcome(IGNORED, None, None, time.monotonic() - started)
    except Reject as reject:
        outcome = Outcome(states.REJECTED, reject, None, time.monotonic() - started,
                          requeue=reject.requeue)
    except Exception as exc:
        einfo = ExceptionInfo()
        outcome = Outcome(states.FAILURE, exc, _format_tb(exc), time.monotonic() - started)
    else:
        outcome = Outcome(states.SUCCESS, value, None, time.monotonic() - started)
    finally:
        task.app.pop_current()
        task.pop_request()

    if once is not None and outcome.state == states.REJECTED and outcome.requeue:
        _release_once(task, msg, once)  # the copy that comes back must run
    run_hooks(task.app.hooks.task_postrun, task, msg.id, outcome.state)
    followers = _followers(task, msg, context, eager, run_id) if outcome.succeeded else []
    if backend is not None:
        writes = _writes(task, outcome, ignore_result)
        if on_storing is not None:
            on_storing(writes)
        outcome = _store(task, context, outcome, ignore_result)
        if on_stored is not None:
            on_stored(outcome.state, writes or _anything_follows(task, msg, outcome, followers))
        if msg.chord is not None and not eager:  # a chord's header part: count it
            chord.message_done(task.app, msg, outcome.state, outcome.value,
                               on_claimed=on_claimed, run_id=run_id)
    _run_handlers(task, context, outcome, einfo)
    if outcome.state == states.SUCCESS:
        for sent, (sig, rest) in enumerate(followers, 1):
            _send(task, sig, outcome.value, msg, eager, rest, run_id)
            if on_sent is not None:
                on_sent(sent)
    elif outcome.state == states.FAILURE:
        _send_errbacks(task, msg, eager, outcome, context, run_id)
    if on_followed is not None:
        on_followed()
    return outcome


def _once_key(task: Task, msg: TaskMessage) -> str | None:
    """The run-once key of a message sent as a follow-up (``ONCE_HEADER``), for an early-ack
    task; None otherwise (an ``acks_late`` task runs at least once: a second copy may run)."""
    sender = msg.headers.get(ONCE_HEADER)
    if task.acks_late or not sender:
        return None
    # A retry or a replacement is a new message with the same id: it runs.
    return f"{msg.id}:{msg.retries}:{msg.replaced_task_nesting}:{sender}"


def _claim_once(task: Task, msg: TaskMessage, key: str) -> bool:
    try:
        if task.app.backend.claim_once(key):
            return True
    except Exception as exc:  # better a possible second run than none
        logger.warning("task %s[%s]: taking its run-once key failed (%s); running it",
                       task.name, msg.id, exc)
        return True
    logger.warning("task %s[%s]: a second copy of a message task %s sent after it ended "
                   "(sent again for a child that died, or a publish retried after a "
                   "connection fault); the first copy ran: dropped", task.name, msg.id,
                   msg.parent_id)
    return False


def _release_once(task: Task, msg: TaskMessage, key: str) -> None:
    try:
        task.app.backend.release_once(key)
    except Exception as exc:
        logger.warning("task %s[%s]: giving back its run-once key failed (%s); the requeued "
                       "message will be dropped as a second copy", task.name, msg.id, exc)


def follow_up(app: TaskQ, msg: TaskMessage, state: str,
              claim: tuple[str, str] | None = None, sent: int = 0,
              fired: bool = False, run_id: str | None = None) -> None:
    """The pool child that ran ``msg`` died after it stored ``state``, before it had counted
    its chord part and sent what follows (the next chain step, its callbacks or errbacks):
    do that here, with the stored value, or the chain stops and the chord's body never runs.
    Counting again adds nothing (a part counts once); a claim to fire the body this part
    holds is given up first, so that this count takes it; ``claim`` with ``fired``: the
    child had sent the body, and only the chord's counters are dropped; ``sent``: how many
    of what follows the child had sent (those are not sent again); ``run_id``: the run the
    child was in (what is sent again carries it, so its copies run once). Never raises."""
    try:
        value = app.backend.result_from_meta(app.backend.get_task_meta(msg.id))
        if claim is not None and fired:
            from taskq.backends.base import ChordJoin

            app.backend.chord_done(ChordJoin(claim[0], claim[1], ()))
        elif msg.chord is not None and msg.group and not fired:
            # Give up the claim this part holds, if it does (a claim is named by its part,
            # so whether or not the child said it took one), so the count below takes it.
            from taskq.backends.base import claim_token

            app.backend.chord_release(msg.group, claim_token(msg.id, msg.group_index))
        if state != states.SUCCESS and not fired:
            exc = value if isinstance(value, BaseException) else RuntimeError(repr(value))
            chord.ended_by_worker(app, msg, state, exc)
            return
        if state != states.SUCCESS:
            exc = value if isinstance(value, BaseException) else RuntimeError(repr(value))
            chord.run_errbacks(app, msg.errbacks, task_id=msg.id, exc=exc, traceback=None,
                               request=Context.from_message(msg), parent_id=msg.id,
                               root_id=msg.root_id or msg.id, run_id=run_id)
            if msg.chain:
                chord.fail_chain(app, msg.chain, exc)
            return
        if msg.chord is not None and not fired:
            chord.message_done(app, msg, state, value, run_id=run_id)
        task = app.get_task(msg.task)
        context = Context.from_message(msg)
        for sig, rest in _followers(task, msg, context, False, run_id)[sent:]:
            _send(task, sig, value, msg, False, rest, run_id)
    except Exception:
        logger.exception("task %s[%s]: sending what follows its stored %s failed", msg.task,
                         msg.id, state)


def _run_handlers(task: Task, context: Context, outcome: Outcome,
                  einfo: ExceptionInfo | None) -> None:
    """The task's ``on_success``/``on_failure``/``on_retry`` and ``after_return``, as Celery's
    worker calls them: after the outcome is stored, with the request still current. A
    handler that raises is logged; the outcome stays what it was."""
    task_id, args, kwargs = context.id, context.args, context.kwargs
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
    if outcome.state == states.SUCCESS:
        calls.append((task.on_success, (outcome.value, task_id, args, kwargs)))
    elif outcome.state == states.FAILURE:
        calls.append((task.on_failure, (outcome.value, task_id, args, kwargs, einfo)))
    elif outcome.state == states.RETRY:
        calls.append((task.on_retry, (outcome.value, task_id, args, kwargs, einfo)))
    if outcome.state in (states.SUCCESS, states.FAILURE):
        calls.append((task.after_return, (outcome.state, outcome.value, task_id, args,
                                          kwargs, einfo)))
    task.push_request(context)
    try:
        for handler, handler_args in calls:
            try:
                handler(*handler_args)
            except Exception:
                logger.exception("task %s[%s]: its %s raised", task.name, task_id,
                                 getattr(handler, "__name__", handler))
    finally:
        task.pop_request()


def _is_reject(exc: BaseException) -> bool:
    return type(exc).__name__ == "Reject"


def _store_started(task: Task, context: Context) -> None:
    assert context.id is not None
    try:
        task.app.backend.mark_as_started(context.id, pid=os.getpid(), hostname=context.hostname)
    except TaskqError as exc:  # only a marker: the task runs all the same
        logger.warning("task %s[%s]: storing its STARTED state failed: %s", task.name,
                       context.id, exc)


def _store(task: Task, context: Context, outcome: Outcome, ignore_result: bool) -> Outcome:
    """Store ``outcome``; returns it, or, for a return value the result serializer cannot
    encode, the FAILURE (kombu's ``EncodeError``) stored instead, as Celery's worker stores
    it: the value is lost either way, and a client's ``get()`` must end."""
    backend = task.app.backend
    task_id = context.id
    assert task_id is not None
    store_errors = not ignore_result or task.store_errors_even_if_ignored
    try:
        if outcome.state == states.SUCCESS and not ignore_result:
            try:
                backend.mark_as_done(task_id, outcome.value, request=context)
            except EncodeError as exc:
                logger.error("task %s[%s]: its return value cannot be stored (%s): stored as "
                             "FAILURE", task.name, task_id, exc)
                outcome = Outcome(states.FAILURE, exc, _format_tb(exc), outcome.runtime)
                backend.mark_as_failure(task_id, exc, outcome.traceback, request=context)
        elif outcome.state == states.FAILURE and store_errors:
            backend.mark_as_failure(task_id, outcome.value, outcome.traceback, request=context)
        elif outcome.state == states.RETRY and store_errors:
            backend.mark_as_retry(task_id, outcome.value, outcome.traceback, request=context)
        elif outcome.state == states.REJECTED and not outcome.requeue and store_errors:
            # The exception the task raised: a Celery task's own Reject (taskq's is raised
            # from it), so that a Celery client's get() raises celery's Reject.
            reject: BaseException = outcome.value
            cause = reject.__cause__
            backend.mark_as_rejected(task_id, cause if cause and _is_reject(cause) else reject,
                                     request=context)
    except Exception:
        logger.exception("task %s[%s]: storing its %s state failed", task.name, task_id,
                         outcome.state)
    return outcome


def _writes(task: Task, outcome: Outcome, ignore_result: bool) -> bool:
    """Whether ``_store`` writes anything to the backend for ``outcome``."""
    if isinstance(task.app.backend, DisabledBackend):
        return False
    store_errors = not ignore_result or task.store_errors_even_if_ignored
    state = outcome.state
    if state == states.SUCCESS:
        return not ignore_result
    if state == states.REJECTED:
        return not outcome.requeue and store_errors
    return state in (states.FAILURE, states.RETRY) and store_errors


_HANDLERS = ("on_success", "on_failure", "on_retry", "after_return")


def _anything_follows(task: Task, msg: TaskMessage, outcome: Outcome,
                      followers: list[tuple[Signature, tuple[Any, ...]]]) -> bool:
    """Whether anything runs between the store and the job's end: a chord part's count,
    a message sent (callbacks, the chain's next step, errbacks, failing the chain's rest) or
    one of the task's own handlers."""
    if msg.chord is not None or followers:
        return True
    if outcome.state == states.FAILURE and (msg.errbacks or msg.chain):
        return True
    return _own_handlers(type(task))


_OWN_HANDLERS: dict[type, bool] = {}


def _own_handlers(cls: type) -> bool:
    """Whether the task class overrides one of ``Task``'s handlers (looked up once)."""
    own = _OWN_HANDLERS.get(cls)
    if own is None:
        own = _OWN_HANDLERS[cls] = any(getattr(cls, name) is not getattr(Task, name)
                                       for name in _HANDLERS)
    return own


def _send(task: Task, sig: Signature, result: Any, msg: TaskMessage, eager: bool,
          chain: tuple[Any, ...] = (), run_id: str | None = None) -> None:
    """Send ``sig`` (a task, chain, group or chord) with ``result`` as its partial argument."""
    app = task.app
    try:
        if eager and sig.name in app.tasks:
            args, kwargs = sig.with_parent_result(result)
            app.tasks[sig.name].apply(args, kwargs)
        else:
            # Always this task's ids, as Celery's worker sends them: a Celery client's
            # frozen chain can carry root_id=None in a group step's options.
            options: dict[str, Any] = {"parent_id": msg.id, "root_id": msg.root_id or msg.id}
            if chain:
                options["chain"] = list(chain)
            sig.apply_async((result,), **once_options(sig, options, run_id))
    except Exception:
        logger.exception("task %s[%s]: sending callback %s failed", task.name, msg.id, sig.name)


def _followers(task: Task, msg: TaskMessage, context: Context, eager: bool,
               run_id: str | None = None) -> list[tuple[Signature, tuple[Any, ...]]]:
    """What a successful task sends next: its callbacks, then the next step of its chain
    (with the rest of the chain). Their ids are fixed here, before the result is stored, so
    that the stored ``children`` name them, as Celery's do (Celery sends them before it
    stores; taskq still stores first, so a task that dies in between sends nothing)."""
    raws: list[tuple[Any, tuple[Any, ...]]] = [(raw, ()) for raw in msg.callbacks]
    if msg.chain:
        # Celery keeps the remaining chain reversed: the next step is the last item.
        *rest, nxt = msg.chain
        raws.append((nxt, tuple(rest)))
    followers: list[tuple[Signature, tuple[Any, ...]]] = []
    for raw, after in raws:
        try:
            followers.append((signature(raw, task.app), after))
        except Exception:  # the task's own outcome is still stored
            logger.exception("task %s[%s]: callback %r is not a signature", task.name,
                             msg.id, raw.get("task"))
    if not eager:
        for position, (sig, _) in enumerate(followers):
            if sig.subtask_type == "chunks":  # sent as a group it builds anew: no fixed id
                continue
            try:
                follow_up_id(sig, run_id, "follower", position)
                context.children.append(_first_result(sig.freeze()))
            except Exception:
                logger.exception("task %s[%s]: fixing the id of %s failed", task.name,
                                 msg.id, sig.name)
    return followers


def _first_result(result: Any) -> Any:
    """What Celery records as the child for a sent signature: a task's or a group's own
    result, a chain's first step, a chord's header."""
    while getattr(result, "parent", None) is not None:
        result = result.parent
    return result


def _send_errbacks(task: Task, msg: TaskMessage, eager: bool, outcome: Outcome,
                   context: Context, run_id: str | None) -> None:
    exc = outcome.value if isinstance(outcome.value, BaseException) else RuntimeError(
        repr(outcome.value))
    chord.run_errbacks(task.app, msg.errbacks, task_id=msg.id, exc=exc,
                       traceback=outcome.traceback, request=context, parent_id=msg.id,
                       root_id=msg.root_id or msg.id, eager=eager, run_id=run_id)
    if msg.chain and not eager:
        # The steps after a failed one never run: fail them, so get() on the chain raises.
        chord.fail_chain(task.app, msg.chain, exc)


def execute_eager(task: Task, msg: TaskMessage, *, throw: bool = False) -> EagerResult:
    """``Task.apply``: run now, following retries at once, and wrap the end in an EagerResult."""
    while True:
        outcome = execute(task, msg, eager=True, store=False)
        if outcome.state == states.RETRY and outcome.retry is not None:
            msg = outcome.retry.next_message  # type: ignore[attr-defined]
            continue
        break
    if throw and outcome.state == states.FAILURE:
        raise outcome.value
    state = outcome.state
    return EagerResult(msg.id, outcome.value, state, outcome.traceback, task_name=task.name)
