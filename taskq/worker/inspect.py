"""Remote-control and inspect commands, in Celery's reply formats.

Each handler takes the worker and the command's arguments and returns a JSON-safe reply.
They run in the loop thread: nothing here blocks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import resource
import signal as signals
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskq import __version__
from taskq.config import SETTINGS
from taskq.pool import pool_label
from taskq.worker.cluster import merge_revoked

if TYPE_CHECKING:
    from taskq.pool.base import Job
    from taskq.worker.request import Request
    from taskq.worker.worker import Worker

Handler = Callable[..., Any]
HANDLERS: dict[str, Handler] = {}


def handler(fn: Handler) -> Handler:
    HANDLERS[fn.__name__] = fn
    return fn


def _signum(name: Any) -> int:
    if isinstance(name, int):
        return name
    text = str(name or "SIGTERM").upper()
    if not text.startswith("SIG"):
        text = "SIG" + text
    return int(getattr(signals, text, signals.SIGTERM))


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return repr(value)


def request_info(request: Request, worker: Worker, job: Job | None = None) -> dict[str, Any]:
    """A request as Celery's ``Request.info()`` shows it (``hostname`` is this worker's node
    name; ``priority`` comes from the message's properties)."""
    info = request.delivery_info
    properties = getattr(request.message, "properties", None) or {}
    time_start = None
    if job is not None and job.started_at is not None:
        time_start = time.time() - (worker.clock() - job.started_at)  # wall time, as Celery
    return {
        "id": request.id,
        "name": request.name,
        "args": _json_safe(list(request.msg.args)),
        "kwargs": _json_safe(dict(request.msg.kwargs)),
        "type": request.name,
        "hostname": worker.hostname,
        "time_start": time_start,
        "acknowledged": request.acknowledged,
        "delivery_info": {
            "exchange": info.get("exchange"),
            "routing_key": info.get("routing_key"),
            "priority": properties.get("priority", info.get("priority")),
            "redelivered": info.get("redelivered", False),
        },
        "worker_pid": job.pid if job is not None else None,
    }


# -- control ----------------------------------------------------------------------------------

@handler
def ping(worker: Worker, **_: Any) -> dict[str, Any]:
    return {"ok": "pong"}


@handler
def revoke(worker: Worker, task_id: str | list[str], terminate: bool = False,
           signal: Any = None, **_: Any) -> dict[str, Any]:
    ids = [task_id] if isinstance(task_id, str) else [str(t) for t in task_id]
    worker.revoke(ids, terminate=terminate, signum=_signum(signal))
    action = "terminated and revoked" if terminate else "flagged as revoked"
    return {"ok": f"tasks {', '.join(ids)} {action}"}


@handler
def revoke_by_stamped_headers(worker: Worker, headers: Any, terminate: bool = False,
                              signal: Any = None, **_: Any) -> dict[str, Any]:
    """Celery's command and replies: revoke the tasks stamped with these values (a mapping
    of stamp name to values, or Celery's ``["name=value", ...]``)."""
    if isinstance(headers, list):
        headers = dict(str(h).split("=", 1) for h in headers if "=" in str(h))
    if not isinstance(headers, dict):
        return {"error": f"headers must be a mapping of stamp to values, got {headers!r}"}
    found = worker.revoke_stamped(headers, terminate=bool(terminate), signum=_signum(signal))
    if not terminate:
        return {"ok": f"headers {headers} flagged as revoked, but not terminated"}
    if not found:
        return {"ok": f"headers {headers} were not terminated"}
    return {"ok": f"headers {headers} revoked"}


@handler
def terminate(worker: Worker, signal: Any, task_id: str | list[str], **_: Any
              ) -> dict[str, Any]:
    """Celery's ``control terminate SIGNAL ID``: revoke and signal the running task."""
    return revoke(worker, task_id, terminate=True, signal=signal)


@handler
def shutdown(worker: Worker, **_: Any) -> dict[str, Any]:
    worker.loop.call_soon(worker.request_stop, True)
    return {"ok": "shutting down"}


@handler
def enable_events(worker: Worker, **_: Any) -> dict[str, Any]:
    worker.task_events = True
    return {"ok": "task events enabled"}


@handler
def disable_events(worker: Worker, **_: Any) -> dict[str, Any]:
    worker.task_events = False
    return {"ok": "task events disabled"}


def _pool_call(worker: Worker, command: str, supported: bool, fn: Callable[..., None],
               *args: Any) -> dict[str, Any]:
    """Run a pool feature the pool declares (``supported``: its ``supports_*`` flag)."""
    if not supported:
        label = pool_label(worker.pool_kind, worker.pool)
        return {"error": f"the {label} pool does not support {command}"}
    fn(*args)
    return {"ok": f"{command}{args!r} done; pool size is {worker.pool_size()}"}


@handler
def pool_grow(worker: Worker, n: int = 1, **_: Any) -> dict[str, Any]:
    pool = worker.pool
    return _pool_call(worker, "pool_grow", pool.supports_resize, pool.grow, int(n))


