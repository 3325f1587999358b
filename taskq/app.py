"""The application object: settings, the task registry, publishing and results.

There is no global "current app": everything that needs the app is handed it.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from kombu.clocks import LamportClock

from taskq.canvas import as_signatures
from taskq.config import Config
from taskq.errors import ConfigurationError, NotRegistered
from taskq.protocol import TaskMessage, origin_name
from taskq.publish import Publisher, make_connection, resolve_time
from taskq.result import AsyncResult
from taskq.task import CALL_OPTIONS, TASK_OPTIONS, Context, Task, check_options

if TYPE_CHECKING:
    from kombu import Connection, Producer

    from taskq.backends.base import Backend
    from taskq.control import Control

logger = logging.getLogger("taskq")

PublishHook = Callable[[TaskMessage, Mapping[str, Any]], TaskMessage | None]


@dataclass
class Hooks:
    """The app's named hooks. ``before_task_publish`` may return a replacement message."""

    before_task_publish: list[PublishHook] = field(default_factory=list)
    after_task_publish: list[PublishHook] = field(default_factory=list)
    task_revoked: list[Callable[[Any], None]] = field(default_factory=list)
    """Called in the worker with the ``Request`` of a revoked task it discarded."""
    worker_process_init: list[Callable[[], None]] = field(default_factory=list)
    """Called in each pool child after it starts."""
    worker_process_shutdown: list[Callable[[], None]] = field(default_factory=list)
    """Called in each pool child before it exits."""
    task_prerun: list[Callable[[Task, str], None]] = field(default_factory=list)
    """Called where a task runs (the pool child), with the task and its id, just before it."""
    task_postrun: list[Callable[[Task, str, str], None]] = field(default_factory=list)
    """Called where a task ran, with the task, its id and its state, right after it."""
    inspect_conf: list[Callable[[bool], Mapping[str, Any]]] = field(default_factory=list)
    """Called by the ``conf`` remote command with ``with_defaults``: more settings to answer
    with, under their own names (a Celery app's, as Celery's worker answers)."""
    inspect_report: list[Callable[[], str]] = field(default_factory=list)
    """Called by the ``report`` remote command: more text for its answer (Celery's
    ``bugreport`` for a Celery app)."""
    task_lost: list[Callable[[str, str, BaseException, bool, TaskMessage], None]] = field(
        default_factory=list)
    """Called in the worker's main process when the child running a task died: with the task
    id, its name, the error (``WorkerLostError`` or ``TimeLimitExceeded``), whether the
    task was requeued to run again, and its message. A hook that raises is logged and
    ignored."""


