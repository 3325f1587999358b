"""Explore stops a case once its failure is certain, and writes its JSON report when
interrupted (Ctrl-C)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from chaos import FaultRecord
from stress import explorer
from stress.cell import CellResult
from stress.explore import Generator
from stress.ledger import Book, Entry
from stress.oracles import Evidence, Verdict, certain_violations, explore_verdicts
from stress.suites import Suite, parse_cell


def _e(event: str, task_id: str, pid: int, mono: float, **extra: object) -> Entry:
    return Entry(event, task_id, pid, mono, mono, dict(extra))


def _rerun(acks: str) -> tuple[Book, Any]:
    book = Book()
    book.add([_e("published", "t", 1, 0.0, kind="sleep", expect="ok"),
              _e("started", "t", 7, 1.0), _e("finished", "t", 7, 5.0, outcome="ok"),
              _e("started", "t", 7, 5.5), _e("finished", "t", 7, 9.0, outcome="ok")])
    return book, parse_cell(f"acks={acks}")


def test_a_rerun_without_a_fault_is_certain_and_one_the_table_allows_is_not() -> None:
    book, cell = _rerun("late")
    assert any("ran again" in p for p in certain_violations(book, [], cell))
    cut = FaultRecord(mono=2.0, wall=2.0, kind="proxy-cut", target="proxy", outcome="ok")
    assert certain_violations(book, [cut], cell) == []


def test_a_stopped_run_keeps_the_oracle_that_stopped_it_and_judges_no_other() -> None:
    book, cell = _rerun("early")
    book.add([_e("published", "pending", 1, 6.0, kind="noop", expect="ok")])
    ev = Evidence(suite=Suite("t", "", Path("t.toml")), cell=cell, book=book, faults=[],
                  deadlock=False, deadlock_pending=0, stall_bound=10.0, baseline=None,
                  health=None, worker_starts=1, is_taskq=True, publish_errors=0,
                  directory=Path("."), stopped_early="nothing-lost")
    verdicts = explore_verdicts(ev, [Verdict("deadlock", False, "ended with 1 unresolved"),
                                     Verdict("nothing-lost", False, "never started ..."),
                                     Verdict("pool-health", True, "fine")])
    by = {v.oracle: v for v in verdicts}
    assert by["deadlock"].passed and "not judged" in by["deadlock"].message
    assert not by["nothing-lost"].passed
    assert "ran again" in by["nothing-lost"].message
    assert "never started" not in by["nothing-lost"].message


def _deadlock_result(case: Any, directory: Path, passed: bool, message: str = "x"
                     ) -> CellResult:
    """What a fake ``run_case`` returns: one verdict, ``deadlock``."""
    return CellResult(case.cell(), case.seed, [Verdict("deadlock", passed, message)], {},
                      directory, 1.0, "taskq worker")


def _explore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
             fake_run: Callable[[Any, Path, Any], CellResult], **options: Any
             ) -> tuple[int, dict[str, Any]]:
    """Explore (a 600 s budget) with ``fake_run`` in place of ``run_case``: its exit code and
    its JSON report."""
    monkeypatch.setattr(explorer, "run_case", fake_run)
    options.setdefault("out", io.StringIO())
    code = explorer.explore(explorer.ExploreOptions(
        budget=600, report_dir=tmp_path / "r", corpus_dir=tmp_path / "corpus", **options))
    return code, json.loads((tmp_path / "r" / "report.json").read_text())


def test_an_interrupted_search_still_writes_its_json_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_run(case: Any, directory: Path, options: Any) -> CellResult:
        calls.append(case)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _deadlock_result(case, directory, True, "ok")

    out = io.StringIO()
    code, report = _explore(tmp_path, monkeypatch, fake_run, seed=3, out=out)
    assert code == 2
    assert report["explore"]["interrupted"] is True
    assert report["explore"]["cases"] == 2 and len(report["cells"]) == 1
    assert "INTERRUPTED" in out.getvalue()
    assert Generator(3).draw().key() == calls[0].key()


def test_keep_going_shrinks_and_saves_every_failure_and_searches_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(case: Any, directory: Path, options: Any) -> CellResult:
        failed = bool(case.faults)  # a synthetic bug: any fault at all
        return _deadlock_result(case, directory, not failed)

    code, whole = _explore(tmp_path, monkeypatch, fake_run, seed=5, max_cases=6,
                           keep_going=True)
    assert code == 1
    report = whole["explore"]
    assert report["cases"] == 6
    assert len(report["failures"]) >= 2
    assert all(len(json.loads(json.dumps(f))["shrunk_describe"].split("|")[-1]
                   .split(",")) == 1 for f in report["failures"])
    assert len(list((tmp_path / "corpus").glob("*.toml"))) >= 1


def test_keep_going_does_not_draw_a_known_failure_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def fake_run(case: Any, directory: Path, options: Any) -> CellResult:
        seen.append((directory.name, case))
        failed = case.config["pool_type"] == "solo"  # a synthetic bug: the solo pool
        return _deadlock_result(case, directory, not failed)

    code, whole = _explore(tmp_path, monkeypatch, fake_run, seed=8, max_cases=40,
                           keep_going=True)
    assert code == 1
    report = whole["explore"]
    assert len(report["failures"]) == 1  # found once, then solo cases are drawn no more
    assert report["skipped_like_known_failures"] > 0
    searched = [c for d, c in seen if d.startswith("case-")]
    first = next(n for n, c in enumerate(searched) if c.config["pool_type"] == "solo")
    assert all(c.config["pool_type"] != "solo" for c in searched[first + 1:])


def test_keep_going_tells_defects_apart_by_their_oracles_and_draws_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two synthetic bugs behind the same fault: any cut fails ``deadlock``; a cut with a
    lease off its default also fails ``released-after-cut``. The first one found shrinks to
    "a cut", which must neither stop cuts from being drawn (the second needs one) nor be
    shrunk again when it comes back: a failure like a known one (its axes, its faults, no
    oracle the known one did not fail) is reported as a repeat."""
    def fake_run(case: Any, directory: Path, options: Any) -> CellResult:
        cut = "cut-connections" in {f.kind for f in case.faults}
        verdicts = [Verdict("deadlock", not cut, "x")]
        if case.config["lease"] != 5.0:
            verdicts.append(Verdict("released-after-cut", not cut, "x"))
        return CellResult(case.cell(), case.seed, verdicts, {}, directory, 1.0, "taskq worker")

    code, whole = _explore(tmp_path, monkeypatch, fake_run, seed=12, max_cases=60,
                           keep_going=True)
    assert code == 1
    report = whole["explore"]
    found = sorted(tuple(sorted(f["oracles_minimal"])) for f in report["failures"])
    assert found == [("deadlock",), ("deadlock", "released-after-cut")]
    assert report["repeats_of_known_failures"] > 0


