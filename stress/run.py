"""Running a suite over its cells, with a progress bar per cell and the reports at the end."""

from __future__ import annotations

import datetime as dt
import json
import random
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


def run_suite(suite: Suite, cells: Sequence[Cell], options: RunOptions,
              console: Console | None = None) -> tuple[int, list[CellResult]]:
    """Run every cell; exit code 0 (all passed), 1 (an oracle failed), 2 (could not run)."""
    console = console or Console(file=sys.stderr,
                                 width=None if sys.stderr.isatty() else 200)
    seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**31)
    duration = options.duration if options.duration is not None else suite.duration
    max_time = options.max_time if options.max_time is not None else suite.max_time
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    report_dir = options.report_dir or Path("stress-reports") / f"{suite.name}-{stamp}"
    report_dir.mkdir(parents=True, exist_ok=True)
    report_json = options.json_path or report_dir / "report.json"
    console.print(f"taskq-stress: suite [bold]{suite.name}[/] ({len(cells)} cells), "
                  f"seed {seed}, duration {duration:g}s, reports in {report_dir}")
    results: list[CellResult] = []
    run_info: dict[str, Any] = {"seed": seed, "duration": duration, "max_time": max_time,
                                "broker": options.broker_url, "app": options.app,
                                "worker_cmd": options.worker_cmd, "started": stamp,
                                "workload": str(options.workload_file.resolve())
                                if options.workload_file else None}
    interrupted = False
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[phase]}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            for n, cell in enumerate(cells, 1):
                task = bar.add_task(f"[{n}/{len(cells)}] {cell.id}", total=None, phase="start")

                def progress(done: int, total: int, phase: str, task: Any = task) -> None:
                    bar.update(task, completed=done, total=max(total, 1), phase=phase)

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
                bar.update(task, phase=mark)
                results.append(result)
    except KeyboardInterrupt:
        interrupted = True
        console.print("taskq-stress: interrupted; the running cell was cleaned up")
    run_info["interrupted"] = interrupted
    write_json(report_json, suite, run_info, results)
    if options.junit_path:
        write_junit(options.junit_path, suite, results)
    summary_table(suite, results, console)
    for result in results:
        if result.error:
            console.print(f"[red]ERROR[/] {result.cell.id}: {result.error}")
        elif not result.passed:
            for v in result.verdicts:
                if not v.passed:
                    console.print(f"[red]FAIL[/] {result.cell.id} {v.oracle}: {v.message}")
            console.print(f"  seed {result.seed}; artifacts in {result.directory}; replay "
                          f"with: {result.replay}")
    console.print(f"taskq-stress: JSON report {report_json}"
                  + (f", JUnit {options.junit_path}" if options.junit_path else ""))
    if interrupted or any(r.error for r in results):
        return 2, results
    return (0 if all(r.passed for r in results) else 1), results


def load_report(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StressError(f"cannot read report {path}: {exc}") from None
    return data
