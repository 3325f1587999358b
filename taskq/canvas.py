"""The canvas: signatures, and the chain, group and chord built from them, in Celery's layout.

A signature is a dict with Celery's keys (``task, args, kwargs, options, subtask_type,
immutable``), so it travels in a message's ``callbacks``/``errbacks``/``chain``/``chord``
fields exactly as Celery 5 writes it, and a Celery worker runs what a taskq client sends.

- ``chain(a, b, c)``: the first task's message carries the rest, reversed, in ``chain``;
  each worker sends the next step with its result.
- ``group(a, b)``: the tasks are sent at once with a shared ``group`` id and ``group_index``.
- ``chord(header, body)``: the header tasks carry the body in ``chord``; the backend counts
  them as they finish (``taskq.chord``) and the last one sends the body with every result in
  header order. No polling task.

A signature knows its app (``task.s()`` binds it; ``Signature.from_dict(d, app=app)`` for
one read off the wire): there is no global current app.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from taskq.app import TaskQ
    from taskq.result import AsyncResult, GroupResult

__all__ = ["Signature", "as_signatures", "chain", "chord", "chunks", "group", "signature",
           "xmap", "xstarmap"]

# The options ``TaskQ.send_task`` takes. A Celery signature may carry others (stamps,
# add_to_parent, ...): they mean nothing to a single publish and are dropped.
SEND_OPTIONS = frozenset({
    "countdown", "eta", "expires", "queue", "routing_key", "exchange", "priority", "headers",
    "task_id", "time_limit", "soft_time_limit", "link", "link_error", "serializer", "retry",
    "retry_policy", "ignore_result", "retries", "parent_id", "root_id", "group_id",
    "group_index", "shadow", "reply_to", "chain", "chord", "replaced_task_nesting",
    "add_to_parent",
})
# Options a later merge must not replace (as Celery: a frozen group id stays).
_IMMUTABLE_OPTIONS = frozenset({"group_id"})


class Signature(dict[str, Any]):
    """A task call waiting to be made; a dict in Celery's signature layout."""

    TYPES: ClassVar[dict[str, type[Signature]]] = {}
    COMPOSITE: ClassVar[bool] = False  # chain, group, chord: kwargs are the parts

    def __init__(
        self,
        task: str,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: TaskQ | None = None,
    ) -> None:
        super().__init__(
            task=task,
            args=list(args),
            kwargs=dict(kwargs or {}),
            options=dict(options or {}),
            subtask_type=subtask_type,
            immutable=immutable,
        )
        self._app = app

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], app: TaskQ | None = None) -> Signature:
        """A signature (or chain, group, chord) from its dict, e.g. one read off the wire."""
        if isinstance(data, Signature) and app is None:
            app = data._app
        kind = data.get("subtask_type")
        target = Signature.TYPES.get(kind or "", Signature)
        if target is not Signature:
            return target._from_parts(data, app)
        return Signature(
            data["task"],
            data.get("args") or (),
            data.get("kwargs") or {},
            data.get("options") or {},
            bool(data.get("immutable", False)),
            app=app,
        )

    @classmethod
    def _from_parts(cls, data: Mapping[str, Any], app: TaskQ | None) -> Signature:
        raise NotImplementedError

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        # The app is shared, never copied.
        plain = {k: copy.deepcopy(v, memo) for k, v in self.items()}
        return Signature.from_dict(plain, app=self._app)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (dict(self),))

    def bind(self, app: TaskQ) -> Signature:
        """Give this signature (and the ones inside it) an app to publish with."""
        self._app = app
        for child in self._children():
            child.bind(app)
        return self

    def _children(self) -> list[Signature]:
        return []

    # -- the dict's fields --------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self["task"])

    task = name

    @property
    def args(self) -> tuple[Any, ...]:
        return tuple(self.get("args") or ())

    @args.setter
    def args(self, value: Iterable[Any]) -> None:
        self["args"] = list(value)

    @property
    def kwargs(self) -> dict[str, Any]:
        value = self.setdefault("kwargs", {})
        assert isinstance(value, dict)
        return value

    @property
    def options(self) -> dict[str, Any]:
        value = self.setdefault("options", {})
        assert isinstance(value, dict)
        return value

    @property
    def immutable(self) -> bool:
        return bool(self.get("immutable"))

    @property
    def subtask_type(self) -> str | None:
        return self.get("subtask_type")

    @property
    def id(self) -> str | None:
        return self.options.get("task_id")

    @property
    def app(self) -> TaskQ:
        if self._app is None:
            raise TypeError(
                f"signature {self.name!r} has no app to publish with; make it with "
                "task.s(...) or bind it: Signature.from_dict(d, app=app) / sig.bind(app)")
        return self._app

    def __repr__(self) -> str:
        args = ", ".join([*(repr(a) for a in self.args),
                          *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.name}({args}){'!' if self.immutable else ''}"

    # -- changing -----------------------------------------------------------------------------
    def _merge(self, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None
               ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        opts = dict(self.options)
        for key, value in (options or {}).items():
            if key not in _IMMUTABLE_OPTIONS or key not in opts:
                opts[key] = value
        if self.immutable:
            return self.args, dict(self.kwargs), opts
        return (*tuple(args), *self.args), {**self.kwargs, **(kwargs or {})}, opts

    def clone(self, args: Iterable[Any] = (), kwargs: Mapping[str, Any] | None = None,
              **options: Any) -> Signature:
        """A copy, with partial ``args`` prepended and ``kwargs``/``options`` merged."""
        new = copy.deepcopy(self)
        merged_args, merged_kwargs, merged_options = new._merge(args, kwargs, options)
        new["args"], new["kwargs"], new["options"] = (
            list(merged_args), merged_kwargs, merged_options)
        return new

    partial = clone

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set call options (``queue=``, ``countdown=``, ...) in place; returns ``self``."""
        if immutable is not None:
            self["immutable"] = immutable
        self.options.update(options)
        return self

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``callback`` with this task's result when it succeeds."""
        self._append_option("link", callback)
        return callback

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``errback`` when this task fails."""
        self._append_option("link_error", errback)
        return errback

    def _append_option(self, key: str, value: Mapping[str, Any]) -> None:
        """Add to a list option, which ``.set(link_error=sig)`` may have made one signature."""
        current = self.options.get(key)
        if current is None:
            current = []
        elif isinstance(current, Mapping):
            current = [current]
        self.options[key] = [*current, value]

    def on_error(self, errback: Mapping[str, Any]) -> Signature:
        self.link_error(errback)
        return self

    def freeze(self, _id: str | None = None, group_id: str | None = None,
               chord: Mapping[str, Any] | None = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None
               ) -> Any:
        """Fix this call's task id (and its place in a group/chord); return its result."""
        from taskq.result import AsyncResult

        opts = self.options
        task_id = opts.setdefault("task_id", _id or str(uuid.uuid4()))
        if root_id:
            opts["root_id"] = root_id
        if parent_id:
            opts["parent_id"] = parent_id
        if group_id and "group_id" not in opts:
            opts["group_id"] = group_id
        if chord is not None:
            opts["chord"] = chord
        if group_index is not None:
            opts["group_index"] = group_index
        return AsyncResult(task_id, self.app.backend, task_name=self.name)

    def with_parent_result(self, result: Any) -> tuple[list[Any], dict[str, Any]]:
        """Arguments for calling this signature as a callback of a task that returned ``result``."""
        args = list(self.args)
        if not self.immutable:
            args = [result, *args]
        return args, dict(self.kwargs)

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        if isinstance(other, Signature):
            return chain(self, other, app=self._app)
        return NotImplemented

    # -- calling ------------------------------------------------------------------------------
    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task here, now (like calling the task function)."""
        merged_args, merged_kwargs, _ = self._merge(args, kwargs)
        return self.app.get_task(self.name)(*merged_args, **merged_kwargs)

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Publish this call, with partial ``args`` prepended; returns its result handle."""
        options = {k: v for k, v in options.items() if v is not None}
        merged_args, merged_kwargs, merged_options = self._merge(args or (), kwargs, options)
        if self.COMPOSITE:  # its kwargs hold its parts; only the partial ones go through
            merged_kwargs = dict(kwargs or {})
        return self._apply(merged_args, merged_kwargs, merged_options)

    def _apply(self, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: dict[str, Any]) -> Any:
        return self.app.send_task(self.name, args, kwargs, **send_options(options))

    def apply(self, args: Iterable[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Run here with the worker's semantics (``Task.apply``)."""
        merged_args, merged_kwargs, _ = self._merge(args or (), kwargs)
        return self.app.get_task(self.name).apply(merged_args, merged_kwargs, **options)


# A message the worker sends as what follows a task (a callback, the next chain step, an
# errback, a chord's body) may go out twice: the child that sent it can die before it tells
# the parent, which then sends it again (``trace.follow_up``). Both copies carry this header,
# naming the run that sent them (``Job.run_id``), and the same task id; a worker runs an
# early-ack task that carries it only if it takes its run-once key in the result backend
# first, so one copy runs (``trace.execute``).
ONCE_HEADER = "taskq_once"


def once_options(sig: Signature, options: dict[str, Any], run_id: str | None
                 ) -> dict[str, Any]:
    """``options`` for sending ``sig`` as what follows run ``run_id`` of a task: its headers
    with ``ONCE_HEADER`` added (none without a run id)."""
    if run_id:
        headers = options.get("headers") or sig.options.get("headers") or {}
        options["headers"] = {**headers, ONCE_HEADER: run_id}
    return options


def follow_up_id(sig: Signature, run_id: str | None, role: str, position: int) -> None:
    """Fix the task id of ``sig``, sent as what follows run ``run_id`` of a task, if it has
    none: the same id each time it is built for that run (by the child, then by the parent on
    its behalf), so a second copy is known as one."""
    if run_id and sig.subtask_type is None and not sig.options.get("task_id"):
        sig.freeze(str(uuid.uuid5(uuid.NAMESPACE_OID, f"{run_id}/{role}/{position}")))


def send_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a signature that ``send_task`` takes (see ``SEND_OPTIONS``)."""
    return {k: v for k, v in options.items() if k in SEND_OPTIONS and v is not None}


def _rebuild(data: dict[str, Any]) -> Signature:
    return Signature.from_dict(data)


def signature(data: Mapping[str, Any], app: TaskQ | None = None) -> Signature:
    """A ``Signature`` (or chain, group, chord) for a signature dict."""
    if isinstance(data, Signature) and (app is None or data._app is app):
        return data
    return Signature.from_dict(data, app=app)


def _signatures(items: Iterable[Any], app: TaskQ | None) -> list[Signature]:
    out = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("task"), str):
            raise TypeError(f"expected signatures such as task.s(...), got {item!r}")
        sig = signature(item, app)
        if sig._app is None and app is not None:
            sig.bind(app)
        out.append(sig)
    return out


def _app_of(sigs: Iterable[Signature], app: TaskQ | None) -> TaskQ | None:
    if app is not None:
        return app
    for sig in sigs:
        if sig._app is not None:
            return sig._app
    return None


def chord_size(sig: Signature) -> int:
    """How many completions a chord waits for from ``sig`` in its header (as Celery counts)."""
    if isinstance(sig, group):
        return sum(chord_size(task) for task in sig.tasks)
    if isinstance(sig, chain):
        for step in reversed(sig.tasks):
            size = chord_size(step)
            if size:
                return size
        return 0
    if isinstance(sig, chord):
        return chord_size(sig.body)
    return 1


# -- chain --------------------------------------------------------------------------------------

class _TaskList(Signature):
    """What chain and group share: their parts are a list of signatures, ``kwargs["tasks"]``,
    given as arguments or as one iterable; ``KIND`` is the ``subtask_type`` and names the task
    (``celery.<KIND>``)."""

    COMPOSITE = True
    KIND: ClassVar[str]

    def __init__(self, *tasks: Any, app: TaskQ | None = None, **options: Any) -> None:
        if len(tasks) == 1 and not isinstance(tasks[0], Mapping):
            tasks = tuple(tasks[0])
        sigs = _signatures(tasks, app)
        super().__init__(f"celery.{self.KIND}", (), {"tasks": sigs}, options,
                         subtask_type=self.KIND, app=_app_of(sigs, app))

    @classmethod
    def _from_parts(cls, data: Mapping[str, Any], app: TaskQ | None) -> Signature:
        kwargs = data.get("kwargs") or {}
        new = cls(*(kwargs.get("tasks") or ()), app=app, **(data.get("options") or {}))
        new["immutable"] = bool(data.get("immutable", False))
        return new

    @property
    def tasks(self) -> list[Signature]:
        return self.kwargs.setdefault("tasks", [])

    def _children(self) -> list[Signature]:
        return self.tasks

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Send it, as Celery's chain and group do when called: ``chain(a, b)()`` is
        ``chain(a, b).apply_async()`` (a task signature called runs here instead)."""
        return self.apply_async(args, kwargs)


class chain(_TaskList):
    """``chain(a.s(), b.s(), c.s())`` (or ``a.s() | b.s() | c.s()``): each step gets the result
    of the one before. ``apply_async`` returns the last step's result; ``.parent`` walks back."""

    KIND = "chain"

    @classmethod
    def _from_parts(cls, data: Mapping[str, Any], app: TaskQ | None) -> Signature:
        new = super()._from_parts(data, app)
        new["args"] = list(data.get("args") or ())  # a chain keeps its partial arguments
        return new

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if isinstance(other, chain):
            return chain(*self.tasks, *other.tasks, app=self._app, **self.options)
        if isinstance(other, Signature):
            return chain(*self.tasks, other, app=self._app, **self.options)
        return NotImplemented

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"

    def _steps(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Signature]:
        """The steps as they run: nested chains spliced, a group followed by a step made a
        chord with it, a chord whose body is a chain split after the body's first task; the
        first step has the partial arguments."""
        pending = [task.clone() for task in self.tasks]
        steps: list[Signature] = []
        while pending:
            step = pending.pop(0)
            if isinstance(step, chain):
                pending[:0] = [t.clone() for t in step.tasks]
                continue
            if isinstance(step, chord) and isinstance(step.body, chain) and step.body.tasks:
                body_steps = step.body.tasks
                step.kwargs["body"] = body_steps[0]
                pending[:0] = body_steps[1:]
            steps.append(step)
        merged: list[Signature] = []
        for step in steps:
            if merged and isinstance(merged[-1], group):
                header = merged.pop()
                merged.append(chord(header, step, app=self._app))
            else:
                merged.append(step)
        if merged and (args or kwargs):
            merged[0] = merged[0].clone(args, kwargs)
        return merged

    def apply(self, args: Iterable[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Run the steps here, one after another, each with the value before it; a failed
        step ends the chain and its result is returned."""
        result: Any = None
        for index, step in enumerate(self._steps(tuple(args or ()), dict(kwargs or {}))):
            result = step.apply() if index == 0 else step.apply((result.get(),))
            if not result.successful():
                break
        return result

    def freeze(self, _id: str | None = None, group_id: str | None = None,
               chord: Mapping[str, Any] | None = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None
               ) -> AsyncResult:
        for key, value in (("task_id", _id), ("group_id", group_id), ("chord", chord),
                           ("root_id", root_id), ("group_index", group_index)):
            if value is not None:
                self.options.setdefault(key, value)
        steps = self._steps((), {})
        self.kwargs["tasks"] = steps
        return self._freeze_steps(steps, dict(self.options))[-1]

    def _freeze_steps(self, steps: list[Signature], opts: Mapping[str, Any]
                      ) -> list[Any]:
        """Freeze each step (the last with the chain's own id and group/chord place); link
        each result to the one before as its ``parent``."""
        results: list[Any] = []
        root_id = opts.get("root_id")
        for index, step in enumerate(steps):
            if index == len(steps) - 1:
                res = step.freeze(opts.get("task_id"), group_id=opts.get("group_id"),
                                  chord=opts.get("chord"), root_id=root_id,
                                  group_index=opts.get("group_index"))
            else:
                res = step.freeze(root_id=root_id)
            if results:
                _root_of(res).parent = results[-1]
            results.append(res)
        return results

    def _apply(self, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: dict[str, Any]) -> Any:
        steps = self._steps(args, kwargs)
        if not steps:
            return None
        link = options.pop("link", None)
        link_error = options.pop("link_error", None)
        for errback in _as_list(link_error):
            for step in steps:
                step.link_error(errback)
        for callback in _as_list(link):
            steps[-1].link(callback)
        place: dict[str, Any] = {k: options.pop(k) for k in
                                 ("task_id", "group_id", "chord", "group_index")
                                 if k in options}
        results = self._freeze_steps(steps, {**place, "root_id": options.get("root_id")})
        first, rest = steps[0], steps[1:]
        if rest:
            # Celery keeps the rest reversed: a worker pops the next step off the end.
            options["chain"] = [*reversed(rest), *(options.get("chain") or [])]
        first.apply_async(**options)
        return results[-1]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _root_of(result: Any) -> Any:
    """The earliest result of a frozen step (a chord's body result → its header group)."""
    seen = set()
    while getattr(result, "parent", None) is not None and id(result) not in seen:
        seen.add(id(result))
        result = result.parent
    return result


# -- group --------------------------------------------------------------------------------------

class group(_TaskList):
    """``group(a.s(), b.s())``: run the tasks in parallel; returns a ``GroupResult``."""

    KIND = "group"

    def __call__(self, *partial_args: Any, **options: Any) -> Any:
        """Send it (``group(...)(x, countdown=1)``: Celery's group takes options here)."""
        return self.apply_async(partial_args, **options)

    def __repr__(self) -> str:
        return f"group({self.tasks!r})"

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if isinstance(other, Signature):
            return chord(self, other, app=self._app)
        return NotImplemented

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        raise TypeError("a group takes no link: use a chord, group(...) | callback.s()")

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        """Run ``errback`` when a task of the group fails: linked to each task, or, when the
        group has its own ``link_error`` (which replaces its tasks' when it is sent), added
        there, as Celery does for a chord's group body."""
        if self.options.get("link_error") is not None:
            self._append_option("link_error", errback)
            return errback
        for task in self.tasks:
            task.link_error(signature(errback, self._app).clone())
        return errback

    def apply_async(self, args: Iterable[Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Send every task. A ``link_error`` set on the group (``.set(link_error=...)``)
        replaces each task's own when it is sent, as in Celery; passed here it is refused,
        as Celery refuses it: link the tasks instead."""
        if options.get("link") is not None or options.get("link_error") is not None:
            raise TypeError("a group takes no link/link_error: link the tasks, or use a "
                            "chord for a callback after all of them")
        return super().apply_async(args, kwargs, **options)

    def _flat(self) -> list[Signature]:
        out: list[Signature] = []
        for task in self.tasks:
            if isinstance(task, group):
                out.extend(task._flat())
            else:
                out.append(task)
        return out

    def _freeze_members(self, group_id: str, root_id: str | None,
                        chord: Mapping[str, Any] | None, args: tuple[Any, ...] = (),
                        kwargs: dict[str, Any] | None = None
                        ) -> tuple[list[Signature], list[Any]]:
        """The members as they are sent (nested groups flattened, as Celery does), and
        their results (a chain's with its earlier steps as parents, a chord's with its
        header)."""
        members, results = [], []
        for index, task in enumerate(self._flat()):
            member = task.clone(args, kwargs) if (args or kwargs) else task.clone()
            results.append(member.freeze(group_id=group_id, chord=chord, root_id=root_id,
                                         group_index=index))
            members.append(member)
        return members, results

    def apply(self, args: Iterable[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> GroupResult:
        """Run the members here, one after another; their results as a group's."""
        from taskq.result import GroupResult

        results: list[Any] = [task.clone(tuple(args or ()), dict(kwargs or {})).apply()
                              for task in self._flat()]
        return GroupResult(self.id or str(uuid.uuid4()), results, app=self._app)

    def freeze(self, _id: str | None = None, group_id: str | None = None,
               chord: Mapping[str, Any] | None = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None
               ) -> GroupResult:
        from taskq.result import GroupResult

        gid = self.options.setdefault("task_id", _id or str(uuid.uuid4()))
        # A group that ends a chain in a chord's header (or in another group): its members
        # are parts of that outer group (as in Celery), and the group carries its place.
        for key, value in (("group_id", group_id), ("chord", chord),
                           ("group_index", group_index)):
            if value is not None:
                self.options[key] = value
        members, results = self._freeze_members(group_id or gid, root_id, chord)
        self.kwargs["tasks"] = members
        return GroupResult(gid, results, app=self.app)

    def _apply(self, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: dict[str, Any]) -> Any:
        from taskq.result import GroupResult

        if options.get("link") is not None:
            raise TypeError("a group takes no link: link the tasks, or use a chord for a "
                            "callback after all of them")
        gid = options.pop("task_id", None) or str(uuid.uuid4())
        outer_gid = options.pop("group_id", None)
        options.pop("group_index", None)
        body = options.pop("chord", None)
        add_to_parent = options.pop("add_to_parent", True)
        # With an outer group id (this group ends a chain in a chord header), the members
        # count in that chord, each once, as Celery's worker sends them.
        members, _ = self._freeze_members(outer_gid or gid, options.get("root_id"), body,
                                          args, kwargs)
        # The running task (if any) gets the group as one child, as in Celery.
        with self.app.publish_batch():  # one pipeline on Redis (taskq.publish_batch)
            results = [member.apply_async(add_to_parent=False, **options)
                       for member in members]
        result = GroupResult(gid, results, app=self.app)
        if add_to_parent:
            self.app.add_to_parent(result)
        return result


# -- chord --------------------------------------------------------------------------------------

class chord(Signature):
    """``chord(header, body)`` (or ``group(...) | body``): run the header tasks in parallel,
    then ``body`` once, with their results as a list in header order. ``apply_async``
    returns the body's result, whose ``parent`` is the header's ``GroupResult``.

    A failed header task makes the body FAILURE ``ChordError`` naming it, and runs the
    body's ``link_error``. Needs a result backend that counts: Redis or SQL, not rpc://.
    """

    COMPOSITE = True

    def __init__(self, header: Any, body: Mapping[str, Any] | None = None, *,
                 app: TaskQ | None = None, **options: Any) -> None:
        if isinstance(header, Mapping):
            header = [header]
        hdr = header.tasks if isinstance(header, group | chain) else list(header)
        header_sigs = _signatures(hdr, app)
        body_sig = signature(body, app) if body is not None else None
        found = _app_of([*header_sigs, *([body_sig] if body_sig is not None else [])], app)
        super().__init__("celery.chord", (), {"kwargs": {}, "header": header_sigs,
                                              "body": body_sig},
                         options, subtask_type="chord", app=found)

    @classmethod
    def _from_parts(cls, data: Mapping[str, Any], app: TaskQ | None) -> Signature:
        kwargs = data.get("kwargs") or {}
        header = kwargs.get("header") or []
        new = cls([], kwargs.get("body"), app=app, **(data.get("options") or {}))
        if isinstance(header, Mapping):  # frozen: a group dict
            new.kwargs["header"] = signature(header, app)
        else:
            new.kwargs["header"] = _signatures(header, app)
        new["args"] = list(data.get("args") or ())
        new["immutable"] = bool(data.get("immutable", False))
        return new

    @property
    def tasks(self) -> list[Signature]:
        header = self.kwargs.setdefault("header", [])
        # Frozen (as Celery does), the header is a group whose task_id is the chord's group id.
        return header.tasks if isinstance(header, group) else header

    header = tasks

    @property
    def header_id(self) -> str | None:
        header = self.kwargs.get("header")
        return header.id if isinstance(header, group) else None

    @property
    def body(self) -> Signature:
        body = self.kwargs.get("body")
        if body is None:
            raise TypeError("this chord has no body: chord(header, body) or chord(header)(body)")
        return body

    def _children(self) -> list[Signature]:
        body = self.kwargs.get("body")
        return [*self.tasks, *([body] if body is not None else [])]

    def __repr__(self) -> str:
        return f"chord({self.tasks!r}, {self.kwargs.get('body')!r})"

    def __call__(self, body: Mapping[str, Any] | None = None, **options: Any) -> Any:
        if body is not None:
            self.kwargs["body"] = signature(body, self._app)
        return self.apply_async((), **options)

    def __or__(self, other: Any) -> Signature:  # type: ignore[override]
        if isinstance(other, Signature) and not isinstance(other, group | chain | chord):
            new = self.clone()
            assert isinstance(new, chord)
            new.kwargs["body"] = new.body | other
            return new
        return super().__or__(other)

    def apply(self, args: Iterable[Any] | None = None,
              kwargs: Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Run the header here, then the body with its values (a failed part raises)."""
        header = group(*self.tasks, app=self._app).apply(args, kwargs)
        return self.body.apply((header.get(),))

    def link(self, callback: Mapping[str, Any]) -> Mapping[str, Any]:
        return self.body.link(callback)

    def link_error(self, errback: Mapping[str, Any]) -> Mapping[str, Any]:
        # As Celery's default (task_allow_error_cb_on_chord_header=False): the body only.
        return self.body.link_error(errback)

    def freeze(self, _id: str | None = None, group_id: str | None = None,
               chord: Mapping[str, Any] | None = None, root_id: str | None = None,
               parent_id: str | None = None, group_index: int | None = None
               ) -> AsyncResult:
        header = group(*self.tasks, app=self._app, task_id=self.header_id or str(uuid.uuid4()))
        header_result = header.freeze(root_id=root_id, chord=self.body)
        self.kwargs["header"] = header
        body_result = self.body.freeze(_id, root_id=root_id, chord=chord, group_id=group_id,
                                       group_index=group_index)
        _root_of(body_result).parent = header_result
        return body_result

    def _apply(self, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: dict[str, Any]) -> Any:
        from taskq.result import GroupResult

        app = self.app
        app.backend.ensure_chords_allowed()
        body = self.body.clone()
        gid = self.header_id or str(uuid.uuid4())
        body_id = options.pop("task_id", None) or body.id or str(uuid.uuid4())
        header_delay: dict[str, Any] = {k: options.pop(k) for k in ("countdown", "eta")
                                        if k in options}
        for callback in _as_list(options.pop("link", None)):
            body.link(callback)
        for errback in _as_list(options.pop("link_error", None)):
            body.link_error(errback)
        outer_chord = options.pop("chord", None)
        outer_group = options.pop("group_id", None)
        outer_index = options.pop("group_index", None)
        add_to_parent = options.pop("add_to_parent", True)
        body.options.update({k: v for k, v in options.items() if k != "parent_id"})
        body_result = body.freeze(body_id, group_id=outer_group or gid, chord=outer_chord,
                                  root_id=options.get("root_id"), group_index=outer_index)
        header = group(*self.tasks, app=app)
        header_options = {k: v for k, v in options.items() if k != "chain"}
        header_options.update(header_delay)
        members, frozen = header._freeze_members(gid, options.get("root_id"), body, args,
                                                 kwargs)
        if any(isinstance(r, GroupResult) for r in frozen):
            # A chain ending in a group gives a nested list: the worker that completes the
            # chord restores this shape (Celery's Redis backend keeps it under the same key).
            app.backend.save_group(gid, GroupResult(gid, frozen, app=app).as_tuple())
        if not members:
            body.apply_async(([],), add_to_parent=add_to_parent)
            body_result.parent = GroupResult(gid, [], app=app)
            return body_result
        app.backend.set_chord_size(gid, sum(chord_size(m) for m in members))
        with app.publish_batch():
            results = [member.apply_async(add_to_parent=False, **header_options)
                       for member in members]
        header_result = GroupResult(gid, results, app=app)
        if add_to_parent:  # the header is the running task's child, as in Celery
            app.add_to_parent(header_result)
        _root_of(body_result).parent = header_result
        return body_result


# -- map, starmap, chunks -----------------------------------------------------------------------

class xmap(Signature):
    """``task.map(items)``: one task, ``celery.map``, that calls ``task(item)`` for each item."""

    NAME = "celery.map"
    KIND = "xmap"

    def __init__(self, task: Mapping[str, Any], it: Iterable[Any], *,
                 app: TaskQ | None = None, **options: Any) -> None:
        sig = signature(task, app)
        super().__init__(self.NAME, (), {"task": sig, "it": list(it)}, options,
                         subtask_type=self.KIND, app=app or sig._app)

    @classmethod
    def _from_parts(cls, data: Mapping[str, Any], app: TaskQ | None) -> Signature:
        kwargs = data.get("kwargs") or {}
        return cls(kwargs["task"], kwargs.get("it") or (), app=app,
                   **(data.get("options") or {}))

    def _apply(self, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: dict[str, Any]) -> Any:
        return self.app.send_task(self.NAME, (), dict(self.kwargs), **send_options(options))


class xstarmap(xmap):
    """``task.starmap(items)``: one task, ``celery.starmap``, calling ``task(*item)``."""

    NAME = "celery.starmap"
    KIND = "xstarmap"


class chunks(Signature):
    """``task.chunks(items, n)``: the items in chunks of ``n``, each chunk one starmap task,
    run as a group."""

    COMPOSITE = True  # its kwargs are task, it and n: not arguments for each starmap

    def __init__(self, task: Mapping[str, Any], it: Iterable[Any], n: int, *,
                 app: TaskQ | None = None, **options: Any) -> None:
        sig = signature(task, app)
        super().__init__("celery.chunks", (), {"task": sig, "it": list(it), "n": int(n)},
                         options, subtask_type="chunks", app=app or sig._app)

    @classmethod
    def _from_parts(cls, data: Mapping[str, Any], app: TaskQ | None) -> Signature:
        kwargs = data.get("kwargs") or {}
        return cls(kwargs["task"], kwargs.get("it") or (), kwargs.get("n") or 1, app=app,
                   **(data.get("options") or {}))

    def group(self) -> group:
        task, items, n = self.kwargs["task"], list(self.kwargs["it"]), int(self.kwargs["n"])
        parts = [items[i:i + n] for i in range(0, len(items), n)]
        return group(*(xstarmap(task, part, app=self._app) for part in parts), app=self._app)

    def _apply(self, args: tuple[Any, ...], kwargs: dict[str, Any],
               options: dict[str, Any]) -> Any:
        return self.group().apply_async(args, kwargs, **options)


Signature.TYPES.update(chain=chain, group=group, chord=chord, xmap=xmap, xstarmap=xstarmap,
                       chunks=chunks)


def as_signatures(value: Any) -> tuple[Signature, ...]:
    """``link=`` and ``link_error=`` accept one signature or a list of them."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    sigs = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("task"), str):
            raise TypeError(
                f"link/link_error expects signatures such as task.s(...), got {item!r}"
            )
        sigs.append(item if isinstance(item, Signature) else Signature.from_dict(item))
    return tuple(sigs)

