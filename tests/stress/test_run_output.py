"""What a person (or a CI log) reads from ``taskq-stress run``: progress lines without a
terminal, a table naming cells by what differs, a legend, one closing verdict line, and a
warning when a fault cannot fire within ``--duration``."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from stress.cell import CellResult
from stress.oracles import Verdict
from stress.report import summary_table
from stress.run import _PlainProgress, schedule_warnings, verdict_line
from stress.suites import Cell, load_suite


def _result(cell: dict, passed: bool = True, error: str | None = None) -> CellResult:
    verdicts = [Verdict("nothing-lost", passed, "ok" if passed else "3 lost",
                        {"published": 10, "failed": 2})]
    return CellResult(Cell(cell), 1, verdicts, {}, Path("/tmp/x"), 3.0, "taskq worker",
                      error=error)


def _console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=300, force_terminal=False), buffer


def test_the_verdict_line_counts_cells_and_names_the_report_folder():
    suite = load_suite("kill-children")
    results = [_result({"transport": "redis", "acks": "early"}),
               _result({"transport": "redis", "acks": "late"}, passed=False)]
    line = verdict_line(suite, results, 7, Path("reports/x"), Path("reports/x/report.json"),
                        None, interrupted=False)
    assert line == ("taskq-stress kill-children: FAILED: 1/2 cells passed, 1 failed (seed 7); "
                    "reports in reports/x")
    passed = verdict_line(suite, results[:1], 7, Path("r"), Path("r/report.json"),
                          Path("j.xml"), interrupted=False)
    assert "PASSED: 1/1 cells passed" in passed and "JUnit j.xml" in passed


def test_the_table_numbers_rows_names_cells_by_what_differs_and_explains_figures():
    suite = load_suite("kill-children")
    console, buffer = _console()
    summary_table(suite, [_result({"transport": "sqlite", "acks": "early", "pool": "fair"}),
                          _result({"transport": "sqlite", "acks": "late", "pool": "fair"})],
                  console)
    text = buffer.getvalue()
    assert "every cell: transport=sqlite,pool=fair" in text
    assert "acks=early" in text and "acks=late" in text
    assert "transport=sqlite,acks" not in text  # the shared axes are not repeated per row
    assert "│ 2 │" in text or "| 2 |" in text
    legend = " ".join(text.split())
    assert "A cell fails only on outcomes the table forbids" in legend
    assert "where a row allows it: 'running; its child dies'" in legend


def test_plain_progress_prints_a_line_per_cell_start_and_end():
    console, buffer = _console()
    plain = _PlainProgress(console, every=0.0)
    plain.start("[1/2] transport=redis")
    plain.update(5, 10, "drain")
    plain.end("pass", 4.2)
    lines = buffer.getvalue().splitlines()
    assert lines == ["[1/2] transport=redis: started", "[1/2] transport=redis: drain 5/10",
                     "[1/2] transport=redis: pass in 4s"]


def test_a_fault_that_cannot_fire_within_the_duration_is_warned_about():
    suite = load_suite("kill-main")  # "every 5s after 2s": first at 7 s
    warnings = schedule_warnings(suite, 6)
    assert len(warnings) == 1 and "first fires at 7s" in warnings[0]
    assert schedule_warnings(suite, suite.duration) == []


def test_a_report_folder_used_again_judges_only_this_run(stress_run, tmp_path: Path) -> None:
    """Given a report folder holding an earlier run's ledger (a task it published and never
    ran), when a run writes into it again, then only this run's tasks are judged."""
    stale = tmp_path / "reports" / "cell-01" / "ledger"
    stale.mkdir(parents=True)
    (stale / "publisher-1.jsonl").write_text(
        '{"ev":"published","id":"stale-task","pid":1,"mono":1.0,"wall":1.0,'
        '"kind":"noop","expect":"ok"}\n')
    run = stress_run("--suite", "kill-children", "--broker", "sqlite://", "--duration", "2",
                     "--cell", "pool=fair,max_tasks_per_child=0,acks=early", "--seed", "3")
    lost = run.verdict("nothing-lost")
    assert lost["passed"], lost["message"]
    assert not (stale / "publisher-1.jsonl").exists()


def test_a_narrow_table_wraps_a_cells_name_between_axes_never_inside_one():
    suite = load_suite("kill-children")
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=False)
    cells = [{"transport": "sqlite", "pool": pool, "max_tasks_per_child": mtpc, "acks": acks}
             for pool, mtpc, acks in [("fair", 0, "early"), ("fast", 10, "late-reject")]]
    summary_table(suite, [_result(cell) for cell in cells], console)
    text = buffer.getvalue()
    for token in ("max_tasks_per_child=10", "max_tasks_per_child=0", "acks=late-reject",
                  "pool=fast"):
        assert token in text, text


def test_the_table_title_names_only_the_axes_the_suite_uses():
    suite = load_suite("kill-main")
    console, buffer = _console()
    named = ("transport", "acks")
    results = [_result({}) for _ in range(2)]
    for result, acks in zip(results, ("early", "late"), strict=True):
        result.cell = Cell({"transport": "sqlite", "pool": "fair", "max_tasks_per_child": 0,
                            "acks": acks, "concurrency": 2, "kill_rate": 10.0}, named)
    summary_table(suite, results, console)
    text = buffer.getvalue()
    assert "every cell: transport=sqlite)" in text
    assert "kill_rate" not in text and "pool=" not in text
