"""Count what this process sends to Redis: each write to a socket is one round trip."""

from __future__ import annotations

from typing import Any

import pytest


class RedisCommands:
    """``sent``: one list per write to a Redis socket, the names of the commands in it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import redis

        self.sent: list[list[str]] = []
        cls = redis.connection.AbstractConnection
        original = cls.send_packed_command

        def spy(conn: Any, command: Any, check_health: bool = True) -> None:
            chunks = command if isinstance(command, list) else [command]
            self.sent.append(_names(b"".join(bytes(c) for c in chunks)))
            original(conn, command, check_health)

        monkeypatch.setattr(cls, "send_packed_command", spy)

    def clear(self) -> None:
        self.sent.clear()


def _names(raw: bytes) -> list[str]:
    """The command names in a RESP write: each command is ``*<n>\\r\\n$<len>\\r\\n<NAME>``."""
    names = []
    for part in raw.split(b"*")[1:]:
        lines = part.split(b"\r\n")
        if len(lines) > 2 and lines[0].isdigit() and lines[1].startswith(b"$") \
                and lines[2].isalpha():
            names.append(lines[2].decode())
    return names
