"""Broker and backend URLs: hiding passwords in anything shown to people."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(?P<head>[a-z0-9+.-]+://[^:/@;]*:)(?P<pw>[^@/;]*)(?P<at>@)", re.I)


def safe_url(url: str | None) -> str:
    """``url`` with every password replaced by ``**``; several ';'-separated URLs allowed."""
    if url is None:
        return "<none>"
    return _PASSWORD.sub(lambda m: f"{m['head']}**{m['at']}", url)
