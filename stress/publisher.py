"""The workload publisher: a client app that sends the suite's mix at its rate.

It talks to the broker directly (never through the fault proxy: the worker is under test, not
the publisher) and writes ``published`` to the ledger only after the publish returned, that
is after the broker confirmed it (RabbitMQ publisher confirms; Redis and SQLite commit
before they answer). A publish that fails is retried with backoff and counted, never
recorded as published. A suite with ``[workload.canvas]`` publishes canvases
(:mod:`stress.canvas`): the tasks the client itself sends get ``published`` entries, and the
whole canvas one ``canvas`` entry, once the broker has all of them.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stress.canvas import CanvasMix
from stress.errors import ScenarioError
from stress.ledger import LedgerWriter
from stress.spaces import Space
from stress.suites import Suite
from stress.workload import EXPECTED, Mix, task_name
from taskq import TaskQ

__all__ = ["AppTasks", "Publisher"]


def _examples(expression: str, count: int) -> list[Any]:
    """``count`` examples of a hypothesis strategy, the same ones every run (derandomized)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    try:
        strategy = eval(expression, {"st": st})  # a suite author's own expression
    except Exception as exc:
        raise ScenarioError(f"workload strategy {expression!r}: {exc}") from None
    found: list[Any] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found or [[]]


class AppTasks:
    """An app team's own tasks (``[[workload.tasks]]``): name, args or strategy, weight."""

    def __init__(self, tasks: list[dict[str, Any]], seed: int) -> None:
        self.rng = random.Random(seed)
        self.tasks = []
        for task in tasks:
            if "name" not in task:
                raise ScenarioError("each [[workload.tasks]] needs a name")
            if "strategy" in task:
                samples = _examples(str(task["strategy"]), int(task.get("examples", 50)))
            else:
                samples = list(task.get("args", [[]]))
            samples = [s if isinstance(s, list | tuple) else [s] for s in samples]
            self.tasks.append((task["name"], samples, str(task.get("expect", "any"))))
        self.weights = [float(t.get("weight", 1.0)) for t in tasks]

    def draw(self) -> tuple[str, tuple[Any, ...], str]:
        name, samples, expect = self.rng.choices(self.tasks, self.weights)[0]
        return name, tuple(self.rng.choice(samples)), expect


class Publisher:
    def __init__(self, space: Space, suite: Suite, ledger_dir: Path, *, seed: int, rate: float,
                 duration: float) -> None:
        self.app = TaskQ("stress-publisher", environ={**space.env(),
                                                      "TASKQ_BROKER_CONFIRM_PUBLISH": "true"})
        self.ledger = LedgerWriter(ledger_dir, "publisher")
        self.own: AppTasks | None = AppTasks(suite.app_tasks, seed) if suite.app_tasks else None
        self.mix = None if self.own else Mix(suite.workload or {"noop": 1}, seed,
                                             suite.workload_params)
        self.canvases = (CanvasMix(suite.canvas, self.mix, self.app, seed,
                                   suite.workload_params)
                         if suite.canvas and self.mix is not None else None)
        self.rate = rate
        self.duration = duration
        self.published = 0
        self.errors = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _send(self, name: str, args: tuple[Any, ...], *, kind: str, expect: str,
              task_id: str | None = None, options: Mapping[str, Any] | None = None) -> str:
        """Publish, then (the broker has it) write ``published`` to the ledger."""
        task_id = task_id or str(uuid.uuid4())
        self.app.send_task(name, args, task_id=task_id, **dict(options or {}))
        extra = {"countdown": options["countdown"]} if options and "countdown" in options else {}
        self.ledger.write("published", task_id, kind=kind, expect=expect, **extra)
        self.published += 1
        return task_id

    def publish_one(self, kind: str, task_id: str | None = None) -> str:
        return self._send(task_name(kind), (), kind=kind, expect=EXPECTED[kind],
                          task_id=task_id)

    def _publish_canvas(self, mix: CanvasMix) -> None:
        canvas = mix.draw()
        canvas.signature.apply_async()
        self.ledger.write("canvas", canvas.id, shape=canvas.shape,
                          nodes=[node.record() for node in canvas.nodes])
        for node in canvas.nodes:
            if node.client:
                self.ledger.write("published", node.id, kind=node.kind, expect=node.expect)
                self.published += 1

    def _publish_next(self) -> None:
        if self.canvases is not None:
            self._publish_canvas(self.canvases)
        elif self.own is not None:
            name, args, expect = self.own.draw()
            self._send(name, args, kind=name, expect=expect)
        else:
            assert self.mix is not None
            spec = self.mix.draw()
            self._send(task_name(spec.kind), spec.args, kind=spec.kind,
                       expect=EXPECTED[spec.kind], options=spec.options)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stress-publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = time.monotonic()
        n = 0
        backoff = 0.05
        while not self._stop.is_set():
            now = time.monotonic()
            if now - start >= self.duration:
                break
            due = start + n / self.rate if self.rate > 0 else now
            if due > now:
                self._stop.wait(min(due - now, 0.5))
                continue
            try:
                self._publish_next()
            except Exception as exc:  # a broker error of any kind: count it, retry
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            n += 1

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(Exception):
            self.app.close()
        self.ledger.close()
