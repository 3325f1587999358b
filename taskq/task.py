"""Tasks: a function registered with an app, plus how to call it.

``@app.task`` turns a function into a ``Task`` instance (no classes are built at runtime).
``task(...)`` runs it here and now; ``delay``/``apply_async`` publish a message for a worker;
``apply`` runs it eagerly with the worker's semantics (request context, retries, the
``Retry``/``Ignore``/``Reject`` semipredicates) and returns an ``EagerResult``.
"""

from __future__ import annotations

import datetime as dt
import inspect
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskq.canvas import Signature, as_signatures
from taskq.config import _suggest
from taskq.errors import ConfigurationError, MaxRetriesExceededError, Retry
from taskq.protocol import TaskMessage
from taskq.ratelimit import parse_rate

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.result import AsyncResult, EagerResult


@dataclass
class Context:
    """``self.request`` inside a bound task: what the worker knows about this call."""

    id: str | None = None
    task: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    headers: Mapping[str, Any] = field(default_factory=dict)
    delivery_info: Mapping[str, Any] = field(default_factory=dict)
    hostname: str | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    chain: list[dict[str, Any]] | None = None
    """The steps still to run after this one, reversed (the next is last), as Celery has it."""
    chord: dict[str, Any] | None = None
    """The body of the chord whose header this task is a part of."""
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    replaced_task_nesting: int = 0
    eta: dt.datetime | None = None
    expires: dt.datetime | None = None
    timelimit: tuple[float | None, float | None] = (None, None)
    correlation_id: str | None = None
    reply_to: str | None = None
    origin: str | None = None
    ignore_result: bool = False
    is_eager: bool = False
    called_directly: bool = True
    message: TaskMessage | None = None
    children: list[Any] = field(default_factory=list)
    """Results of the tasks sent while this one runs; stored in its ``children`` meta."""

    def get(self, key: str, default: Any = None) -> Any:
        """``self.request.get("chain")``, as Celery's request has it."""
        return getattr(self, key, default)

    @classmethod
    def from_message(
        cls,
        msg: TaskMessage,
        *,
        delivery_info: Mapping[str, Any] | None = None,
        hostname: str | None = None,
        is_eager: bool = False,
    ) -> Context:
        return cls(
            id=msg.id, task=msg.task, args=tuple(msg.args), kwargs=dict(msg.kwargs),
            retries=msg.retries, headers=dict(msg.headers), delivery_info=dict(delivery_info or {}),
            hostname=hostname, root_id=msg.root_id or msg.id, parent_id=msg.parent_id,
            group=msg.group, group_index=msg.group_index,
            chain=[dict(s) for s in msg.chain] or None,
            chord=dict(msg.chord) if msg.chord is not None else None,
            callbacks=[dict(s) for s in msg.callbacks] or None,
            errbacks=[dict(s) for s in msg.errbacks] or None,
            eta=msg.eta, expires=msg.expires,
            replaced_task_nesting=msg.replaced_task_nesting,
            timelimit=(msg.time_limit, msg.soft_time_limit), correlation_id=msg.id,
            reply_to=msg.reply_to, origin=msg.origin, ignore_result=msg.ignore_result,
            is_eager=is_eager, called_directly=False, message=msg,
        )


TASK_OPTIONS = frozenset({
    "name", "bind", "queue", "routing_key", "priority", "acks_late", "reject_on_worker_lost",
    "time_limit", "soft_time_limit", "max_retries", "default_retry_delay", "autoretry_for",
    "retry_kwargs", "retry_backoff", "retry_backoff_max", "retry_jitter", "ignore_result",
    "serializer", "track_started", "rate_limit", "expires", "typing",
    "store_errors_even_if_ignored", "base", "trail", "throws", "send_events",
    "acks_on_failure_or_timeout",
})

CALL_OPTIONS = frozenset({
    "countdown", "eta", "expires", "queue", "routing_key", "exchange", "priority", "headers",
    "task_id", "time_limit", "soft_time_limit", "link", "link_error", "serializer", "retry",
    "retry_policy", "ignore_result", "retries", "parent_id", "root_id", "group_id",
    "group_index", "shadow", "reply_to", "chain", "chord", "replaced_task_nesting",
    "add_to_parent",
})


