"""Fixtures for taskq-stress's tests: run the real CLI in a subprocess, read its reports."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


@dataclass
class StressRun:
    code: int
    output: str
    report: dict[str, Any]
    junit: str
    report_dir: Path

    def verdict(self, oracle: str, cell: int = 0) -> dict[str, Any]:
        found: dict[str, Any] = next(v for v in self.report["cells"][cell]["verdicts"]
                                     if v["oracle"] == oracle)
        return found


@pytest.fixture
def stress_run(tmp_path: Path):  # type: ignore[no-untyped-def]
    """``stress_run(*args, timeout=...)``: ``taskq-stress run ...`` with its reports in tmp_path."""

    def run(*args: str, timeout: float = 240, cwd: Path = ROOT) -> StressRun:
        report_dir = tmp_path / "reports"
        cmd = [sys.executable, "-m", "stress", "run", *args, "--report-dir", str(report_dir),
               "--json", str(tmp_path / "report.json"), "--junit", str(tmp_path / "junit.xml")]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        output = done.stdout + done.stderr
        try:
            report = json.loads((tmp_path / "report.json").read_text())
        except FileNotFoundError:
            report = {}
        junit_path = tmp_path / "junit.xml"
        junit = junit_path.read_text() if junit_path.exists() else ""
        return StressRun(done.returncode, output, report, junit, report_dir)

    return run


def write_suite(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
