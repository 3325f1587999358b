"""Settings: names, defaults, validation and precedence.

Precedence, lowest first (the same for the library, every ``taskq`` command and the stress
runner):

1. the defaults below;
2. code: ``TaskQ(..., **settings)`` and ``app.config_from_object(obj_or_module_path)``,
   later calls overriding earlier ones;
3. the environment: ``TASKQ_<SETTING_NAME>`` (``TASKQ_BROKER_URL``, ``TASKQ_TASK_ACKS_LATE``);
4. command-line flags (``taskq --config MODULE`` loads a module at level 2; ``taskq worker
   -c 4`` sets ``worker_concurrency`` at level 4).

The environment overrides code so that operators and the stress runner can point an app at
another broker without editing it. Unknown names and bad values raise ``ConfigurationError``
naming the setting, the value, and the closest valid name.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from taskq.errors import ConfigurationError
from taskq.ratelimit import parse_rate

ENV_PREFIX = "TASKQ_"
# TASKQ_* variables that are not settings: tools' own switches.
_ENV_NOT_SETTINGS = ("TASKQ_APP", "TASKQ_CONFIG_MODULE")
_ENV_FOREIGN_PREFIXES = ("TASKQ_STRESS_", "TASKQ_TEST_", "TASKQ_CHAOS_")

Converter = Callable[[str, Any], Any]


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"setting {name}: expected a string, got {_describe(value)}")
    return value


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    raise ConfigurationError(
        f"setting {name}: expected true or false, got {_describe(value)}"
    )


def _number(kind: type, minimum: float | None) -> Converter:
    def convert(name: str, value: Any) -> Any:
        if isinstance(value, bool):
            raise ConfigurationError(f"setting {name}: expected a number, got {_describe(value)}")
        try:
            number = kind(value) if isinstance(value, str) else value
        except ValueError:
            number = None
        if kind is int and not isinstance(number, int):
            raise ConfigurationError(
                f"setting {name}: expected a whole number, got {_describe(value)}"
            )
        if kind is float and not isinstance(number, int | float):
            raise ConfigurationError(f"setting {name}: expected a number, got {_describe(value)}")
        if minimum is not None and number < minimum:
            raise ConfigurationError(f"setting {name}: must be at least {minimum}, got {value!r}")
        return kind(number)

    return convert


def _optional(inner: Converter) -> Converter:
    def convert(name: str, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in {"", "none"}):
            return None
        return inner(name, value)

    return convert


def _choice(*choices: str) -> Converter:
    def convert(name: str, value: Any) -> str:
        text = _str(name, value)
        if text not in choices:
            raise ConfigurationError(
                f"setting {name}: {text!r} is not one of {', '.join(choices)}"
                + _suggest(text, choices)
            )
        return text

    return convert


def _str_list(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("["):
            value = _json(name, stripped)
        else:
            return [part.strip() for part in stripped.split(",") if part.strip()]
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigurationError(
        f"setting {name}: expected a list of strings (or 'a,b' in the environment), "
        f"got {_describe(value)}"
    )


def _json(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(f"setting {name}: not valid JSON ({exc}): {text!r}") from None


def _dict(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = _json(name, value)
    if isinstance(value, Mapping):
        return dict(value)
    raise ConfigurationError(
        f"setting {name}: expected a mapping (JSON object in the environment), "
        f"got {_describe(value)}"
    )


def _queues(name: str, value: Any) -> list[Any] | None:
    """``task_queues``: kombu ``Queue`` objects, queue names, or dicts of ``Queue.from_dict``
    options with a ``name``; Celery's ``{name: options}`` form too. In the environment: JSON
    (a list or an object) or ``a,b``."""
    if value is None:
        return None
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            return None
        value = _json(name, stripped) if stripped[0] in "[{" else _str_list(name, stripped)
    if isinstance(value, Mapping):
        value = [{**dict(options or {}), "name": qname} for qname, options in value.items()]
    if not isinstance(value, list | tuple):
        raise ConfigurationError(f"setting {name}: expected a list of kombu Queues, queue "
                                 f"names or dicts, got {_describe(value)}")
    from kombu import Queue

    out: list[Any] = []
    for item in value:
        if isinstance(item, Mapping) and isinstance(item.get("name"), str):
            out.append(dict(item))
        elif isinstance(item, str | Queue):
            out.append(item)
        else:
            raise ConfigurationError(
                f"setting {name}: {item!r} is not a kombu Queue, a queue name or a dict with "
                "a 'name'")
    return out


def _annotations(name: str, value: Any) -> list[Any]:
    """``task_annotations``: Celery's forms, a mapping of task name (or ``"*"``) to attributes,
    an object with ``annotate(task)``, or a list of those; in the environment, JSON."""
    if value is None:
        return []
    if isinstance(value, str):
        value = _json(name, value.strip() or "null") or []
    items = list(value) if isinstance(value, list | tuple) else [value]
    for item in items:
        if isinstance(item, Mapping):
            bad = [k for k, v in item.items() if not isinstance(v, Mapping)]
            if bad:
                raise ConfigurationError(
                    f"setting {name}: {bad[0]!r} maps to {_describe(item[bad[0]])}; expected "
                    "a mapping of task attributes, e.g. {'tasks.add': {'rate_limit': '10/s'}}")
        elif not callable(getattr(item, "annotate", None)):
            raise ConfigurationError(
                f"setting {name}: {item!r} is neither a mapping of task name to attributes nor "
                "an object with an annotate(task) method")
    return items


def _rate(name: str, value: Any) -> str | float:
    try:
        parse_rate(value)
    except ValueError as exc:
        raise ConfigurationError(f"setting {name}: {exc}") from None
    return value


def _suggest(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    convert: Converter
    doc: str


_SETTINGS: tuple[Setting, ...] = (
    # broker
    Setting("broker_url", None, _optional(_str),
            "Broker URL; several separated by ';' fail over in order (default: the embedded "
            "SQLite broker in embedded_dir)."),
    Setting("embedded_dir", None, _optional(_str),
            "Directory of the embedded broker.db and results.db, used when broker_url is not "
            "set (default: $XDG_DATA_HOME/taskq or ~/.local/share/taskq)."),
    Setting("broker_transport_options", {}, _dict, "Extra options for the kombu transport."),
    Setting("broker_connection_timeout", 4.0, _number(float, 0.1),
            "Seconds to wait for a broker connection to open."),
    Setting("broker_connection_retry", True, _bool, "Retry a lost broker connection."),
    Setting("broker_connection_max_retries", 100, _optional(_number(int, 0)),
            "How often to retry connecting before giving up (None: forever)."),
    Setting("broker_heartbeat", 10.0, _optional(_number(float, 0)),
            "AMQP heartbeat in seconds (None or 0 disables it)."),
    Setting("broker_pool_limit", 10, _number(int, 1), "Connections kept in the producer pool."),
    Setting("broker_confirm_publish", True, _bool,
            "Wait for the broker to confirm each publish (AMQP publisher confirms)."),
    Setting("broker_failover_strategy", "round-robin", _choice("round-robin", "shuffle"),
            "How to pick the next broker URL after a failure."),
    # results
    Setting("result_backend", None, _optional(_str),
            "redis://, rpc://, db+sqlite:///path (any SQLAlchemy URL) or None (default: "
            "results.db in embedded_dir when the broker is the embedded one)."),
    Setting("result_backend_transport_options", {}, _dict, "Extra options for the backend."),
    Setting("result_serializer", "json", _str, "Serializer for stored results."),
    Setting("result_accept_content", None, _optional(_str_list),
            "Content types accepted for results (default: accept_content)."),
    Setting("result_expires", 86400.0, _optional(_number(float, 0)),
            "Seconds a stored result is kept (None: forever)."),
    Setting("result_extended", False, _bool,
            "Store the task's name, args, kwargs, worker, retries and queue with its result."),
    Setting("result_persistent", False, _bool, "rpc:// results survive a broker restart."),
    # tasks and messages
    Setting("task_serializer", "json", _str, "Serializer for task messages."),
    Setting("accept_content", ["json"], _str_list, "Content types a worker accepts."),
    Setting("task_default_queue", "celery", _str, "Queue for tasks without a route."),
    Setting("task_default_exchange", None, _optional(_str),
            "Exchange for the default queue (default: the queue's name, as Celery)."),
    Setting("task_default_exchange_type", "direct", _choice("direct", "topic", "fanout"),
            "Exchange type of the default exchange."),
    Setting("task_default_routing_key", None, _optional(_str),
            "Routing key for the default queue (default: the queue's name, as Celery)."),
    Setting("task_default_priority", None, _optional(_number(int, 0)), "Default priority."),
    Setting("task_queues", None, _queues,
            "Queues as the broker should declare them (kombu Queues with their arguments, "
            "exchanges and routing keys); a worker without -Q consumes them all."),
    Setting("task_annotations", [], _annotations,
            "Task attributes set by name or for '*' (Celery's form), e.g. rate limits."),
    Setting("task_routes", {}, _dict, "Map of task name to {'queue': ..., 'routing_key': ...}."),
    Setting("task_acks_late", False, _bool,
            "Ack after the task finishes instead of when it starts."),
    Setting("task_reject_on_worker_lost", False, _bool,
            "With acks_late, requeue a task whose child died instead of failing it."),
    Setting("task_max_redeliveries", 3, _number(int, 0),
            "Requeues after a lost child before a poison message is failed."),
    Setting("task_time_limit", None, _optional(_number(float, 0)), "Hard time limit, seconds."),
    Setting("task_soft_time_limit", None, _optional(_number(float, 0)),
            "Soft time limit, seconds."),
    Setting("task_ignore_result", False, _bool, "Do not store task results."),
    Setting("task_store_errors_even_if_ignored", False, _bool,
            "Store failures of tasks that ignore results."),
    Setting("task_track_started", False, _bool, "Store the STARTED state."),
    Setting("task_default_rate_limit", None, _optional(_rate),
            "Rate limit of tasks without their own: '10/s', '100/m', '1000/h' (None: none)."),
    Setting("task_publish_retry", True, _bool, "Retry publishing on connection errors."),
    Setting("task_publish_retry_policy",
            {"max_retries": 3, "interval_start": 0.0, "interval_step": 0.2, "interval_max": 0.2},
            _dict, "kombu retry policy for publishing."),
    Setting("timezone", "UTC", _str, "Time zone for naive eta/expires values."),
    # worker
    Setting("worker_concurrency", None, _optional(_number(int, 1)),
            "Pool size (default: number of CPUs)."),
    Setting("worker_pool", "prefork", _choice("prefork", "solo", "threads"), "Pool kind."),
    Setting("worker_threads", 1, _number(int, 1),
            "Prefork: threads in each child, each running its own task (I/O-bound tasks); "
            "at most 30."),
    Setting("worker_optimization", "fair", _choice("fair", "fast"),
            "fair: jobs go to idle children only; fast: children buffer a few jobs."),
    Setting("worker_fast_queue_depth", 2, _number(int, 1),
            "With -O fast: jobs a child may hold besides the one it runs."),
    Setting("worker_prefetch_multiplier", 4, _number(int, 0),
            "QoS prefetch = concurrency * this (0: unlimited)."),
    Setting("worker_max_tasks_per_child", None, _optional(_number(int, 1)),
            "Recycle a child after this many tasks."),
    Setting("worker_max_memory_per_child", None, _optional(_number(int, 1)),
            "Recycle a child whose resident memory exceeds this many KiB."),
    Setting("worker_soft_shutdown_timeout", 0.0, _number(float, 0),
            "On a cold shutdown, seconds running tasks still get to finish (0: none)."),
    Setting("worker_disable_rate_limits", False, _bool,
            "Ignore every task rate limit on this worker."),
    Setting("worker_hostname", None, _optional(_str), "Node name, name@host."),
    Setting("worker_send_task_events", False, _bool, "Send task events."),
    Setting("task_send_sent_event", False, _bool, "Send task-sent events when publishing."),
    Setting("worker_pool_restarts", False, _bool,
            "Allow the pool_restart remote command (Flower's pool restart button)."),
    Setting("broker_connection_retry_on_startup", True, _bool,
            "Keep trying to reach the broker when the worker starts (False: exit instead)."),
    # modules and tests
    Setting("imports", [], _str_list, "Modules a worker imports at start (before include)."),
    Setting("include", [], _str_list, "More modules a worker imports at start."),
    Setting("task_always_eager", False, _bool,
            "apply_async/delay run the task here and now (apply()) instead of sending it."),
    Setting("task_eager_propagates", False, _bool,
            "With task_always_eager: a failing task raises instead of returning FAILURE."),
)

SETTINGS: Mapping[str, Setting] = types.MappingProxyType({s.name: s for s in _SETTINGS})

# Celery's old upper-case names (Celery < 4, ``celeryconfig.py`` files) of the settings taskq
# has: a config module may still use them, with a DeprecationWarning naming the new name.
OLD_NAMES: Mapping[str, str] = types.MappingProxyType({
    "BROKER_URL": "broker_url", "BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "BROKER_CONNECTION_TIMEOUT": "broker_connection_timeout",
    "BROKER_CONNECTION_RETRY": "broker_connection_retry",
    "BROKER_CONNECTION_MAX_RETRIES": "broker_connection_max_retries",
    "BROKER_CONNECTION_RETRY_ON_STARTUP": "broker_connection_retry_on_startup",
    "BROKER_FAILOVER_STRATEGY": "broker_failover_strategy",
    "BROKER_HEARTBEAT": "broker_heartbeat", "BROKER_POOL_LIMIT": "broker_pool_limit",
    "CELERY_RESULT_BACKEND": "result_backend",
    "CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS": "result_backend_transport_options",
    "CELERY_RESULT_SERIALIZER": "result_serializer",
    "RESULT_ACCEPT_CONTENT": "result_accept_content",
    "CELERY_TASK_RESULT_EXPIRES": "result_expires",
    "CELERY_RESULT_PERSISTENT": "result_persistent",
    "CELERY_RESULT_EXTENDED": "result_extended",
    "CELERY_TASK_SERIALIZER": "task_serializer", "CELERY_ACCEPT_CONTENT": "accept_content",
    "CELERY_DEFAULT_QUEUE": "task_default_queue",
    "CELERY_DEFAULT_EXCHANGE": "task_default_exchange",
    "CELERY_DEFAULT_EXCHANGE_TYPE": "task_default_exchange_type",
    "CELERY_DEFAULT_ROUTING_KEY": "task_default_routing_key",
    "CELERY_DEFAULT_PRIORITY": "task_default_priority", "CELERY_QUEUES": "task_queues",
    "CELERY_ROUTES": "task_routes", "CELERY_ANNOTATIONS": "task_annotations",
    "CELERY_ACKS_LATE": "task_acks_late",
    "CELERY_REJECT_ON_WORKER_LOST": "task_reject_on_worker_lost",
    "CELERYD_TASK_TIME_LIMIT": "task_time_limit",
    "CELERYD_TASK_SOFT_TIME_LIMIT": "task_soft_time_limit",
    "CELERY_IGNORE_RESULT": "task_ignore_result",
    "CELERY_STORE_ERRORS_EVEN_IF_IGNORED": "task_store_errors_even_if_ignored",
    "CELERY_TRACK_STARTED": "task_track_started",
    "CELERY_DEFAULT_RATE_LIMIT": "task_default_rate_limit",
    "CELERY_TASK_PUBLISH_RETRY": "task_publish_retry",
    "CELERY_TASK_PUBLISH_RETRY_POLICY": "task_publish_retry_policy",
    "CELERY_TIMEZONE": "timezone", "CELERYD_CONCURRENCY": "worker_concurrency",
    "CELERYD_POOL": "worker_pool", "CELERYD_PREFETCH_MULTIPLIER": "worker_prefetch_multiplier",
    "CELERYD_MAX_TASKS_PER_CHILD": "worker_max_tasks_per_child",
    "CELERYD_MAX_MEMORY_PER_CHILD": "worker_max_memory_per_child",
    "CELERYD_SOFT_SHUTDOWN_TIMEOUT": "worker_soft_shutdown_timeout",
    "CELERY_DISABLE_RATE_LIMITS": "worker_disable_rate_limits",
    "CELERY_SEND_EVENTS": "worker_send_task_events",
    "CELERY_SEND_TASK_SENT_EVENT": "task_send_sent_event",
    "CELERYD_POOL_RESTARTS": "worker_pool_restarts", "CELERY_IMPORTS": "imports",
    "CELERY_INCLUDE": "include", "CELERY_ALWAYS_EAGER": "task_always_eager",
    "CELERY_EAGER_PROPAGATES_EXCEPTIONS": "task_eager_propagates",
})


def lookup(name: str) -> Setting:
    """The definition of setting ``name``, or a ``ConfigurationError`` with a suggestion."""
    try:
        return SETTINGS[name]
    except KeyError:
        raise ConfigurationError(f"unknown setting {name!r}" + _suggest(name, SETTINGS)) from None


def validate(name: str, value: Any) -> Any:
    """Check and normalise one value for setting ``name``."""
    return lookup(name).convert(name, value)


class Config(Mapping[str, Any]):
    """Resolved settings of one app: defaults < code < environment < command line."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._code: dict[str, Any] = {}
        self._cli: dict[str, Any] = {}
        self._environ = os.environ if environ is None else environ
        self._env_cache: dict[str, Any] | None = None
        self._resolved: dict[str, Any] = {}  # read on the worker's hot path: cleared on writes

    # -- writing ------------------------------------------------------------------------------
    def update(self, settings: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Set code-level values (level 2)."""
        merged = {**(settings or {}), **more}
        checked = {name: validate(name, value) for name, value in merged.items()}
        self._code.update(checked)
        self._resolved.clear()

    def __setattr__(self, name: str, value: Any) -> None:
        """``conf.task_acks_late = True``: a checked code-level write, as ``update``; a
        misspelt name or a bad value raises ``ConfigurationError`` (never a silent new
        attribute that nothing reads)."""
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        self.update({name: value})

    def __setitem__(self, name: str, value: Any) -> None:
        """``conf["task_acks_late"] = True``: the same checked write as an attribute."""
        self.update({name: value})

    def get(self, name: str, default: Any = None) -> Any:
        """The value of setting ``name`` (as ``conf[name]``); a name that is no setting raises
        ``ConfigurationError`` with the closest valid one instead of returning ``default``
        (every setting has a value, so ``default`` is never used)."""
        return self[name]

    def override(self, settings: Mapping[str, Any]) -> None:
        """Set command-line values (level 4), which beat everything else."""
        self._cli.update({name: validate(name, value) for name, value in settings.items()})
        self._resolved.clear()

    def overrides(self) -> dict[str, Any]:
        """A copy of the command-line level settings (to restore them later)."""
        return dict(self._cli)

    def restore_overrides(self, saved: dict[str, Any]) -> None:
        self._cli = dict(saved)
        self._resolved.clear()

    def from_object(self, obj: object | str) -> None:
        """Load the lowercase settings of a module, class or object (or a module path)."""
        if isinstance(obj, str):
            try:
                obj = importlib.import_module(obj)
            except ImportError as exc:
                raise ConfigurationError(
                    f"cannot import config module {obj!r}: {exc}; check the name and that "
                    "its folder is on PYTHONPATH"
                ) from None
        found: dict[str, Any] = {}
        old: dict[str, str] = {}  # new name: the old name it was given as
        for attr in dir(obj):
            if attr.startswith("_"):
                continue
            value = getattr(obj, attr)
            if isinstance(value, types.ModuleType | type | types.FunctionType):
                continue
            if attr in OLD_NAMES:
                old[OLD_NAMES[attr]] = attr
                continue
            if attr.isupper():
                if attr.lower() in SETTINGS:
                    raise ConfigurationError(
                        f"config {_name_of(obj)}: {attr} looks like a setting; taskq settings "
                        f"are lowercase: write {attr.lower()} = ..."
                    )
                continue
            found[attr] = value
        for new, name in old.items():
            if new in found:
                raise ConfigurationError(
                    f"config {_name_of(obj)}: both {name} and {new} are set; keep "
                    f"{new} = ... alone")
            found[new] = getattr(obj, name)
        if old:
            # As Celery: mixing the old and new names is an error, the old ones alone work.
            warnings.warn(
                f"config {_name_of(obj)}: Celery's old setting names are deprecated; "
                "write " + ", ".join(f"{new} instead of {name}"
                                     for new, name in sorted(old.items())),
                DeprecationWarning, stacklevel=3)
        unknown = [name for name in found if name not in SETTINGS]
        if unknown:
            name = unknown[0]
            raise ConfigurationError(
                f"config {_name_of(obj)}: unknown setting {name!r}" + _suggest(name, SETTINGS)
            )
        self.update(found)

    # -- reading ------------------------------------------------------------------------------
    @property
    def environ(self) -> Mapping[str, str]:
        """The environment these settings read (``os.environ`` unless one was given)."""
        return self._environ

    def _env(self) -> dict[str, Any]:
        if self._env_cache is None:
            values: dict[str, Any] = {}
            for var, raw in self._environ.items():
                if not var.startswith(ENV_PREFIX) or var in _ENV_NOT_SETTINGS:
                    continue
                if var.startswith(_ENV_FOREIGN_PREFIXES):
                    continue
                name = var[len(ENV_PREFIX):].lower()
                if name not in SETTINGS:
                    env_names = [ENV_PREFIX + s.upper() for s in SETTINGS]
                    raise ConfigurationError(
                        f"environment variable {var} names no taskq setting"
                        + _suggest(var, env_names)
                    )
                try:
                    values[name] = validate(name, raw)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"environment variable {var}: {exc}") from None
            self._env_cache = values
        return self._env_cache

    def source(self, name: str) -> str:
        """Where the value of ``name`` comes from: cli, env, code or default."""
        lookup(name)
        if name in self._cli:
            return "cli"
        if name in self._env():
            return "env"
        return "code" if name in self._code else "default"

    def __getitem__(self, name: str) -> Any:
        try:
            return self._resolved[name]
        except KeyError:
            pass
        setting = lookup(name)
        for layer in (self._cli, self._env(), self._code):
            if name in layer:
                value = self._resolved[name] = layer[name]
                return value
        default = setting.default
        if isinstance(default, dict | list):
            return type(default)(default)  # a fresh copy each time: callers may change it
        self._resolved[name] = default
        return default

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in SETTINGS:
            raise AttributeError(f"unknown setting {name!r}" + _suggest(name, SETTINGS))
        return self[name]  # a bad environment value raises ConfigurationError, not this

    def __iter__(self) -> Iterator[str]:
        return iter(SETTINGS)

    def __len__(self) -> int:
        return len(SETTINGS)

    def changes(self) -> dict[str, Any]:
        """Settings whose value is not the default."""
        return {name: self[name] for name in SETTINGS if self.source(name) != "default"}


def _name_of(obj: object) -> str:
    return getattr(obj, "__name__", type(obj).__name__)
