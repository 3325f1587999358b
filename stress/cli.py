"""The ``taskq-stress`` command. For now it only mounts ``chaos`` (the fault injectors)."""

from __future__ import annotations

import click

from chaos.cli import cli as chaos_cli

__all__ = ["main"]


@click.group()
def main() -> None:
    """Stress taskq under injected faults."""


main.add_command(chaos_cli, name="chaos")
