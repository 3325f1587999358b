"""Every command line answers -h as well as --help (a new user's first try)."""

from __future__ import annotations

import click
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


def _commands(command: click.Command, path: tuple[str, ...] = ()
              ) -> list[tuple[tuple[str, ...], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            found += _commands(sub, (*path, name))
    return found


_TREE = [(cli_name, path, command)
         for cli_name, cli in (("taskq-stress", stress_main), ("taskq", taskq_main))
         for path, command in _commands(cli)]


def test_every_option_of_every_command_has_help_text():
    missing = [f"{cli} {' '.join(path)} {'/'.join(param.opts)}".replace("  ", " ")
               for cli, path, command in _TREE for param in command.params
               if isinstance(param, click.Option) and not param.hidden
               and not (param.help or "").strip()]
    assert missing == []


def test_every_command_and_group_says_what_it_does():
    bare = [f"{cli} {' '.join(path)}" for cli, path, command in _TREE
            if not (command.help or command.short_help or "").strip()]
    assert bare == []


@pytest.mark.parametrize(("cli", "path"), [(cli, path) for cli, path, _c in _TREE],
                         ids=[" ".join((cli, *path)) for cli, path, _c in _TREE])
def test_every_command_answers_dash_h(cli, path):
    main = stress_main if cli == "taskq-stress" else taskq_main
    result = CliRunner().invoke(main, [*path, "-h"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")


@pytest.mark.parametrize(("cli", "main"), [("taskq-stress", stress_main),
                                           ("taskq", taskq_main)])
def test_version_comes_from_the_package_metadata(cli, main):
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0, result.output
    assert version("taskq") in result.output and cli in result.output
