"""Celery task code on taskq's worker: a ``TaskQ`` app made from a Celery app.

``taskq worker -A proj`` where ``proj`` holds a Celery app (``celery.Celery``) lands here
(see ``taskq.loading``); only then is Celery imported, so taskq runs without it. The result
is an ordinary ``TaskQ`` app: its settings are the Celery app's (the names taskq shares;
the others are named in one warning), and its registry holds one ``CeleryTask`` per Celery
task (``@app.task``, ``@shared_task``, custom base classes), so taskq's own consumer, pool,
acks, leases, time limits and lost-process detection run them.

Inside the task, the Celery side behaves as on Celery's worker: ``self.request`` is a Celery
request built from the message, ``current_task`` is set, ``self.retry`` publishes the next
attempt through the Celery app (as Celery's worker does) and raises Celery's ``Retry``, which
becomes taskq's RETRY outcome; ``Reject``/``Ignore`` become taskq's; ``on_success``,
``on_failure``, ``on_retry``, ``after_return`` and ``before_start`` run; the task signals
(``task_prerun``, ``task_postrun``, ``task_success``, ``task_failure``, ``task_retry``) and
``worker_process_init``/``worker_process_shutdown``/``worker_ready``/``worker_shutdown``
fire. Results are stored by taskq's backend for the Celery app's ``result_backend`` URL, in
Celery's format and key layout; ``update_state`` uses Celery's own backend (same keys).

A task whose pool process died ends as on Celery's worker, in the worker's main process
(through taskq's ``task_lost`` hook): unless it was requeued, ``task_failure`` is sent with
the request on the task's stack (Celery's ``Request.on_failure``), and after a hard time
limit the task's ``on_failure`` and ``after_return`` run first (``Request.on_timeout``).

One difference from Celery's worker: the handlers and the task signals run just before the
outcome is stored rather than just after it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded
from billiard.exceptions import WorkerLostError as CeleryWorkerLostError
from celery import Celery, signals
from celery._state import _task_stack
from celery.app.defaults import DEFAULTS
from celery.app.task import Context as CeleryContext
from celery.app.trace import setup_worker_optimizations, task_has_custom
from celery.exceptions import Ignore as CeleryIgnore
from celery.exceptions import Reject as CeleryReject
from celery.exceptions import Retry as CeleryRetry

from taskq import states
from taskq.app import TaskQ
from taskq.config import SETTINGS, validate
from taskq.errors import ConfigurationError, Ignore, Reject, Retry
from taskq.protocol import TaskMessage, to_wire
from taskq.task import Task
from taskq.worker.steps import Step

if TYPE_CHECKING:
    from taskq.worker.worker import Worker

__all__ = ["CeleryTask", "from_celery", "settings_from_celery"]

logger = logging.getLogger("taskq.celery")

CELERY_DEFAULT_BROKER = "amqp://guest:guest@localhost:5672//"

# Celery settings taskq honours without a setting of the same name.
_HANDLED = frozenset({
    "broker_url", "result_backend", "imports", "include", "deprecated_settings",
    "task_annotations",  # Celery sets them on its task classes, which CeleryTask reads
})
# Celery settings whose default-or-not taskq cannot change, left out of the warning.
_HARMLESS = frozenset({
    "enable_utc", "worker_hijack_root_logger", "worker_redirect_stdouts",
    "worker_redirect_stdouts_level", "worker_log_color", "worker_log_format",
    "worker_task_log_format",
})


def _convert(name: str, value: Any) -> Any:
    """A Celery value in the form taskq's setting of the same name takes."""
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if name == "worker_concurrency" and value == 0:
        return None  # Celery: 0 means the number of CPUs, as taskq's None
    if isinstance(value, set | frozenset | tuple) and name.endswith("content"):
        return list(value)
    return value


