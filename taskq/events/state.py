"""An in-memory picture of the cluster built from events: workers and tasks.

A worker is alive while its heartbeats keep coming, judged by when they were *received*
(``local_received``), so a sender with a wrong clock is still judged right; a sender whose
clock is off by more than 15 s is warned about once. Unknown event types are counted and
otherwise ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("taskq.events.state")

HEARTBEAT_EXPIRE_WINDOW = 2.0  # offline after this many missed heartbeat intervals
DRIFT_WARNING = 15.0


@dataclass
class WorkerInfo:
    hostname: str
    freq: float = 2.0
    last_heartbeat: float | None = None  # local receive time
    pid: int | None = None
    active: int = 0
    processed: int = 0
    offline: bool = False
    clock: int = 0
    drift_warned: bool = False

    def alive(self, now: float) -> bool:
        if self.offline or self.last_heartbeat is None:
            return False
        return now < self.last_heartbeat + self.freq * HEARTBEAT_EXPIRE_WINDOW


@dataclass
class TaskInfo:
    uuid: str
    name: str | None = None
    state: str = "PENDING"
    hostname: str | None = None
    pid: int | None = None
    args: Any = None
    kwargs: Any = None
    result: Any = None
    exception: Any = None
    runtime: float | None = None
    clock: int = 0
    history: list[str] = field(default_factory=list)


_TASK_STATES = {
    "task-sent": "PENDING", "task-received": "RECEIVED", "task-started": "STARTED",
    "task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-retried": "RETRY",
    "task-revoked": "REVOKED", "task-rejected": "REJECTED",
}


class State:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.workers: dict[str, WorkerInfo] = {}
        self.tasks: dict[str, TaskInfo] = {}
        self.event_count = 0
        self.unknown_events = 0

    def event(self, event: dict[str, Any]) -> None:
        self.event_count += 1
        kind = str(event.get("type", ""))
        if kind.startswith("worker-"):
            self._worker_event(kind, event)
        elif kind in _TASK_STATES:
            self._task_event(kind, event)
        else:
            self.unknown_events += 1

    def _worker_event(self, kind: str, event: dict[str, Any]) -> None:
        hostname = str(event.get("hostname"))
        worker = self.workers.setdefault(hostname, WorkerInfo(hostname))
        received = float(event.get("local_received") or self.clock())
        worker.clock = max(worker.clock, int(event.get("clock") or 0))
        worker.pid = event.get("pid", worker.pid)
        sent = event.get("timestamp")
        if isinstance(sent, int | float):
            drift = received - float(sent)
            if abs(drift) > DRIFT_WARNING and not worker.drift_warned:
                logger.warning("worker %s: its clock is off by %.0f s from ours; check NTP",
                               hostname, drift)
                worker.drift_warned = True
        if kind == "worker-offline":
            worker.offline = True
            return
        worker.offline = False
        worker.freq = float(event.get("freq") or worker.freq)
        worker.last_heartbeat = received
        worker.active = int(event.get("active") or 0)
        worker.processed = int(event.get("processed") or worker.processed)

    def _task_event(self, kind: str, event: dict[str, Any]) -> None:
        task_id = str(event.get("uuid"))
        task = self.tasks.setdefault(task_id, TaskInfo(task_id))
        clock = int(event.get("clock") or 0)
        task.history.append(kind)
        for key in ("name", "args", "kwargs", "result", "exception", "runtime", "pid"):
            if event.get(key) is not None:
                setattr(task, key, event[key])
        if event.get("hostname"):
            task.hostname = event["hostname"]
        if clock >= task.clock:  # later logical time wins over arrival order
            task.clock = clock
            task.state = _TASK_STATES[kind]

    def alive_workers(self) -> list[WorkerInfo]:
        now = self.clock()
        return [w for w in self.workers.values() if w.alive(now)]
