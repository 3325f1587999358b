"""The pool tests' ``harness`` fixture: ``harness(**settings)`` starts a ``Harness`` (a real
loop and prefork pool; ``start=False`` leaves it unstarted) and closes every one it made."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    app.hooks.worker_process_init[:] = init_hooks
    app._backend = None  # a backend made for one test's settings is not the next one's
