"""The pool tests' ``harness`` fixture: ``harness(**settings)`` starts a ``Harness`` (a real
loop and prefork pool; ``start=False`` leaves it unstarted) and closes every one it made.
``first_child_hangs``: the first child started hangs before it can say ready."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pool_support import Harness, app


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []
    init_hooks = list(app.hooks.worker_process_init)

    def make(start: bool = True, **kwargs: Any) -> Harness:
        h = Harness(**kwargs)
        made.append(h)
        return h.start() if start else h

    yield make
    for h in made:
        h.close()
    # The pool froze this process's objects at its first fork, for good (a worker's parent
    # keeps them frozen): thaw them, so each test's pool freezes what exists then
    gc.unfreeze()
    app.hooks.worker_process_init[:] = init_hooks
    app._backend = None  # a backend made for one test's settings is not the next one's


@pytest.fixture
def first_child_hangs(harness: Callable[..., Harness], tmp_path: Path) -> Path:
    """The first child to start hangs for 60 s in ``worker_process_init``, before it can say
    ready; later children start as usual. Returns the flag file that child removes as it
    starts hanging. (The ``harness`` fixture takes the hook out again.)"""
    flag = tmp_path / "hang"
    flag.write_text("once")

    def hang_once() -> None:
        if flag.exists():
            flag.unlink()
            time.sleep(60)

    app.hooks.worker_process_init.append(hang_once)
    return flag
