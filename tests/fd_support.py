"""A process with more than 1,024 open files (issue 13 #4), for the tests of what must not
``select()`` on an fd numbered past 1023 (transports, the prefork pool)."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def many_open_fds(count: int = 1100) -> Iterator[None]:
    """Hold ``count`` more open fds (raising the soft RLIMIT_NOFILE if needed, restored after),
    so the next fds this process opens are numbered past 1023."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 512
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {wanted}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    fds: list[int] = []
    try:
        for _ in range(count):
            fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        assert max(fds) >= 1024
        yield
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