def test_a_failure_differing_from_a_known_one_only_in_switches_is_a_repeat() -> None:
    """2693be4 under fd pressure fails warm-up whatever else is drawn; a shrink cut short by
    its budget keeps max-tasks and lease off their defaults. The next fd-pressure case fails
    the same oracle with the same categorical axes: a repeat, not eight more minutes of
    shrinking (a 30-minute search against 2693be4 shrank it three times)."""
    known_case = Generator(1).draw()
    config = {**known_case.config, "fds": 1100, "strategy": "fast", "max_tasks_per_child": 3,
              "lease": 2.0, "pool_type": "prefork"}
    known = explorer.Known.of(replace(known_case, config=config, faults=()), ["warm-up"])
    other = replace(known_case, config={**config, "max_tasks_per_child": 0, "lease": 5.0})
    assert not known.matches(other)  # still drawn: its switches differ
    assert known.explains(other, ["warm-up"])  # but not shrunk again
    assert not known.explains(other, ["warm-up", "deadlock"])
    assert not known.explains(replace(other, config={**other.config, "fds": 0}), ["warm-up"])


def test_a_case_that_could_not_run_is_not_nothing_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker command that does not start (say ``celery`` not on PATH) leaves the case
    unjudged: the search exits 2 and says so, even when the other cases passed."""
    calls = []

    def fake_run(case: Any, directory: Path, options: Any) -> CellResult:
        calls.append(case)
        if len(calls) == 1:
            return CellResult(case.cell(), case.seed, [], {}, directory, 0.1, "",
                              error="cannot start the worker: no such file")
        return _deadlock_result(case, directory, True, "ok")

    out = io.StringIO()
    code, report = _explore(tmp_path, monkeypatch, fake_run, seed=3, max_cases=2, out=out)
    assert code == 2
    assert report["explore"]["could_not_run"] == 1
    assert "1 of 2 cases could not run" in out.getvalue()
    assert "nothing found" not in out.getvalue()
