"""Finding the app named by ``-A``: ``module``, ``module:attr`` or a package with an app."""

from __future__ import annotations

import importlib
import os
import sys

from taskq.app import TaskQ
from taskq.errors import ConfigurationError

_ATTRS = ("app", "taskq")


def _import(name: str) -> object:
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m`, so -A proj finds ./proj
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigurationError(
                f"-A {name}: no module named {exc.name!r}; run from the folder that holds it "
                "or add that folder to PYTHONPATH"
            ) from None
        raise


def find_app(spec: str) -> TaskQ:
    """The ``TaskQ`` instance named by ``spec`` (``proj``, ``proj.tasks``, ``proj:app``)."""
    module_name, _, attr = spec.partition(":")
    module = _import(module_name)
    if attr:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                raise ConfigurationError(f"-A {spec}: {module_name} has no attribute {attr!r}")
        if _is_celery(obj):
            return _from_celery(obj)
        if not isinstance(obj, TaskQ):
            raise ConfigurationError(f"-A {spec}: {attr} is a {type(obj).__name__}, not a TaskQ "
                                     "or Celery app")
        return obj
    for name in _ATTRS:
        obj = getattr(module, name, None)
        if isinstance(obj, TaskQ):
            return obj
    found = [v for v in vars(module).values() if isinstance(v, TaskQ)]
    if len(found) == 1:
        return found[0]
    if hasattr(module, "__path__"):  # a package: try its taskq/app submodules
        for sub in _ATTRS:
            try:
                submodule = importlib.import_module(f"{module_name}.{sub}")
            except ModuleNotFoundError:
                continue
            for name in _ATTRS:
                obj = getattr(submodule, name, None)
                if isinstance(obj, TaskQ):
                    return obj
    if not found:
        capp = _find_celery(module, module_name)
        if capp is not None:
            return _from_celery(capp)
    hint = "several TaskQ apps; name one with -A module:attr" if found else "no TaskQ app"
    raise ConfigurationError(f"-A {spec}: found {hint} (looked for attributes app/taskq, "
                             "or a Celery app)")


def _is_celery(obj: object) -> bool:
    """A ``celery.Celery`` instance, told without importing Celery (it is optional)."""
    base = sys.modules.get("celery.app.base")
    return base is not None and isinstance(obj, base.Celery)


def _find_celery(module: object, module_name: str) -> object | None:
    """A Celery app where Celery's own ``-A`` finds one: attributes ``app``/``celery``, the
    one Celery instance in the module, or the same in a package's ``celery`` submodule."""
    candidates = [module]
    if hasattr(module, "__path__") and "celery" in sys.modules:
        try:
            candidates.append(importlib.import_module(f"{module_name}.celery"))
        except ModuleNotFoundError as exc:
            if exc.name != f"{module_name}.celery":
                raise
    for mod in candidates:
        for name in ("app", "celery"):
            obj = getattr(mod, name, None)
            if _is_celery(obj):
                return obj
        found = [v for v in vars(mod).values() if _is_celery(v)]
        if len(found) == 1:
            return found[0]
    return None


def _from_celery(capp: object) -> TaskQ:
    from taskq.celery_app import from_celery  # imports Celery: only for a Celery app

    return from_celery(capp)
