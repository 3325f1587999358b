"""report.html: the series a cell records, the page drawn from report.json (with and without
matplotlib), and ``taskq-stress report`` rebuilding and comparing runs."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from chaos import FaultRecord
from stress import report_html
from stress.cli import main as stress_main
from stress.ledger import Book, Entry, LedgerWriter
from stress.oracles import Evidence
from stress.report_html import CHARTS_HINT, load_run, render
from stress.series import collect, series_of
from stress.suites import Cell, load_suite

T0 = 1000.0
WALL = 1_700_000_000.0
CELL = {"transport": "sqlite", "pool": "fair", "max_tasks_per_child": 0, "acks": "early",
        "concurrency": 2, "kill_rate": 10.0}


def _entry(event: str, task: str, pid: int, at: float, **extra: Any) -> Entry:
    return Entry(event, task, pid, T0 + at, WALL + at, extra)


def _kill(at: float, pid: int) -> FaultRecord:
    return FaultRecord(T0 + at, WALL + at, "kill-child", "worker children", "ok",
                       {"signal": "SIGKILL"}, {"pids": [pid]})


def _book() -> Book:
    """Five tasks: three finish in the first second, one in the third; one runs in child 11,
    which is killed at 2.0 s and noticed 8 ms later."""
    book = Book()
    entries = []
    for n, (start, end) in enumerate([(0.1, 0.2), (0.3, 0.4), (0.5, 0.9), (2.1, 2.6)]):
        entries += [_entry("published", f"t{n}", 1, start - 0.05, kind="noop"),
                    _entry("started", f"t{n}", 10, start), _entry("finished", f"t{n}", 10, end,
                                                                  outcome="ok")]
    entries += [_entry("published", "killed", 1, 1.0, kind="sleep"),
                _entry("started", "killed", 11, 1.5),
                _entry("lost", "killed", 2, 2.008, error="WorkerLostError", requeued=False)]
    book.add(entries)
    return book


def _evidence(tmp_path: Path, book: Book, faults: list[FaultRecord], *,
              is_taskq: bool = True) -> Evidence:
    return Evidence(suite=load_suite("kill-children"), cell=Cell(CELL), book=book, faults=faults,
                    deadlock=False, deadlock_pending=0, stall_bound=0.0, baseline=None,
                    health=None, worker_starts=1, is_taskq=is_taskq, publish_errors=0,
                    directory=tmp_path)


def test_a_cells_series_count_tasks_per_second_faults_latencies_and_backlog(tmp_path):
    series = series_of(_evidence(tmp_path, _book(), [_kill(2.0, 11)]))
    # t0 is the first publish (0.05 s): the finishes at 0.2, 0.4, 0.9 fall in second 0
    assert series["finished"][:3] == [3, 0, 1]
    assert series["failed"][:2] == [0, 1]
    assert series["faults"] == {"kill-child": [1.95]}
    assert series["latencies_ms"] == [pytest.approx(8.0, abs=0.01)]
    assert max(series["running"]) == 1 and max(series["waiting"]) == 1
    assert series["loop_lag"] == []  # a taskq worker: recorded, none over 0.5 s


def test_a_worker_cmd_cell_records_no_loop_lag(tmp_path):
    series = series_of(_evidence(tmp_path, _book(), [], is_taskq=False))
    assert series["loop_lag"] is None and series["latencies_ms"] == []


def test_loop_lag_warnings_come_from_the_workers_log_on_the_runs_clock(tmp_path):
    book = _book()
    stamp = _local_stamp(WALL + 1.25)
    (tmp_path / "worker-1.log").write_text(
        f"[{stamp}: WARNING/MainProcess 7] taskq.worker.loop: event loop lagged 0.730 s "
        "behind its timers; something in the main process blocked\n")
    series = series_of(_evidence(tmp_path, book, []))
    assert series["loop_lag"] == [[pytest.approx(1.2, abs=0.002), 0.73]]


def _local_stamp(wall: float) -> str:
    import datetime as dt

    when = dt.datetime.fromtimestamp(wall)
    return when.strftime("%Y-%m-%d %H:%M:%S,") + f"{when.microsecond // 1000:03d}"


def test_series_are_read_back_from_a_cells_ledger_and_journal(tmp_path):
    ledger = tmp_path / "ledger"
    ledger.mkdir()
    writer = LedgerWriter(ledger, "task")
    writer.write("published", "a", kind="noop")
    writer.write("started", "a")
    writer.write("finished", "a", outcome="ok")
    writer.close()
    series = collect(tmp_path, load_suite("kill-children"), Cell(CELL), is_taskq=True)
    assert series["finished"][0] == 1 and series["faults"] == {}
    assert collect(tmp_path / "nothing", load_suite("kill-children"), Cell(CELL),
                   is_taskq=True) == {}


def _report(tmp_path: Path, name: str, worker_cmd: str | None = None,
            passed: bool = True) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    series = series_of(_evidence(tmp_path, _book(), [_kill(2.0, 11)]))
    verdicts = [{"oracle": "lost-process", "passed": passed,
                 "message": "all 1 kills detected" if passed else "1 killed task never ended",
                 "figures": {"p50_ms": 8.0}},
                {"oracle": "nothing-lost", "passed": True, "message": "every task <ended>",
                 "figures": {"published": 5}}]
    cell = {"cell": Cell(CELL).id, "params": CELL, "seed": 5, "passed": passed, "error": None,
            "seconds": 3.2, "directory": str(folder / "cell-01"), "worker_command": "w",
            "replay": "taskq-stress replay r.json x", "figures": {"published": 5},
            "verdicts": verdicts, "series": series}
    data = {"suite": "kill-children", "suite_file": "", "passed": passed,
            "run": {"seed": 1, "duration": 3, "broker": "sqlite://", "worker_cmd": worker_cmd,
                    "started": "20260101-000000"},
            "cells": [cell, {**copy.deepcopy(cell), "cell": "other", "series": {},
                             "directory": str(folder / "cell-02")}]}
    (folder / "report.json").write_text(json.dumps(data))
    return folder


def test_the_page_draws_every_chart_inline_and_fetches_nothing(tmp_path):
    page = render([load_run(_report(tmp_path, "run"))])
    assert page.count("<svg") == 3  # timeline, latency, backlog (no lag: a sentence instead)
    assert "no lag over 0.5 s" in page
    assert "No series recorded for this cell" in page  # the cell without series
    fetched = re.findall(r'(?:src|href)="(?!#)([^"]*)"', page)
    assert fetched == [], "the page must open from disk without fetching anything"
    assert "<script" not in page and "<link" not in page
    assert "every task &lt;ended&gt;" in page  # messages are escaped
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "each chart's SVG ids are made unique on the page"
    assert "kill-child (1)" in page and "p50 8.0 ms" in page


def test_without_matplotlib_the_page_keeps_its_tables_and_says_how_to_get_charts(
        tmp_path, monkeypatch):
    monkeypatch.setattr(report_html, "_charts_module", lambda: None)
    page = render([load_run(_report(tmp_path, "run", passed=False))])
    assert "<svg" not in page
    assert CHARTS_HINT.replace("'", "&#x27;") in page
    assert "1 killed task never ended" in page and 'class="fail"' in page


def test_compared_runs_share_one_chart_per_cell(tmp_path):
    taskq = load_run(_report(tmp_path, "a"))
    celery = load_run(_report(tmp_path, "b", worker_cmd="/venv/bin/celery -A app worker"))
    page = render([taskq, celery])
    assert "taskq vs celery" in page
    assert page.count("<svg") == 3  # one timeline, one latency row, one backlog for the cell
    assert "taskq: finished/s" in page and "celery: finished/s" in page
    assert "taskq: 1 detections" in page and "celery: 1 detections" in page
    assert "celery: not recorded" not in page  # the series say what each run recorded


def test_the_report_command_rebuilds_a_run_and_compares_runs(tmp_path):
    first, second = _report(tmp_path, "a"), _report(tmp_path, "b", worker_cmd="celery worker")
    result = CliRunner().invoke(stress_main, ["report", str(first)])
    assert result.exit_code == 0, result.output
    assert (first / "report.html").read_text().count("<svg") == 3
    result = CliRunner().invoke(stress_main, ["report", str(first), "--compare", str(second)])
    assert result.exit_code == 0, result.output
    assert "taskq vs celery" in (first / "compare.html").read_text()
    result = CliRunner().invoke(stress_main, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no report.json" in result.output


def test_a_report_without_series_gets_them_from_its_ledgers(tmp_path):
    folder = _report(tmp_path, "old")
    data = json.loads((folder / "report.json").read_text())
    for cell in data["cells"]:
        del cell["series"]
    data["suite_file"] = str(load_suite("kill-children").path)
    ledger = folder / "cell-01" / "ledger"
    ledger.mkdir(parents=True)
    writer = LedgerWriter(ledger, "task")
    writer.write("published", "a", kind="noop")
    writer.write("finished", "a", outcome="ok")
    writer.close()
    (folder / "report.json").write_text(json.dumps(data))
    run = load_run(folder)
    assert run.cells[0]["series"]["finished"][0] == 1
    assert run.cells[1]["series"] == {}


def test_latencies_spread_over_decades_are_binned_on_a_log_scale(tmp_path):
    run = load_run(_report(tmp_path, "run"))
    assert "log scale" not in render([run])
    run.cells[0]["series"]["latencies_ms"] = [2.0, 3.0, 1800.0]
    assert "milliseconds (log scale)" in render([run])


def test_the_page_lists_cells_numbered_by_what_differs_with_the_legend_under_them(tmp_path):
    """Given a run of two cells that differ only in acks, the page opens with a table of the
    cells: an index column, each cell named by acks alone (the shared axes in its caption),
    its verdict and nothing-lost figures, and the legend for allowed outcomes right under it."""
    folder = _report(tmp_path, "run")
    data = json.loads((folder / "report.json").read_text())
    late = {**CELL, "acks": "late"}
    data["cells"][1].update(cell=Cell(late).id, params=late)
    data["cells"][0]["verdicts"][1]["figures"] = {"published": 5, "failed": 2}
    (folder / "report.json").write_text(json.dumps(data))
    page = render([load_run(folder)])
    table = page[page.index('<table class="cells">'):page.index('<h2 id="cell-1">')]
    assert "<th>#</th><th>cell</th>" in table
    assert "every cell: transport=sqlite, pool=fair" in table
    rows = re.findall(r"<tr><td><a href=\"#cell-(\d)\">\d</a></td><td><a[^>]*>([^<]*)</a>", table)
    assert rows == [("1", "acks=early"), ("2", "acks=late")]
    assert "published=5 failed=2" in table
    assert "A cell fails only on outcomes the table forbids" in table
