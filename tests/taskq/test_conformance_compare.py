"""ci/conformance/compare.py: the per-file figures of the two halves of the conformance run,
and the tests Celery's worker passes that taskq's does not (subtests count once)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

COMPARE = Path(__file__).resolve().parents[2] / "ci" / "conformance" / "compare.py"


def _junit(path: Path, cases: list[tuple[str, str, str]]) -> None:
    body = []
    for classname, name, outcome in cases:
        inner = {"passed": "", "failed": '<failure message="AssertionError: nope">x</failure>',
                 "skipped": '<skipped message="s"/>'}[outcome]
        body.append(f'<testcase classname="{classname}" name="{name}">{inner}</testcase>')
    path.write_text(f'<testsuites><testsuite>{"".join(body)}</testsuite></testsuites>')


def test_figures_per_file_and_the_tests_taskq_is_behind_on(tmp_path: Path) -> None:
    tasks, canvas = "t.integration.test_tasks.test_tasks", "t.integration.test_canvas.test_chord"
    _junit(tmp_path / "taskq.xml", [
        (tasks, "test_a", "passed"), (tasks, "test_b", "failed"),
        (tasks, "test_sub", "passed"), (tasks, "test_sub", "failed"),  # a failed subtest
        (canvas, "test_c", "skipped")])
    _junit(tmp_path / "celery.xml", [
        (tasks, "test_a", "passed"), (tasks, "test_b", "passed"), (tasks, "test_sub", "passed"),
        (canvas, "test_c", "passed")])
    out = subprocess.run([sys.executable, str(COMPARE), str(tmp_path)], capture_output=True,
                         text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "taskq  test_tasks    passed   1  failed   2  skipped   0" in lines
    assert "taskq  test_canvas   passed   0  failed   0  skipped   1" in lines
    assert "celery test_tasks    passed   3  failed   0  skipped   0" in lines
    assert "3 tests Celery's worker passes and taskq's does not:" in lines
    assert "  test_tasks::test_tasks::test_b: AssertionError: nope" in lines
    assert any(line.startswith("  test_canvas::test_chord::test_c") for line in lines)


def test_taskq_on_par_exits_0(tmp_path: Path) -> None:
    tasks = "t.integration.test_tasks.test_tasks"
    _junit(tmp_path / "taskq.xml", [(tasks, "test_a", "passed"), (tasks, "test_b", "failed")])
    _junit(tmp_path / "celery.xml", [(tasks, "test_a", "passed"), (tasks, "test_b", "failed")])
    out = subprocess.run([sys.executable, str(COMPARE), str(tmp_path)], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "0 tests Celery's worker passes" in out.stdout


def test_with_known_failures_only_a_new_failure_fails(tmp_path: Path) -> None:
    """CI runs taskq's half alone: a failure on the known list passes, any other fails, and
    a known failure that passes now is pointed out."""
    tasks = "t.integration.test_tasks.test_tasks"
    known = tmp_path / "known.txt"
    known.write_text("# reason\nt/integration/test_tasks.py::test_tasks::test_b  # in-process\n"
                     "t/integration/test_tasks.py::test_tasks::test_c\n")
    _junit(tmp_path / "taskq.xml", [(tasks, "test_a", "passed"), (tasks, "test_b", "failed"),
                                    (tasks, "test_c", "passed")])
    out = subprocess.run([sys.executable, str(COMPARE), str(tmp_path), "--expect", str(known)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 tests taskq's worker fails that are not known failures:" in out.stdout
    assert "  test_tasks::test_tasks::test_c" in out.stdout.splitlines()
    _junit(tmp_path / "taskq.xml", [(tasks, "test_a", "failed"), (tasks, "test_b", "failed")])
    out = subprocess.run([sys.executable, str(COMPARE), str(tmp_path), "--expect", str(known)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "  test_tasks::test_tasks::test_a: AssertionError: nope" in out.stdout.splitlines()
