"""Reports: a summary table for humans, JSON with everything, JUnit XML for CI.

JUnit has one testcase per cell and oracle, named ``<oracle>`` in class ``<suite>.<cell id>``:
both stay the same between runs, so CI can track a case over time.
"""

from __future__ import annotations

import json
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stress.cell import CellResult
from stress.oracles import ORACLES, Verdict
from stress.suites import Suite

__all__ = ["LEGEND", "oracle_figures", "replay_command", "summary_table", "write_json",
           "write_junit", "write_junit_rows"]


def replay_command(report: Path, cell_id: str) -> str:
    return shlex.join(["taskq-stress", "replay", str(report), cell_id])


def oracle_figures(verdict_figures: dict[str, Any], oracle: str) -> str:
    """The figures the summary shows for one oracle's verdict, ``k=v`` separated by spaces."""
    keys = {
        "nothing-lost": ("published", "finished", "failed", "lost", "duplicates"),
        "lost-process": ("kills_of_running", "p50_ms", "p99_ms"),
        "not-vacuous": ("kills_of_running",),
        "pool-health": ("children", "fds", "rss_mib"),
        "deadlock": ("pending",),
        "head-of-line": ("short_tasks", "p99_ms", "stuck"),
        "leases-released": ("leases_left", "queued_ended"),
    }.get(oracle, ())
    return " ".join(f"{k}={verdict_figures[k]}" for k in keys if verdict_figures.get(k) is not None)


def _varying(results: Sequence[CellResult]) -> tuple[list[str], dict[str, Any]]:
    """The parameters that differ between the cells, and the ones all cells share."""
    keys: list[str] = []
    for result in results:  # the axes each cell's id names (not those left at defaults)
        keys += [k for k in (part.partition("=")[0] for part in result.cell.id.split(","))
                 if k and k not in keys]
    varying, fixed = [], {}
    for key in keys:
        values = {_text(r.cell.params.get(key)) for r in results}
        if len(values) > 1:
            varying.append(key)
        else:
            fixed[key] = results[0].cell.params.get(key)
    return varying, fixed


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# Under the table: why figures that look bad can be a pass, by the rows of the delivery table
# (docs/guarantees.md) that allow them.
LEGEND = (
    "Allowed outcomes (docs/guarantees.md): failed= counts tasks that ended FAILURE where a "
    "row allows it: 'running; its child dies' (WorkerLostError, early ack or acks_late without "
    "reject_on_worker_lost), 'running; hard time limit' (TimeLimitExceeded), and workload "
    "tasks meant to fail; duplicates= counts tasks that ran again where a row allows it: "
    "'the main process dies' and 'the broker connection is lost' (acks_late; on RabbitMQ also "
    "early ack), reject_on_worker_lost requeues, retries; early-ack tasks the row 'the main "
    "process dies' loses are not counted in lost=. A cell fails only on outcomes the table "
    "forbids."
)


def summary_table(suite: Suite, results: Sequence[CellResult], console: Console) -> None:
    varying, fixed = _varying(results)
    shared = ",".join(f"{k}={_text(v)}" for k, v in fixed.items())
    title = f"taskq-stress {suite.name}" + (f" (every cell: {shared})" if shared else "")
    table = Table(title=title, show_lines=False)
    table.add_column("#", justify="right")
    # ", " lets a narrow column wrap between axes, and its width keeps each axis whole
    cells = [", ".join(f"{k}={_text(r.cell.params.get(k))}" for k in varying) or r.cell.id
             for r in results]
    widest = max((len(part) for name in cells for part in name.split(" ")), default=4)
    table.add_column("cell", overflow="fold", min_width=min(widest, 40))
    names = list(ORACLES) + sorted({v.oracle for r in results for v in r.verdicts}
                                   - set(ORACLES))
    for oracle in names:
        table.add_column(oracle, overflow="fold")
    table.add_column("s", justify="right")
    for n, (result, name) in enumerate(zip(results, cells, strict=True), 1):
        row = [str(n), name]
        if result.error:
            row += [f"[red]ERROR[/] {escape(result.error.splitlines()[0][:60])}"] + [""] * (
                len(names) - 1)
        else:
            by_name = {v.oracle: v for v in result.verdicts}
            for oracle in names:
                v = by_name.get(oracle)
                if v is None:
                    row.append("-")
                    continue
                mark = "[green]pass[/]" if v.passed else "[red]FAIL[/]"
                row.append(f"{mark} {oracle_figures(v.figures, oracle)}".strip())
        row.append(f"{result.seconds:.0f}")
        table.add_row(*row)
    console.print(table)
    if results:
        console.print(LEGEND, highlight=False)


def _result_json(result: CellResult) -> dict[str, Any]:
    return {
        "cell": result.cell.id, "params": dict(result.cell.params), "seed": result.seed,
        "passed": result.passed, "error": result.error, "seconds": round(result.seconds, 2),
        "directory": str(result.directory), "worker_command": result.worker_command,
        "replay": result.replay, "figures": result.figures,
        "verdicts": [{"oracle": v.oracle, "passed": v.passed, "message": v.message,
                      "figures": v.figures} for v in result.verdicts],
        "series": result.series,
    }


def write_json(path: Path, suite: Suite, run: dict[str, Any],
               results: Sequence[CellResult]) -> None:
    data = {"suite": suite.name, "suite_file": str(suite.path), "run": run,
            "passed": all(r.passed for r in results),
            "cells": [_result_json(r) for r in results]}
    path.write_text(json.dumps(data, indent=2, default=str))


def write_junit(path: Path, suite: Suite, results: Sequence[CellResult]) -> None:
    def failure_context(result: CellResult) -> Callable[[Verdict], str]:
        return lambda v: (f"figures: {json.dumps(v.figures)}\nseed: {result.seed}\n"
                          f"replay: {result.replay}\nartifacts: {result.directory}")

    write_junit_rows(path, suite.name, [
        (f"{suite.name}.{result.cell.id}", result, f"replay: {result.replay}",
         failure_context(result)) for result in results])


def write_junit_rows(path: Path, name: str,
                     rows: Iterable[tuple[str, CellResult, str, Callable[[Verdict], str]]]
                     ) -> None:
    """JUnit XML for suite ``taskq-stress.<name>``, a row a run: ``(classname, result,
    error_context, failure_context)``. A run that raised is one testcase ``run`` (its error
    then ``error_context``); otherwise a testcase per oracle, a failed one with its message
    then ``failure_context(verdict)``."""
    cases = []
    failures = errors = 0
    for classname, result, error_context, failure_context in rows:
        if result.error:
            errors += 1
            case = ET.Element("testcase", classname=classname, name="run",
                              time=f"{result.seconds:.2f}")
            error = ET.SubElement(case, "error", message=result.error.splitlines()[0][:200])
            error.text = f"{result.error}\n{error_context}"
            cases.append(case)
            continue
        for v in result.verdicts:
            case = ET.Element("testcase", classname=classname, name=v.oracle,
                              time=f"{result.seconds / max(1, len(result.verdicts)):.2f}")
            if not v.passed:
                failures += 1
                failure = ET.SubElement(case, "failure", message=v.message[:200])
                failure.text = f"{v.message}\n{failure_context(v)}"
            cases.append(case)
    root = ET.Element("testsuite", name=f"taskq-stress.{name}", tests=str(len(cases)),
                      failures=str(failures), errors=str(errors))
    root.extend(cases)
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))
