"""The ledger file the e2e worker apps (appmod*, canvasmod) write what tests observe to."""

from __future__ import annotations

import os


def note(ledger: str | None, line: str) -> None:
    """Append ``line`` to the ledger file (nothing without one): one ``os.write``, so lines
    written by several processes never interleave."""
    if not ledger:
        return
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
