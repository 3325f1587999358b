"""Running a suite over its cells, with a progress bar per cell and the reports at the end."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import math
import random
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chaos.errors import ChaosError
from chaos.schedule import parse_schedule
from stress.cell import CellResult, CellRun
from stress.errors import StressError
from stress.report import replay_command, summary_table, write_json, write_junit
from stress.suites import Cell, Suite

__all__ = ["RunOptions", "cell_seed", "run_suite"]


def cell_seed(seed: int, cell: Cell) -> int:
    """Each cell's own seed: replaying one cell alone gives it the same faults and mix."""
    return zlib.crc32(f"{seed}:{cell.id}".encode())


@dataclass
class RunOptions:
    seed: int | None = None
    duration: float | None = None
    max_time: float | None = None
    broker_url: str | None = None
    app: str | None = None
    worker_cmd: str | None = None
    workload_file: Path | None = None
    report_dir: Path | None = None
    json_path: Path | None = None
    junit_path: Path | None = None
    cell_seeds: dict[str, int] = field(default_factory=dict)  # replay: the recorded seeds


class _PlainProgress:
    """Progress for a log file or a CI log (stderr is not a terminal): one line when a cell
    starts and ends, and one every ``every`` seconds inside a long cell."""

    def __init__(self, console: Console, every: float = 10.0) -> None:
        self.console = console
        self.every = every
        self._label = ""
        self._last = 0.0

    def start(self, label: str) -> None:
        self._label = label
        self._last = time.monotonic()
        self.console.print(f"{label}: started", highlight=False)

    def update(self, done: int, total: int, phase: str) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.console.print(f"{self._label}: {phase} {done}/{max(total, done)}",
                               highlight=False)

    def end(self, mark: str, seconds: float) -> None:
        self.console.print(f"{self._label}: {mark} in {seconds:.0f}s", highlight=False)


def _update_bar(bar: Progress, task: Any, done: int, total: int, phase: str) -> None:
    bar.update(task, completed=done, total=max(total, 1), phase=phase)


def _progress_bar(console: Console) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[phase]}"), TimeElapsedColumn())
    return Progress(*columns, console=console, transient=False)


def run_suite(suite: Suite, cells: Sequence[Cell], options: RunOptions,
              console: Console | None = None, out: Console | None = None
              ) -> tuple[int, list[CellResult]]:
    """Run every cell; exit code 0 (all passed), 1 (an oracle failed), 2 (could not run).

    Progress and logs go to ``console`` (stderr), results (the table, the failures, the
    closing verdict line) to ``out`` (stdout)."""
    console = console or Console(file=sys.stderr,
                                 width=None if sys.stderr.isatty() else 200)
    out = out or Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    duration = options.duration if options.duration is not None else suite.duration
    max_time = options.max_time if options.max_time is not None else suite.max_time
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = options.report_dir or Path("stress-reports") / f"{suite.name}-{stamp}"
    report_dir.mkdir(parents=True, exist_ok=True)
    report_json = options.json_path or report_dir / "report.json"
    console.print(f"taskq-stress: suite [bold]{suite.name}[/] ({len(cells)} cells), "
                  f"seed {seed}, duration {duration:g}s, reports in {report_dir}")
    for warning in schedule_warnings(suite, duration):
        console.print(f"[yellow]taskq-stress: warning:[/] {warning}")
    results: list[CellResult] = []
    run_info: dict[str, Any] = {"seed": seed, "duration": duration, "max_time": max_time,
                                "broker": options.broker_url, "app": options.app,
                                "worker_cmd": options.worker_cmd, "started": stamp,
                                "workload": str(options.workload_file.resolve())
                                if options.workload_file else None}
    interrupted = False
    live = console.is_terminal
    plain = _PlainProgress(console)
    try:
        with _progress_bar(console) if live else contextlib.nullcontext() as bar:
            for n, cell in enumerate(cells, 1):
                label = f"[{n}/{len(cells)}] {cell.id}"
                progress: Callable[[int, int, str], None]
                if bar is not None:
                    task = bar.add_task(label, total=None, phase="start")
                    progress = functools.partial(_update_bar, bar, task)
                else:
                    plain.start(label)
                    progress = plain.update

                this_seed = options.cell_seeds.get(cell.id, cell_seed(seed, cell))
                directory = report_dir / f"cell-{n:02d}"
                run = CellRun(suite, cell, this_seed, directory, duration, max_time,
                              broker_url=options.broker_url, app=options.app,
                              worker_cmd=options.worker_cmd, progress=progress)
                started = time.monotonic()
                try:
                    result = run.run()
                except StressError as exc:
                    result = CellResult(cell, this_seed, [], {}, directory,
                                        time.monotonic() - started, "", error=str(exc))
                result.replay = replay_command(report_json, cell.id)
                mark = "pass" if result.passed else ("ERROR" if result.error else "FAIL")
                if bar is not None:
                    bar.update(task, phase=mark)
                else:
                    plain.end(mark, result.seconds)
                results.append(result)
    except KeyboardInterrupt:
        interrupted = True
        console.print("taskq-stress: interrupted; the running cell was cleaned up")
    run_info["interrupted"] = interrupted
    write_json(report_json, suite, run_info, results)
    _write_html(report_dir / "report.html", report_json, console)
    if options.junit_path:
        write_junit(options.junit_path, suite, results)
    summary_table(suite, results, out)
    for result in results:
        if result.error:
            # escaped: an error text says e.g. pip install 'taskq[redis]', not markup
            out.print(f"[red]ERROR[/] {result.cell.id}: {escape(result.error)}")
        elif not result.passed:
            for v in result.verdicts:
                if not v.passed:
                    out.print(f"[red]FAIL[/] {result.cell.id} {v.oracle}: {escape(v.message)}")
            out.print(f"  seed {result.seed}; artifacts in {result.directory}; replay "
                      f"with: {escape(result.replay)}")
    if interrupted or any(r.error for r in results):
        code = 2
    else:
        code = 0 if all(r.passed for r in results) else 1
    out.print(verdict_line(suite, results, seed, report_dir, report_json,
                           options.junit_path, interrupted), highlight=False)
    return code, results


