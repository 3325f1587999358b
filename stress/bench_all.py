"""``taskq-stress bench all``: every figure of the README's performance table in one run,
taskq beside the workers it is compared with, rounds alternating.

Each row is measured by the benchmark that owns it (``bench_drain``, ``bench_startup``,
``bench_publish``, ``bench_memory``); this module only lists the rows, runs them round by
round (every row for every kind in round 1, then round 2, ...; the kind that goes first
alternates from round to round, so a slow spell of a shared machine falls on all of them)
and summarises each row by its median and range, with the load average read after every
measurement. A measurement that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stress.bench_common import spread

KINDS = ("taskq", "celery", "dramatiq")


@dataclass(frozen=True)
class Sizes:
    """How big each row's measurement is (the defaults take ~2 minutes a round here)."""

    drain_tasks: int = 5000  # noop drains, on Redis and on RabbitMQ
    redis_tasks: int = 3000  # the task doing 3 Redis calls
    recycle_tasks: int = 1000  # -c 1 --max-tasks-per-child 1 ...
    recycle_budget: float = 8.0  # ... stops after this many seconds (a fork per task)
    startup_tasks: int = 100  # queued before the worker starts
    publish_count: int = 2000  # send_task calls timed (and tasks sent in groups)
    group_size: int = 100  # tasks per group (publishing in bulk)
    settle: float = 1.0  # idle seconds before reading the PSS


@dataclass(frozen=True)
class Row:
    key: str
    figure: str  # as issue 17's table names it
    unit: str
    target: str
    higher_is_better: bool
    measure: Callable[[str], float]  # kind -> the figure
    kinds: tuple[str, ...] = ("taskq", "celery")  # the kinds it has a measurement for
    warmup: Callable[[str], object] | None = None  # kind -> an untimed run before round 1
    digits: int = 0


@dataclass(frozen=True)
class Sample:
    row: str
    kind: str
    round: int
    value: float | None  # None: the measurement failed
    load: tuple[float, float, float]  # os.getloadavg() right after it
    seconds: float  # how long the measurement took, set-up included
    error: str = ""


@dataclass
class Result:
    rows: list[Row]
    kinds: list[str]
    rounds: int
    samples: list[Sample] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    started: str = ""
    finished: str = ""


def make_rows(redis_url: str, amqp_url: str, sizes: Sizes, scratch: Path) -> list[Row]:
    """Issue 17's rows, in its order."""
    from stress.bench_drain import drain_once
    from stress.bench_memory import idle_once
    from stress.bench_publish import publish_once
    from stress.bench_startup import Variant, start_once

    def drain(url: str, tasks: int, **kw: Any) -> Callable[[str], float]:
        return lambda kind: drain_once(kind, url, tasks, **kw).rate

    def main_cpu(url: str) -> Callable[[str], float]:
        return lambda kind: drain_once(kind, url, sizes.drain_tasks).main_cpu_us

    def start(kind: str) -> float:
        return start_once(Variant(kind, mingle=True), redis_url, sizes.startup_tasks,
                          scratch=scratch).seconds * 1000

    return [
        Row("drain_redis", "noop drain, Redis, -c 2", "tasks/s", ">= 3,000/s", True,
            drain(redis_url, sizes.drain_tasks)),
        Row("drain_amqp", "noop drain, RabbitMQ, -c 2", "tasks/s", ">= 3,000/s", True,
            drain(amqp_url, sizes.drain_tasks)),
        Row("cpu_redis", "main process CPU per task, noop drain, Redis", "µs", "< 150 µs",
            False, main_cpu(redis_url)),
        Row("cpu_amqp", "main process CPU per task, noop drain, RabbitMQ", "µs", "< 150 µs",
            False, main_cpu(amqp_url)),
        Row("redis3", "task doing 3 Redis calls, prefork -c 2", "tasks/s", ">= 2,800/s", True,
            drain(redis_url, sizes.redis_tasks, task="bench.redis3")),
        Row("redis3_threads", "task doing 3 Redis calls, prefork -c 2 --threads 8", "tasks/s",
            ">= 2,800/s", True, drain(redis_url, sizes.redis_tasks, task="bench.redis3",
                                      worker_args=("--threads", "8")), kinds=("taskq",)),
        Row("startup", "worker start -> first task, mingle on (queue pre-filled)", "ms",
            "<= 300 ms", False, start, warmup=start),
        Row("recycle", "-c 1 --max-tasks-per-child 1", "tasks/s", ">= 150/s", True,
            drain(redis_url, sizes.recycle_tasks, concurrency=1, budget=sizes.recycle_budget,
                  worker_args=("--max-tasks-per-child", "1"))),
        Row("pss", "PSS, main + 2 children, idle", "MiB", "<= 40 MiB", False,
            lambda kind: idle_once(kind, redis_url, 2, sizes.settle).total_mib, digits=1),
        Row("publish", "client publish one by one (send_task, Redis, results on)", "sends/s",
            ">= 1,500/s", True, lambda kind: publish_once(kind, redis_url,
                                                          sizes.publish_count).rate),
        Row("publish_group", f"client publish in groups of {sizes.group_size} (Redis, "
            "results on)", "tasks/s", "-", True,
            lambda kind: publish_once(kind, redis_url, sizes.publish_count,
                                      group_size=sizes.group_size).rate),
    ]