@handler
def pool_shrink(worker: Worker, n: int = 1, **_: Any) -> dict[str, Any]:
    pool = worker.pool
    return _pool_call(worker, "pool_shrink", pool.supports_resize, pool.shrink, int(n))


@handler
def pool_restart(worker: Worker, modules: list[str] | None = None, reload: bool = False,
                 **_: Any) -> dict[str, Any]:
    if not worker.app.conf.worker_pool_restarts:  # as Celery: off unless the setting is on
        return {"error": "Pool restarts not enabled: set worker_pool_restarts "
                         "(TASKQ_WORKER_POOL_RESTARTS=1)"}
    pool = worker.pool
    return _pool_call(worker, "pool_restart", pool.supports_restart, pool.restart,
                      modules or [], bool(reload))


@handler
def autoscale(worker: Worker, max: int, min: int, **_: Any) -> dict[str, Any]:
    pool = worker.pool
    return _pool_call(worker, "autoscale", pool.supports_autoscale, pool.autoscale,
                      int(max), int(min))


@handler
def add_consumer(worker: Worker, queue: str, **_: Any) -> dict[str, Any]:
    worker.consumer.add_queue(queue)
    return {"ok": f"add consumer {queue}"}


@handler
def cancel_consumer(worker: Worker, queue: str, **_: Any) -> dict[str, Any]:
    worker.consumer.cancel_queue(queue)
    return {"ok": f"no longer consuming from {queue}"}


@handler
def time_limit(worker: Worker, task_name: str, soft: float | None = None,
               hard: float | None = None, **_: Any) -> dict[str, Any]:
    task = worker.app.tasks.get(task_name)
    if task is None:
        return {"error": f"unknown task {task_name!r}"}
    task._soft_time_limit, task._time_limit = soft, hard
    return {"ok": f"time limits set for {task_name}: soft={soft} hard={hard}"}


@handler
def rate_limit(worker: Worker, task_name: str, rate_limit: Any = None, **_: Any
               ) -> dict[str, Any]:
    """Celery's command and replies (Flower's rate-limit button sends it)."""
    task = worker.app.tasks.get(task_name)
    if task is None:
        return {"error": f"unknown task {task_name!r}"}
    try:
        task.rate_limit = rate_limit or None
    except ValueError as exc:
        return {"error": f"Invalid rate limit string: {exc}"}
    if worker.rate_limits.disabled:
        return {"ok": "rate limit set, but rate limits are disabled on this worker "
                      "(worker_disable_rate_limits)"}
    if not rate_limit:
        return {"ok": "rate limit disabled successfully"}
    return {"ok": "new rate limit set successfully"}


# -- inspect ----------------------------------------------------------------------------------

@handler
def active(worker: Worker, **_: Any) -> list[dict[str, Any]]:
    return [request_info(req, worker, job) for job, req in worker.dispatched.items()
            if job.started_at is not None]


@handler
def reserved(worker: Worker, **_: Any) -> list[dict[str, Any]]:
    waiting = [request_info(req, worker) for req in (*worker.acking, *worker.ready)]
    waiting += [request_info(req, worker, job) for job, req in worker.dispatched.items()
                if job.started_at is None]
    return waiting


@handler
def scheduled(worker: Worker, **_: Any) -> list[dict[str, Any]]:
    """Requests held for their eta, in Celery's shape: ``priority`` is the priority of
    Celery's timer entry (6 for every eta), not the message's (that is in ``request``)."""
    out = []
    for req in worker.held:
        eta = req.msg.eta
        out.append({"eta": eta.isoformat() if isinstance(eta, dt.datetime) else None,
                    "priority": ETA_TIMER_PRIORITY,
                    "request": request_info(req, worker)})
    return out


ETA_TIMER_PRIORITY = 6  # Celery's worker schedules eta tasks on its timer with priority 6


@handler
def revoked(worker: Worker, **_: Any) -> list[str]:
    return list(worker.revoked.as_dict())


@handler
def registered(worker: Worker, taskinfoitems: Any = None, builtins: bool = False,
               **_: Any) -> list[str]:
    """The worker's task names; the built-in ``celery.*`` ones only with ``builtins``, as
    Celery answers."""
    from taskq.builtin_tasks import own_tasks

    names = sorted(worker.app.tasks) if builtins else own_tasks(worker.app)
    items = [item for item in (taskinfoitems or DEFAULT_TASK_INFO_ITEMS)
             if isinstance(item, str) and not item.startswith("_")]
    return [_task_info(worker.app.tasks[name], items) for name in names]


DEFAULT_TASK_INFO_ITEMS = ("exchange", "routing_key", "rate_limit")  # Celery's


def _task_info(task: Any, items: list[str]) -> str:
    """``name [item=value ...]`` for the items the task has, as Celery answers ``registered``."""
    fields = [f"{item}={getattr(task, item)}" for item in items
              if getattr(task, item, None) is not None]
    return f"{task.name} [{' '.join(fields)}]" if fields else str(task.name)


