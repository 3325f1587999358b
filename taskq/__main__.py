"""``python -m taskq``: the same as the ``taskq`` command."""

from __future__ import annotations

from taskq.cli import main

main()