def _write_html(path: Path, report_json: Path, console: Console) -> None:
    """report.html beside report.json; a chart that cannot be drawn does not change the
    run's verdict or exit code (``taskq-stress report`` rebuilds the page)."""
    from stress.report_html import load_run, write_html

    try:
        write_html(path, [load_run(report_json)])
    except Exception as exc:
        console.print(f"[yellow]taskq-stress: warning:[/] could not write {path}: "
                      f"{type(exc).__name__}: {exc}")


def verdict_line(suite: Suite, results: Sequence[CellResult], seed: int, report_dir: Path,
                 report_json: Path, junit: Path | None, interrupted: bool) -> str:
    """The run in one line: ``PASSED 8/8 cells ... reports in DIR``."""
    passed = sum(r.passed for r in results)
    errors = sum(bool(r.error) for r in results)
    failed = len(results) - passed - errors
    word = ("INTERRUPTED" if interrupted else "ERROR" if errors
            else "PASSED" if failed == 0 and results else "FAILED")
    counts = f"{passed}/{len(results)} cells passed"
    if failed:
        counts += f", {failed} failed"
    if errors:
        counts += f", {errors} could not run"
    where = f"reports in {report_dir}"
    if report_json.parent != report_dir:
        where += f", JSON {report_json}"
    if junit is not None:
        where += f", JUnit {junit}"
    return f"taskq-stress {suite.name}: {word}: {counts} (seed {seed}); {where}"


def schedule_warnings(suite: Suite, duration: float) -> list[str]:
    """Faults whose schedule cannot fire within ``duration``: every cell would fail as
    vacuous, so say so before running."""
    first_values = {axis: values[0] for axis, values in suite.matrix.items()
                    if isinstance(values, list) and values}
    warnings = []
    for fault in suite.faults:
        template = str(fault.get("schedule", "every 1s"))
        if "poisson" in template:
            continue  # may fire at any moment
        try:
            offsets = parse_schedule(template.format(**first_values)).first(1)
        except (ChaosError, KeyError, ValueError, IndexError):
            continue  # load_suite and the cells report bad schedules themselves
        if offsets and offsets[0] >= duration:
            warnings.append(
                f"fault {fault.get('kind', '?')!r} ({template!r}) first fires at "
                f"{offsets[0]:g}s, after the {duration:g}s of --duration: it never runs and "
                f"not-vacuous fails every cell; use --duration {math.ceil(offsets[0]) + 3} "
                f"or more")
    return warnings


def load_report(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StressError(f"cannot read report {path}: {exc}") from None
    return data