ROW_KEYS = ("drain_redis", "drain_amqp", "cpu_redis", "cpu_amqp", "redis3", "redis3_threads",
            "startup", "recycle", "pss", "publish", "publish_group")


def installed(kind: str) -> bool:
    import importlib.util

    return kind == "taskq" or importlib.util.find_spec(kind) is not None


def run(rows: list[Row], kinds: list[str], rounds: int,
        on_sample: Callable[[Sample], None] = lambda s: None) -> Result:
    result = Result(rows, kinds, rounds, started=_now())
    for kind in kinds:
        if not installed(kind):
            result.skipped[kind] = "not installed"
    active = [k for k in kinds if k not in result.skipped]
    for row in rows:
        for kind in active:
            if kind not in row.kinds:
                result.skipped.setdefault(f"{kind}:{row.key}", "no measurement for this row")
    for n in range(rounds):
        order = active if n % 2 == 0 else active[::-1]
        for row in rows:
            for kind in (k for k in order if k in row.kinds):
                if n == 0 and row.warmup is not None:
                    _attempt(row.warmup, kind)
                began = time.monotonic()
                value, error = _attempt(row.measure, kind)
                one, five, fifteen = os.getloadavg()
                sample = Sample(row.key, kind, n + 1, value,
                                (round(one, 2), round(five, 2), round(fifteen, 2)),
                                round(time.monotonic() - began, 2), error)
                result.samples.append(sample)
                on_sample(sample)
    result.finished = _now()
    return result


def _attempt(measure: Callable[[str], Any], kind: str) -> tuple[float | None, str]:
    try:
        return float(measure(kind)), ""
    except Exception as exc:  # a benchmark failing is a figure missing, not a crash
        return None, f"{type(exc).__name__}: {exc}"[:2000]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# -- the summary ------------------------------------------------------------------------------

def summary(result: Result) -> dict[str, Any]:
    """The JSON document: per row, per kind, the median, range and values, and the range of
    the 1-minute load average over its measurements."""
    rows = []
    for row in result.rows:
        out: dict[str, Any] = {"key": row.key, "figure": row.figure, "unit": row.unit,
                               "target": row.target, "higher_is_better": row.higher_is_better}
        for kind in result.kinds:
            samples = [s for s in result.samples if s.row == row.key and s.kind == kind]
            if not samples:
                continue
            values = [s.value for s in samples if s.value is not None]
            loads = [s.load[0] for s in samples]
            entry: dict[str, Any] = spread(values, row.digits) if values else {"runs": 0}
            entry["load_1m"] = {"min": min(loads), "max": max(loads)}
            errors = [s.error for s in samples if s.error]
            if errors:
                entry["errors"] = errors
            out[kind] = entry
        if out.get("taskq", {}).get("runs") and out.get("celery", {}).get("runs"):
            out["ratio_taskq_over_celery"] = round(
                out["taskq"]["median"] / max(out["celery"]["median"], 1e-9), 2)
        rows.append(out)
    return {"rounds": result.rounds, "kinds": result.kinds, "skipped": result.skipped,
            "started": result.started, "finished": result.finished,
            "load_average_end": [round(v, 2) for v in os.getloadavg()],
            "rows": rows, "samples": [asdict(s) for s in result.samples]}


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def table(doc: dict[str, Any]) -> str:
    """A plain-text table of ``summary``'s rows: median (min-max) per kind, the target, and
    the 1-minute load average over the row's measurements."""
    kinds = [k for k in doc["kinds"] if k not in doc["skipped"]]
    header = ["figure", "unit", *kinds, "target", "load 1m"]
    lines = [header]
    for row in doc["rows"]:
        digits = 1 if row["unit"] == "MiB" else 0
        cells = [row["figure"], row["unit"]]
        loads: list[float] = []
        for kind in kinds:
            entry = row.get(kind)
            if entry is None:
                cells.append("-")
                continue
            loads += [entry["load_1m"]["min"], entry["load_1m"]["max"]]
            if not entry["runs"]:
                cells.append("failed")
                continue
            cells.append(f"{_fmt(entry['median'], digits)} ({_fmt(entry['min'], digits)}-"
                         f"{_fmt(entry['max'], digits)})"
                         + ("" if entry["runs"] == doc["rounds"] else f" [{entry['runs']} ok]"))
        cells.append(row["target"])
        cells.append(f"{min(loads):.2f}-{max(loads):.2f}" if loads else "-")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"median (min-max) of {doc['rounds']} rounds; load 1m: the 1-minute load average "
             "after each measurement (min-max)"]
    notes += [f"{what}: {why}" for what, why in doc["skipped"].items()]
    return "\n".join([*text, "", *notes])


def select(rows: Iterable[Row], keys: Iterable[str]) -> list[Row]:
    wanted = set(keys)
    return [row for row in rows if not wanted or row.key in wanted]


__all__ = ["KINDS", "ROW_KEYS", "Result", "Row", "Sample", "Sizes", "make_rows", "run",
           "select", "summary", "table"]
