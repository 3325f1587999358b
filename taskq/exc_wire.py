"""Exceptions on the wire, in Celery's JSON layout.

A failed task's result is ``{"exc_type": "ValueError", "exc_message": ["bad"], "exc_module":
"builtins"}``, which Celery and taskq both read. Decoding rebuilds the original class only when
it is an exception class that can be imported without running new code (its module is already
imported, or is a builtin); otherwise the result is a ``RemoteTaskError`` that keeps the type
name, module and message. Classes are never built at runtime.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Mapping
from typing import Any

from taskq.errors import ChordError, RemoteTaskError, TaskRevokedError

_JSON_SAFE = (str, int, float, bool, type(None))

# taskq classes that travel under Celery's name, so that each side rebuilds its own class.
_AS_CELERY: dict[type[BaseException], tuple[str, str]] = {
    ChordError: ("celery.exceptions", "ChordError"),
    TaskRevokedError: ("celery.exceptions", "TaskRevokedError"),
}
_FROM_CELERY = {where: cls for cls, where in _AS_CELERY.items()}


def _safe(value: Any) -> Any:
    """``value`` as JSON keeps it (tuples as lists, nested too), else its repr, as Celery's
    ``ensure_serializable`` does: an argument that is a tuple of strings (Celery's
    ``UnpickleableExceptionWrapper`` holds one) stays a sequence, not its repr."""
    if isinstance(value, _JSON_SAFE):
        return value
    if isinstance(value, list | tuple):
        return [_safe(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _safe(v) for k, v in value.items()}
    return repr(value)


def _safe_args(args: tuple[Any, ...]) -> list[Any]:
    return [_safe(a) for a in args]


def exception_to_wire(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    module, qualname = _AS_CELERY.get(cls, (cls.__module__, cls.__qualname__))
    return {
        "exc_type": qualname,
        "exc_message": _safe_args(exc.args),
        "exc_module": module,
    }


def is_wire_exception(value: Any) -> bool:
    return isinstance(value, Mapping) and "exc_type" in value


def _find_class(module: str | None, qualname: str) -> type[BaseException] | None:
    if module in (None, "builtins", "exceptions"):
        obj: Any = builtins
    else:
        obj = sys.modules.get(module)
        if obj is None:
            return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return obj
    return None


def exception_from_wire(value: Mapping[str, Any]) -> BaseException:
    qualname = str(value.get("exc_type") or "Exception")
    module = value.get("exc_module")
    message = value.get("exc_message", ())
    args = tuple(message) if isinstance(message, list | tuple) else (message,)
    cls = _FROM_CELERY.get((str(module), qualname)) or _find_class(
        module if isinstance(module, str) else None, qualname)
    text = ", ".join(str(a) for a in args) if len(args) != 1 else str(args[0])
    if cls is not None:
        try:
            return cls(*args)
        except Exception:
            pass
    return RemoteTaskError(qualname, module if isinstance(module, str) else None, text)