def settings_from_celery(conf: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """taskq settings from a Celery app's ``conf``, and the names of the Celery settings
    that were changed from Celery's defaults but that taskq does not take."""
    settings: dict[str, Any] = {
        "broker_url": conf.get("broker_url") or CELERY_DEFAULT_BROKER,
        "result_backend": conf.get("result_backend") or None,
    }
    ignored: list[str] = []
    for name, default in DEFAULTS.items():
        if name in _HANDLED or name not in conf:
            continue
        value = conf[name]
        if value == default:
            continue
        if name not in SETTINGS:
            if name not in _HARMLESS:
                ignored.append(name)
            continue
        try:
            settings[name] = validate(name, _convert(name, value))
        except ConfigurationError as exc:
            ignored.append(f"{name} ({exc})")
    return settings, ignored


def from_celery(capp: Celery) -> TaskQ:
    """The ``TaskQ`` app that runs ``capp``'s tasks (made once per Celery app)."""
    made = capp.__dict__.get("_taskq_app")
    if isinstance(made, TaskQ):
        return made
    # As Celery's worker: import `imports`/`include` (and autodiscovered modules), make this
    # the current and default app (shared tasks resolve through it), finalize, and protect
    # the request stack of tasks whose custom __call__ calls super().
    capp.loader.import_default_modules()
    setup_worker_optimizations(capp)
    settings, ignored = settings_from_celery(capp.conf)
    app = TaskQ(capp.main or "celery", **settings)
    for name, ctask in capp.tasks.items():
        app.tasks.setdefault(name, CeleryTask(app, ctask))
    app.hooks.worker_process_init.append(_process_init)
    app.hooks.worker_process_shutdown.append(_process_shutdown)
    # inspect conf/report answer with the Celery app's settings and bug report, as Celery's.
    app.hooks.inspect_conf.append(lambda with_defaults: _celery_conf(capp, with_defaults))
    app.hooks.inspect_report.append(capp.bugreport)
    step = CeleryStep(capp, sorted(ignored))
    app.hooks.task_lost.append(step.task_lost)
    app.steps.append(step)
    capp.__dict__["_taskq_app"] = app
    return app


def _celery_conf(capp: Celery, with_defaults: bool) -> Mapping[str, Any]:
    """What Celery's worker answers ``inspect conf`` with (its own command, run here)."""
    from types import SimpleNamespace

    from celery.worker import control

    return dict(control.conf(SimpleNamespace(app=capp), with_defaults=with_defaults))


def _process_init() -> None:
    signals.worker_process_init.send(sender=None)


def _process_shutdown() -> None:
    signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


class CeleryStep(Step):
    """Names the Celery settings taskq does not use (once logging is set up), sends Celery's
    ``worker_ready`` once the consumer is up and ``worker_shutdown`` at stop, and ends a
    lost task as Celery's main process does (``task_lost``)."""

    name = "celery"
    requires = ("consumer", "control")

    def __init__(self, capp: Celery, ignored: list[str]) -> None:
        self.capp = capp
        self.main = capp.main or "celery"
        self.ignored = ignored
        self.hostname: str | None = None

    def start(self, worker: Worker) -> None:
        self.hostname = worker.hostname
        if self.ignored:
            logger.warning("Celery app %s: taskq does not use these settings: %s", self.main,
                           ", ".join(self.ignored))
        signals.worker_ready.send(sender=worker)

    def stop(self, worker: Worker) -> None:
        signals.worker_shutdown.send(sender=worker)

    def task_lost(self, task_id: str, name: str, exc: BaseException, requeued: bool,
                  msg: TaskMessage) -> None:
        """The ``task_lost`` hook: what Celery's worker runs in its main process for a task
        whose pool process died and that is not requeued (the store and errbacks are
        taskq's own). A hard time limit (``Request.on_timeout``) runs the task's
        ``on_failure`` and ``after_return``; both send ``task_failure``."""
        ctask = self.capp.tasks.get(name)
        if requeued or ctask is None:
            return
        args, kwargs = list(msg.args), dict(msg.kwargs)
        timed_out = isinstance(exc, TimeLimitExceeded)
        error = exc if timed_out else CeleryWorkerLostError(str(exc))  # Celery's class
        try:
            raise error
        except BaseException:
            einfo = ExceptionInfo()
        request = _celery_context(msg, args, kwargs, hostname=self.hostname,
                                  delivery_info={})
        ctask.request_stack.push(request)
        try:
            if timed_out:
                _guarded(ctask.on_failure, error, task_id, args, kwargs, einfo)
                if task_has_custom(ctask, "after_return"):
                    _guarded(ctask.after_return, states.FAILURE, error, task_id, args,
                             kwargs, None)
            signals.task_failure.send(
                sender=ctask, task_id=task_id, exception=error, args=args, kwargs=kwargs,
                traceback=error.__traceback__ if timed_out else einfo.traceback, einfo=einfo)
        finally:
            ctask.request_stack.pop()


def _celery_context(msg: TaskMessage | None, args: Any, kwargs: Any, **fields: Any) -> Any:
    """Celery's ``self.request`` for ``msg``, built as Celery's worker builds it (headers,
    the body's embedded canvas, properties), with ``fields`` on top."""
    ctx: dict[str, Any] = {}
    if msg is not None:
        body, headers, properties = to_wire(msg)
        ctx.update(headers)
        ctx.update({k: v for k, v in body[2].items() if v is not None})
        ctx["properties"] = {**msg.properties, **properties}
        ctx.update(id=msg.id, task=msg.task, reply_to=msg.reply_to, correlation_id=msg.id,
                   retries=msg.retries, is_eager=False)
    ctx.update(fields)
    return CeleryContext(ctx, args=args, kwargs=kwargs, called_directly=False)


class CeleryTask(Task):
    """A Celery task in a taskq registry: taskq's worker runs it with Celery's semantics."""

    def __init__(self, app: TaskQ, ctask: Any) -> None:
        self.celery_task = ctask
        super().__init__(
            app, ctask.run, name=ctask.name,
            queue=getattr(ctask, "queue", None), priority=ctask.priority,
            acks_late=ctask.acks_late, reject_on_worker_lost=ctask.reject_on_worker_lost,
            time_limit=ctask.time_limit, soft_time_limit=ctask.soft_time_limit,
            max_retries=ctask.max_retries, default_retry_delay=ctask.default_retry_delay,
            ignore_result=ctask.ignore_result, serializer=ctask.serializer,
            track_started=ctask.track_started,
            rate_limit=ctask.rate_limit,
            store_errors_even_if_ignored=ctask.store_errors_even_if_ignored,
            throws=tuple(getattr(ctask, "throws", ()) or ()),
            send_events=getattr(ctask, "send_events", True),
            trail=getattr(ctask, "trail", True),
            acks_on_failure_or_timeout=getattr(ctask, "acks_on_failure_or_timeout", True),
            # autoretry_for stays empty: Celery wrapped ctask.run with it already.
        )

    def __repr__(self) -> str:
        return f"<CeleryTask {self.name}>"

    def _celery_request(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Celery's ``self.request`` for this call, built from the message as Celery's
        worker builds it (headers, the body's embedded canvas, properties, delivery)."""
        ctx = self.request
        info = dict(ctx.delivery_info)
        return _celery_context(
            ctx.message, args, kwargs,
            id=ctx.id, task=self.name, reply_to=ctx.reply_to, correlation_id=ctx.id,
            hostname=ctx.hostname, is_eager=ctx.is_eager, retries=ctx.retries,
            delivery_info={"exchange": info.get("exchange"),
                           "routing_key": info.get("routing_key"),
                           "priority": info.get("priority"),
                           "redelivered": bool(info.get("redelivered"))},
        )

    def run(self, *args: Any, **kwargs: Any) -> Any:
        ctask = self.celery_task
        request = self._celery_request(args, kwargs)
        task_id = request.id
        ctask.request_stack.push(request)
        _task_stack.push(ctask)
        state: str | None = None
        retval: Any = None
        started = time.monotonic()
        try:
            signals.task_prerun.send(sender=ctask, task_id=task_id, task=ctask, args=args,
                                     kwargs=kwargs)
            try:
                if task_has_custom(ctask, "before_start"):
                    ctask.before_start(task_id, args, kwargs)
                fun = ctask if task_has_custom(ctask, "__call__") else ctask.run
                retval = fun(*args, **kwargs)
            except CeleryReject as exc:
                state = states.REJECTED
                raise Reject(exc.reason, requeue=bool(exc.requeue)) from exc
            except CeleryIgnore as exc:
                state = "IGNORED"
                raise Ignore() from exc
            except CeleryRetry as exc:
                state = states.RETRY
                einfo = ExceptionInfo()
                _guarded(ctask.on_retry, exc.exc, task_id, args, kwargs, einfo)
                signals.task_retry.send(sender=ctask, request=request, reason=exc, einfo=einfo)
                raise Retry(str(exc), exc=exc.exc or exc, when=exc.when) from exc
            except Exception as exc:
                state, retval = states.FAILURE, exc
                einfo = ExceptionInfo()
                _guarded(ctask.on_failure, exc, task_id, args, kwargs, einfo)
                signals.task_failure.send(sender=ctask, task_id=task_id, exception=exc,
                                          args=args, kwargs=kwargs,
                                          traceback=exc.__traceback__, einfo=einfo)
                raise
            state = states.SUCCESS
            if task_has_custom(ctask, "on_success"):
                _guarded(ctask.on_success, retval, task_id, args, kwargs)
            signals.task_success.send(sender=ctask, result=retval,
                                      runtime=time.monotonic() - started)
            return retval
        finally:
            try:
                if state in (states.SUCCESS, states.FAILURE) and task_has_custom(
                        ctask, "after_return"):
                    _guarded(ctask.after_return, state, retval, task_id, args, kwargs, None)
                signals.task_postrun.send(sender=ctask, task_id=task_id, task=ctask,
                                          args=args, kwargs=kwargs, retval=retval, state=state)
            finally:
                # What the task sent through Celery's client (add_to_parent) is stored as
                # its children, as on Celery's worker.
                self.request.children.extend(request.children)
                _task_stack.pop()
                ctask.request_stack.pop()

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.celery_task.delay(*args, **kwargs)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Published by the Celery app, with Celery's options and routing."""
        return self.celery_task.apply_async(args, kwargs, **options)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        return self.celery_task.retry(*args, **kwargs)


def _guarded(handler: Callable[..., Any], *args: Any) -> None:
    """A task's handler, as Celery's worker calls it: an error in it is logged, and the
    task's outcome stays what it was."""
    try:
        handler(*args)
    except Exception:
        logger.exception("handler %s raised", getattr(handler, "__qualname__", handler))