def check_options(given: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    for name in given:
        if name not in allowed:
            raise TypeError(f"unknown {what} {name!r}" + _suggest(name, allowed))


class Task:
    """A registered task. Attributes left ``None`` fall back to the app's settings."""

    def __init__(
        self,
        app: TaskQ,
        fn: Callable[..., Any],
        *,
        name: str,
        bind: bool = False,
        queue: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        acks_late: bool | None = None,
        reject_on_worker_lost: bool | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        autoretry_for: tuple[type[BaseException], ...] = (),
        retry_kwargs: Mapping[str, Any] | None = None,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        ignore_result: bool | None = None,
        serializer: str | None = None,
        track_started: bool | None = None,
        rate_limit: str | float | None = None,
        expires: float | dt.datetime | None = None,
        typing: bool = True,
        store_errors_even_if_ignored: bool | None = None,
        trail: bool = True,
        throws: tuple[type[BaseException], ...] = (),
        send_events: bool = True,
        acks_on_failure_or_timeout: bool = True,
    ) -> None:
        parse_rate(rate_limit)  # a bad rate fails here, not in the worker's loop
        self.app = app
        self.fn = fn
        self.name = name
        self.bind = bind
        self.queue = queue
        self.routing_key = routing_key
        self.priority = priority
        self._acks_late = acks_late
        self._reject_on_worker_lost = reject_on_worker_lost
        self._time_limit = time_limit
        self._soft_time_limit = soft_time_limit
        self.max_retries = max_retries
        self.default_retry_delay = default_retry_delay
        self.autoretry_for = tuple(autoretry_for)
        self.retry_kwargs = dict(retry_kwargs or {})
        self.retry_backoff = retry_backoff
        self.retry_backoff_max = retry_backoff_max
        self.retry_jitter = retry_jitter
        self._ignore_result = ignore_result
        self._serializer = serializer
        self._track_started = track_started
        self._rate_limit = rate_limit
        self.expires = expires  # as Celery: each call's default ``expires``
        self.typing = typing  # as Celery: False sends calls its signature would refuse
        self._store_errors_even_if_ignored = store_errors_even_if_ignored
        self.trail = trail  # as Celery: False keeps no children in the stored result
        # As Celery: a failure with one of these is expected (logged at INFO, no traceback).
        self.throws = tuple(throws)
        self.send_events = send_events  # False: the worker sends no task events for it
        # As Celery: False rejects (dead-letters) an acks_late task's message when it fails,
        # times out or its process dies, instead of acking it.
        self.acks_on_failure_or_timeout = acks_on_failure_or_timeout
        self._local = threading.local()
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self._signature = inspect.signature(fn)

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    # -- settings with app fallbacks ----------------------------------------------------------
    @property
    def acks_late(self) -> bool:
        conf = self.app.conf.task_acks_late
        return bool(conf if self._acks_late is None else self._acks_late)

    @property
    def reject_on_worker_lost(self) -> bool:
        conf = self.app.conf.task_reject_on_worker_lost
        own = self._reject_on_worker_lost
        return bool(conf if own is None else own)

    @property
    def time_limit(self) -> float | None:
        own = self._time_limit
        return self.app.conf.task_time_limit if own is None else own

    @property
    def soft_time_limit(self) -> float | None:
        own = self._soft_time_limit
        return self.app.conf.task_soft_time_limit if own is None else own

    @property
    def ignore_result(self) -> bool:
        own = self._ignore_result
        return bool(self.app.conf.task_ignore_result if own is None else own)

    @property
    def serializer(self) -> str:
        return self._serializer or self.app.conf.task_serializer

    @property
    def track_started(self) -> bool:
        own = self._track_started
        return bool(self.app.conf.task_track_started if own is None else own)

    @property
    def store_errors_even_if_ignored(self) -> bool:
        own = self._store_errors_even_if_ignored
        return bool(self.app.conf.task_store_errors_even_if_ignored if own is None else own)

    @property
    def rate_limit(self) -> str | float | None:
        """How often a worker starts this task (``"10/s"``, ``"100/m"``; None: no limit)."""
        own = self._rate_limit
        return self.app.conf.task_default_rate_limit if own is None else own

    @rate_limit.setter
    def rate_limit(self, value: str | float | None) -> None:
        parse_rate(value)
        self._rate_limit = value

    # -- the request context ------------------------------------------------------------------
    @property
    def request(self) -> Context:
        stack: list[Context] = getattr(self._local, "stack", [])
        return stack[-1] if stack else Context()

    def push_request(self, context: Context) -> None:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        self._local.stack.append(context)

    def pop_request(self) -> None:
        self._local.stack.pop()

    # -- calling ------------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task in this process, now, like a plain function."""
        return self.run(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def check_arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
        """Raise ``TypeError`` if the function cannot be called with these arguments."""
        if not self.typing:
            return
        params = (self, *args) if self.bind else args
        self._signature.bind(*params, **kwargs)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult | EagerResult:
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult | EagerResult:
        """Publish a message asking a worker to run this task; see ``TaskQ.send_task``.
        With ``task_always_eager`` it runs here instead (``apply()``): an ``EagerResult``."""
        check_options(options, CALL_OPTIONS, "apply_async option")
        args, kwargs = tuple(args or ()), dict(kwargs or {})
        self.check_arguments(args, kwargs)
        conf = self.app.conf
        if conf.task_always_eager:  # as Celery: run here and now, nothing is sent
            return self.apply(
                args, kwargs, task_id=options.get("task_id"),
                headers=options.get("headers"), link=options.get("link"),
                link_error=options.get("link_error"), throw=conf.task_eager_propagates)
        defaults: dict[str, Any] = {
            "queue": self.queue, "routing_key": self.routing_key, "priority": self.priority,
            "time_limit": self._time_limit, "soft_time_limit": self._soft_time_limit,
            "serializer": self._serializer, "ignore_result": self._ignore_result,
            "expires": self.expires,
        }
        for key, value in defaults.items():
            if options.get(key) is None and value is not None:
                options[key] = value
        return self.app.send_task(self.name, args, kwargs, **options)

    def apply(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        task_id: str | None = None,
        retries: int = 0,
        headers: Mapping[str, Any] | None = None,
        link: Any = None,
        link_error: Any = None,
        throw: bool = False,
    ) -> EagerResult:
        """Run the task here, with the worker's semantics, and return an ``EagerResult``.

        Retries run at once, one after another, without waiting for their countdown.
        ``throw=True`` raises a failure instead of returning it in the result.
        """
        from taskq.trace import execute_eager

        msg = TaskMessage(
            task=self.name, id=task_id or str(uuid.uuid4()), args=tuple(args or ()),
            kwargs=dict(kwargs or {}), retries=retries, headers=dict(headers or {}),
            callbacks=as_signatures(link), errbacks=as_signatures(link_error),
        )
        return execute_eager(self, msg, throw=throw)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        return Signature(self.name, args, kwargs, immutable=True, app=self.app)

    def signature(self, args: tuple[Any, ...] | list[Any] = (),
                  kwargs: Mapping[str, Any] | None = None, **options: Any) -> Signature:
        return Signature(self.name, args, kwargs, options, app=self.app)

    def map(self, it: Any) -> Signature:
        """One task that calls this one for each item (``celery.map``)."""
        from taskq.canvas import xmap

        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Any) -> Signature:
        """One task that calls this one with each item as its arguments (``celery.starmap``)."""
        from taskq.canvas import xstarmap

        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Any, n: int) -> Signature:
        """The items in chunks of ``n``: a group of starmap tasks."""
        from taskq.canvas import chunks

        return chunks(self.s(), it, n, app=self.app)

    def AsyncResult(self, task_id: str) -> AsyncResult:
        return self.app.AsyncResult(task_id, task_name=self.name)

    # -- annotations --------------------------------------------------------------------------
    def annotate(self) -> None:
        """Set the attributes ``task_annotations`` gives this task, as Celery does: for each
        annotation in order, its ``"*"`` entry, then the one for this task's name (an object
        instead returns them from ``annotate(task)``). Options read from the settings
        (``acks_late``, ``time_limit``, ...) are set as the task's own value."""
        for annotation in self.app.conf.task_annotations:
            if isinstance(annotation, Mapping):
                found = [annotation.get("*"), annotation.get(self.name)]
            else:
                found = [annotation.annotate(self)]
            for attrs in found:
                for key, value in (attrs or {}).items():
                    self._set_annotated(key, value)

    def _set_annotated(self, key: str, value: Any) -> None:
        if key.startswith("_") or not (key in TASK_OPTIONS or hasattr(self, key)):
            raise ConfigurationError(
                f"task_annotations for {self.name}: {key!r} is no task attribute"
                + _suggest(key, TASK_OPTIONS))
        prop = getattr(type(self), key, None)
        if isinstance(prop, property) and prop.fset is None:
            setattr(self, f"_{key}", value)  # the task's own value beats the setting
        else:
            setattr(self, key, value)

    # -- handlers: override in a base class (``@app.task(base=...)``), as on Celery ----------
    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
                     ) -> None:
        """Called where the task runs, just before it (an error here fails the task)."""

    def on_success(self, retval: Any, task_id: str, args: tuple[Any, ...],
                   kwargs: Mapping[str, Any]) -> None:
        """Called after a success is stored."""

    def on_failure(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                   kwargs: Mapping[str, Any], einfo: Any) -> None:
        """Called after a failure is stored (``einfo``: billiard's ``ExceptionInfo``)."""

    def on_retry(self, exc: BaseException, task_id: str, args: tuple[Any, ...],
                 kwargs: Mapping[str, Any], einfo: Any) -> None:
        """Called after a retry is stored and the next attempt published."""

    def after_return(self, status: str, retval: Any, task_id: str, args: tuple[Any, ...],
                     kwargs: Mapping[str, Any], einfo: Any) -> None:
        """Called after ``on_success``/``on_failure`` (not after a retry)."""

    # -- reporting ----------------------------------------------------------------------------
    def update_state(self, task_id: str | None = None, state: str | None = None,
                     meta: Any = None) -> None:
        """Store ``state`` (say ``"PROGRESS"``) with ``meta`` for this task now, as Celery's
        ``update_state``: clients see it as ``result.state`` and ``result.info`` until the
        task's outcome replaces it. ``task_id`` defaults to the running task's."""
        task_id = task_id or self.request.id
        if task_id is None:
            raise RuntimeError(f"{self.name}.update_state() outside a running task needs a "
                               "task_id")
        if not state:
            raise TypeError(f"{self.name}.update_state() needs a state, e.g. "
                            "update_state(state='PROGRESS', meta={'done': 1})")
        self.app.backend.store_result(task_id, meta, state, request=self.request)

    def send_event(self, type_: str, **fields: Any) -> dict[str, Any] | None:
        """Send a custom event (say ``"task-progress"``) for the running task, as Celery's
        ``send_event``: with its ``uuid``, this worker's hostname and the app's clock, whether
        or not the worker sends task events (``-E``). Monitors (``EventReceiver``,
        ``celery events``, Flower) see it. Returns the event, or None if it could not be
        sent (events never fail a task). Each call uses a connection of its own."""
        from taskq.events.dispatcher import EventDispatcher
        from taskq.protocol import origin_name

        request = self.request
        with self.app.connection() as conn:
            dispatcher = EventDispatcher(conn, request.hostname or origin_name(),
                                         self.app.clock)
            return dispatcher.send(type_, uuid=request.id, **fields)

    # -- replacing ----------------------------------------------------------------------------
    def replace(self, sig: Mapping[str, Any]) -> Any:
        """End this task by handing its place to ``sig`` (a task, chain, group or chord), as
        Celery's ``Task.replace`` does: ``sig`` takes this task's id (so the result the
        caller holds ends with ``sig``'s), its callbacks and errbacks, the rest of its chain
        and its place in a group or chord. A group gets a ``celery.accumulate`` body, so
        its results arrive as one list. Raises ``Ignore`` (nothing is stored for this run);
        run eagerly (``apply()``), it returns ``sig``'s value instead.
        """
        from taskq.canvas import chain, group, signature
        from taskq.errors import ConfigurationError, Ignore

        request = self.request
        if request.called_directly or request.id is None:
            raise RuntimeError(f"{self.name}.replace() called outside a worker or apply(); "
                               "there is no running task to replace: call the signature")
        sig = signature(sig, self.app).clone()
        if "chord" in sig.options:
            raise ConfigurationError("a signature replacing a task must not be part of a "
                                     "chord: replace with the chord itself")
        if isinstance(sig, chain) and not sig.tasks:
            raise ConfigurationError("cannot replace a task with an empty chain")
        accumulate = Signature("celery.accumulate", (), {"index": 0}, app=self.app)
        if isinstance(sig, group):
            sig = sig | accumulate
        if isinstance(sig, chain) and isinstance(sig.tasks[-1], group):
            sig.tasks[-1] = sig.tasks[-1] | accumulate.clone()
        for callback in request.callbacks or ():
            sig.link(callback)
        for errback in request.errbacks or ():
            sig.link_error(errback)
        if isinstance(sig, chain) and "link" in sig.options:
            # Linked to the last step, not to the chain, so they are not linked twice below.
            sig.tasks[-1].options.setdefault("link", []).extend(sig.options.pop("link"))
        sig.freeze(request.id)
        nesting = request.replaced_task_nesting + 1
        place: dict[str, Any] = {"chord": request.chord, "group_id": request.group,
                 "group_index": request.group_index, "root_id": request.root_id}
        sig.set(replaced_task_nesting=nesting,
                **{k: v for k, v in place.items() if v is not None})
        if isinstance(sig, chain):
            for step in sig.tasks:
                step.set(replaced_task_nesting=nesting)
        rest = [signature(raw, self.app).clone().set(replaced_task_nesting=nesting)
                for raw in reversed(request.chain or ())]
        if rest:  # this task's chain goes on after sig, each step keeping its own id
            steps = [sig]
            if isinstance(sig, chain):  # its errbacks stay with its own steps
                steps = list(sig.tasks)
                for errback in sig.options.get("link_error") or ():
                    for step in steps:
                        step.link_error(errback)
            sig = chain(*steps, *rest, app=self.app)
        if request.is_eager:
            return sig.apply().get()
        sig.delay()
        raise Ignore("Replaced by new task")

    # -- retrying -----------------------------------------------------------------------------
    def retry(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: dt.datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Publish this task again for a later attempt and raise ``Retry``.

        Past ``max_retries`` it raises ``exc`` if given, else ``MaxRetriesExceededError``.
        """
        request = self.request
        if request.called_directly:
            raise exc or RuntimeError(
                f"{self.name}.retry() called outside a worker or apply(); nothing to retry"
            )
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"can't retry {self.name}[{request.id}] args:{request.args} "
                f"kwargs:{dict(request.kwargs)}: max_retries={limit} reached"
            )
        if eta is None:
            countdown = self.default_retry_delay if countdown is None else countdown
            eta = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=countdown)
        assert request.message is not None
        next_message = request.message.evolve(
            args=tuple(request.args if args is None else args),
            kwargs=dict(request.kwargs if kwargs is None else kwargs),
            retries=request.retries + 1,
            eta=eta,
        )
        retry = Retry(exc=exc, when=eta)
        retry.next_message = next_message  # type: ignore[attr-defined]
        if not request.is_eager:
            routing = dict(request.delivery_info)
            self.app.publish_message(
                next_message,
                queue=options.get("queue") or self.queue,
                exchange=options.get("exchange") or routing.get("exchange"),
                routing_key=options.get("routing_key") or routing.get("routing_key"),
                priority=options.get("priority", routing.get("priority")),  # as Celery
                serializer=self._serializer,
            )
        if throw:
            raise retry
        return retry

    def backoff_countdown(self, retries: int) -> float:
        """Countdown before autoretry number ``retries + 1``, as Celery computes it."""
        if not self.retry_backoff:
            return float(self.default_retry_delay)
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = min(self.retry_backoff_max, factor * (2**retries))
        if self.retry_jitter:
            countdown = random.uniform(0, countdown)
        return countdown