def run_hooks(hooks: Iterable[Callable[..., Any]], *args: Any) -> None:
    """Call each hook with ``args``; one that raises is logged and the rest still run."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            logger.exception("hook %r failed", hook)


class TaskQ:
    """A taskq application: ``app = TaskQ("proj", broker=..., backend=...)``."""

    def __init__(
        self,
        main: str = "taskq",
        *,
        broker: str | None = None,
        backend: str | None = None,
        include: Iterable[str] = (),
        config_source: object | str | None = None,
        environ: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Config(environ)
        if config_source is not None:
            self.conf.from_object(config_source)
        if broker is not None:
            settings["broker_url"] = broker
        if backend is not None:
            settings["result_backend"] = backend
        self.conf.update(settings)
        self.include = list(include)
        self.tasks: dict[str, Task] = {}
        self.hooks = Hooks()
        self._publisher = Publisher(self.conf)
        self._backend: Backend | None = None
        self._backend_pid = 0
        self._local = threading.local()
        self._control: Control | None = None
        self.steps: list[Any] = []
        """Extra worker steps (``taskq.worker.steps.Step`` instances) every worker runs."""
        self.clock = LamportClock()
        """The logical clock of this process (events, remote control, mingle)."""
        from taskq import builtin_tasks

        builtin_tasks.register(self)

    def __repr__(self) -> str:
        return f"<TaskQ {self.main}>"

    # -- configuration ------------------------------------------------------------------------
    def config_from_object(self, obj: object | str) -> None:
        """Load settings from a module (or its import path), class or object."""
        self.conf.from_object(obj)
        self._reset_clients()

    def _reset_clients(self) -> None:
        self._publisher.close()
        self._publisher = Publisher(self.conf)
        if self._backend is not None and self._backend_pid == os.getpid():
            self._backend.close()
        self._backend = None

    # -- tasks --------------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...
    @overload
    def task(self, /, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self, fn: Callable[..., Any] | None = None, /, **options: Any
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Register a function as a task: ``@app.task`` or ``@app.task(bind=True, ...)``.
        ``base=`` names a ``Task`` subclass to make it from (its methods and attributes are
        the task's, as a Celery base class's are)."""
        check_options(options, TASK_OPTIONS, "task option")
        base = options.pop("base", None) or Task
        if not (isinstance(base, type) and issubclass(base, Task)):
            raise TypeError(
                f"task option base={base!r}: expected a subclass of taskq.Task (a Celery "
                "base class runs with its Celery app: taskq worker -A <the Celery app>)")

        def register(fn: Callable[..., Any]) -> Task:
            name = options.pop("name", None) or self._task_name(fn)
            task = base(self, fn, name=name, **options)
            self.tasks[name] = task
            return task

        return register(fn) if fn is not None else register

    def _task_name(self, fn: Callable[..., Any]) -> str:
        module = getattr(fn, "__module__", None) or self.main
        if module == "__main__":
            module = self.main
        return f"{module}.{fn.__name__}"

    def get_task(self, name: str) -> Task:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"task {name!r} is not registered with app {self.main!r}; check the name and "
                "that its module is imported (include=[...] or autodiscover_tasks)"
            ) from None

    def autodiscover_tasks(self, packages: Iterable[str], related_name: str = "tasks") -> None:
        """Import ``<package>.<related_name>`` for each package that has one."""
        for package in packages:
            module = f"{package}.{related_name}"
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name not in {module, package}:
                    raise  # the module exists but something it imports does not
                if exc.name == package:
                    raise ConfigurationError(
                        f"autodiscover_tasks: package {package!r} cannot be imported"
                    ) from None

    def import_includes(self) -> None:
        """Import the task modules a worker needs, as Celery's worker does: the ``imports``
        setting, then ``include=`` and the ``include`` setting; then set every task's
        ``task_annotations``."""
        for module in (*self.conf.imports, *self.include, *self.conf.include):
            importlib.import_module(module)
        for task in self.tasks.values():  # settings loaded after a task was defined
            task.annotate()

    # -- calling ------------------------------------------------------------------------------
    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Publish a task by name (it need not be registered here) and return its result.

        Options: countdown, eta, expires, queue, routing_key, exchange, priority, headers,
        task_id, time_limit, soft_time_limit, link, link_error, serializer, retry,
        retry_policy, ignore_result; ``add_to_parent=False`` keeps the result out of the
        running task's ``children``.
        """
        check_options(options, CALL_OPTIONS, "send_task option")
        now = dt.datetime.now(dt.UTC)
        countdown = options.get("countdown")
        eta = resolve_time(options.get("eta"), now=now, what="eta")
        if countdown is not None:
            if eta is not None:
                raise TypeError("give countdown or eta, not both")
            eta = resolve_time(float(countdown), now=now, what="countdown")
        task_id = options.get("task_id") or str(uuid.uuid4())
        parent = self.current_request()
        ignore_result = bool(options.get("ignore_result") or False)
        reply_to = options.get("reply_to")
        if not ignore_result and reply_to is None:
            reply_to = self.backend.on_task_call(task_id)
        msg = TaskMessage(
            task=name,
            id=task_id,
            args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            retries=int(options.get("retries") or 0),
            eta=eta,
            expires=resolve_time(options.get("expires"), now=now, what="expires"),
            time_limit=options.get("time_limit"),
            soft_time_limit=options.get("soft_time_limit"),
            root_id=options.get("root_id") or (parent.root_id if parent else None) or task_id,
            parent_id=options.get("parent_id") or (parent.id if parent else None),
            group=options.get("group_id"),
            group_index=options.get("group_index"),
            shadow=options.get("shadow"),
            origin=origin_name(),
            ignore_result=ignore_result,
            reply_to=reply_to,
            replaced_task_nesting=int(options.get("replaced_task_nesting") or 0),
            callbacks=as_signatures(options.get("link")),
            errbacks=as_signatures(options.get("link_error")),
            chain=tuple(options.get("chain") or ()),
            chord=options.get("chord"),
            headers=dict(options.get("headers") or {}),
        )
        self.publish_message(
            msg,
            queue=options.get("queue") or self._route(name),
            exchange=options.get("exchange"),
            routing_key=options.get("routing_key"),
            priority=options.get("priority"),
            serializer=options.get("serializer"),
            retry=options.get("retry"),
            retry_policy=options.get("retry_policy"),
        )
        result = AsyncResult(task_id, self.backend, task_name=name)
        if options.get("add_to_parent", True):
            self.add_to_parent(result)
        return result

    @contextmanager
    def publish_batch(self) -> Iterator[None]:
        """Send the task messages this thread publishes inside the block together, when it
        ends: one pipeline on Redis, one wait for every confirm on RabbitMQ
        (``taskq.publish_batch``). Calls return their results as usual; the messages reach
        the broker at the end of the block (on Redis, none if the block raises). Groups and
        chords publish their tasks this way."""
        with self._publisher.batch():
            yield

    def send_many(self, signatures: Iterable[Mapping[str, Any]]) -> list[Any]:
        """Publish many calls at once (``app.send_many(add.s(i, i) for i in range(100))``):
        each signature's ``apply_async()`` inside one ``publish_batch``; their results, in
        order."""
        from taskq.canvas import signature

        results = []
        with self.publish_batch():
            for item in signatures:
                if not isinstance(item, Mapping) or not isinstance(item.get("task"), str):
                    raise TypeError(
                        f"send_many takes signatures such as add.s(1, 2), got {item!r}")
                results.append(signature(item, self).apply_async())
        return results

    def add_to_parent(self, result: Any) -> None:
        """Record ``result`` as a child of the task this worker is running, if any (its
        stored ``children``, as Celery's ``add_to_parent``)."""
        parent = self.current_worker_request()
        if parent is None:
            return
        task = self.tasks.get(parent.task or "")
        if task is None or task.trail:  # trail=False: the task keeps no children
            parent.children.append(result)

    def _route(self, name: str) -> str | None:
        route = self.conf.task_routes.get(name)
        if isinstance(route, str):
            return route
        if isinstance(route, Mapping):
            return route.get("queue")
        return None

    def publish_message(
        self,
        msg: TaskMessage,
        *,
        queue: str | None = None,
        exchange: str | None = None,
        routing_key: str | None = None,
        priority: int | None = None,
        serializer: str | None = None,
        retry: bool | None = None,
        retry_policy: Mapping[str, Any] | None = None,
    ) -> TaskMessage:
        """Publish an already built message, running the publish hooks around it."""
        target = self._publisher.target(queue)
        routing = {
            "queue": target.name,
            "exchange": target.exchange.name if exchange is None else exchange,
            "routing_key": target.routing_key if routing_key is None else routing_key,
        }
        for hook in self.hooks.before_task_publish:
            msg = hook(msg, routing) or msg
        self._publisher.publish(
            msg, queue=target, exchange=exchange, routing_key=routing_key,
            priority=priority if priority is not None else self.conf.task_default_priority,
            serializer=serializer, retry=retry, retry_policy=retry_policy,
        )
        for hook in self.hooks.after_task_publish:
            hook(msg, routing)
        return msg

    # -- the current task (for parent_id / root_id of tasks sent from inside a task) ----------
    def push_current(self, context: Context) -> None:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        self._local.stack.append(context)

    def pop_current(self) -> None:
        self._local.stack.pop()

    def current_request(self) -> Context | None:
        stack = getattr(self._local, "stack", None)
        return stack[-1] if stack else None

    def current_worker_request(self) -> Context | None:
        """The request of the task a worker runs here: tasks run eagerly inside it
        (``apply()``) are skipped, as Celery's ``current_worker_task`` skips them."""
        for context in reversed(getattr(self._local, "stack", None) or ()):
            if not context.is_eager:
                return context
        return None

    # -- connections and results --------------------------------------------------------------
    def connection(self, url: str | None = None, *, heartbeat: float | None = None
                   ) -> Connection:
        """A new (not yet connected) broker connection with this app's settings."""
        return make_connection(self.conf, url, heartbeat=heartbeat)

    @contextmanager
    def producer(self) -> Iterator[Producer]:
        with self._publisher.producer() as producer:
            yield producer

    @property
    def backend(self) -> Backend:
        if self._backend is None or self._backend_pid != os.getpid():
            from taskq.backends import backend_from_url
            from taskq.embedded import result_backend_url

            self._backend = backend_from_url(self, result_backend_url(self.conf))
            self._backend_pid = os.getpid()
        return self._backend

    @property
    def control(self) -> Control:
        """Remote control of the workers: ping, revoke, shutdown, broadcast."""
        from taskq.control import Control

        if self._control is None:
            self._control = Control(self)
        return self._control

    def AsyncResult(self, task_id: str, task_name: str | None = None) -> AsyncResult:
        return AsyncResult(task_id, self.backend, task_name=task_name)

    def close(self) -> None:
        self._publisher.close()
        if self._backend is not None and self._backend_pid == os.getpid():
            self._backend.close()
        self._backend = None

    def __enter__(self) -> TaskQ:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