@handler
def clock(worker: Worker, **_: Any) -> dict[str, Any]:
    return {"clock": worker.app.clock.forward()}


@handler
def conf(worker: Worker, with_defaults: bool = False, **_: Any) -> dict[str, Any]:
    names = SETTINGS if with_defaults else worker.app.conf.changes()
    out: dict[str, Any] = {}
    for name in names:
        value = worker.app.conf[name]
        if "url" in name or name == "result_backend":
            from taskq.urls import safe_url

            value = safe_url(value) if isinstance(value, str) else value
        out[name] = _json_safe(value)
    for hook in worker.app.hooks.inspect_conf:
        out.update(_json_safe(dict(hook(bool(with_defaults)))))
    return out


@handler
def active_queues(worker: Worker, **_: Any) -> list[dict[str, Any]]:
    # Celery's shape (kombu's Queue.as_dict): Flower reads exclusive, alias, no_ack, ...
    return [_json_safe(q.as_dict(recurse=True)) for q in worker.consumer.queues]


@handler
def query_task(worker: Worker, ids: list[str] | str | None = None, **_: Any
               ) -> dict[str, Any]:
    wanted = {ids} if isinstance(ids, str) else set(ids or ())
    out: dict[str, Any] = {}
    for job, req in worker.dispatched.items():
        if req.id in wanted:
            state = "active" if job.started_at is not None else "reserved"
            out[req.id] = [state, request_info(req, worker, job)]
    for req in (*worker.acking, *worker.ready):
        if req.id in wanted:
            out[req.id] = ["reserved", request_info(req, worker)]
    for req in worker.held:
        if req.id in wanted:
            out[req.id] = ["scheduled", request_info(req, worker)]
    return out


@handler
def stats(worker: Worker, **_: Any) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "pid": os.getpid(),
        "hostname": worker.hostname,
        "clock": worker.app.clock.value,
        "uptime": round(worker.clock() - worker.started_at, 3),
        "total": dict(worker.completed_by_name),
        "totals": dict(worker.totals),
        "pool": _pool_stats(worker),
        "prefetch_count": worker.consumer.qos.value if worker.consumer.qos else None,
        "broker": _broker_stats(worker),
        "loop_lag": {"last": worker.loop.last_lag, "max": worker.loop.max_lag},
        "rusage": {"maxrss": usage.ru_maxrss, "utime": usage.ru_utime,
                   "stime": usage.ru_stime},
        "sw_ident": "py-taskq", "sw_ver": __version__,
    }


def _pool_stats(worker: Worker) -> dict[str, Any]:
    """Celery's pool fields (Flower and ``celery inspect stats`` read them), then taskq's."""
    conf = worker.app.conf
    return {
        "implementation": worker.pool_kind,
        "max-concurrency": worker.pool_size(),
        "processes": worker.pool.pids(),
        "max-tasks-per-child": (worker.pool.max_tasks or conf.worker_max_tasks_per_child
                                or "N/A"),
        "put-guarded-by-semaphore": False,  # no semaphore anywhere (docs/design.md)
        "timeouts": [conf.task_soft_time_limit or 0, conf.task_time_limit or 0],
        "writes": "N/A",
        "optimization": conf.worker_optimization,
        **{k: _json_safe(v) for k, v in worker.pool.info().items()},
    }


def _broker_stats(worker: Worker) -> dict[str, Any]:
    """Celery's ``broker`` fields (kombu's ``Connection.info()``, password left out)."""
    out: dict[str, Any] = {"connected": worker.consumer.connected,
                           "transport": worker.consumer.transport_name()}
    conn = worker.consumer.connection
    if conn is not None:
        with contextlib.suppress(Exception):
            info = dict(conn.info())
            info.pop("password", None)
            out = {**_json_safe(info), **out}
    return out


@handler
def report(worker: Worker, **_: Any) -> dict[str, Any]:
    lines = [f"taskq {__version__} on {worker.hostname}",
             f"pool: {worker.pool_kind} x {worker.pool_size()}",
             f"active: {len(active(worker))} reserved: {len(reserved(worker))} "
             f"scheduled: {len(worker.held)}"]
    lines += [hook() for hook in worker.app.hooks.inspect_report]
    return {"ok": "\n".join(lines)}


@handler
def hello(worker: Worker, from_node: str | None = None, revoked: Any = None, **_: Any
          ) -> dict[str, Any]:
    """Mingle: a starting neighbour asks for our revoked ids and clock."""
    if from_node == worker.hostname:
        return {}
    merge_revoked(worker.revoked, revoked)
    return {"revoked": worker.revoked.as_dict(), "clock": worker.app.clock.forward()}


@handler
def heartbeat(worker: Worker, **_: Any) -> dict[str, Any]:
    worker.send_heartbeat()
    return {"ok": "heartbeat sent"}
