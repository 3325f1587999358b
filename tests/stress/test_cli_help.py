"""Every command line answers -h as well as --help (a new user's first try)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from stress.cli import main as stress_main
from taskq.cli import main as taskq_main


@pytest.mark.parametrize(("cli", "args"), [
    (stress_main, ["-h"]),
    (stress_main, ["chaos", "-h"]),
    (taskq_main, ["-h"]),
    (taskq_main, ["worker", "-h"]),
])
def test_dash_h_prints_the_usage(cli, args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")


def test_the_worker_explains_its_optimization_flag():
    result = CliRunner().invoke(taskq_main, ["worker", "-h"])
    assert "fair gives a job only to" in result.output
