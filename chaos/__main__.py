"""``python -m chaos``: see :mod:`chaos.cli`."""

from __future__ import annotations

from chaos.cli import cli

if __name__ == "__main__":
    cli(prog_name="python -m chaos")
