"""A task that reports its progress with ``update_state``, for a worker of appmod that
imports this module (``imports`` setting; test_e2e_celery_settings.py)."""

from __future__ import annotations

import os
import time
from typing import Any

from appmod import app


@app.task(bind=True)
def progress(self: Any, gate: str) -> str:
    self.update_state(state="PROGRESS", meta={"done": 1, "of": 2})
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)  # the test opens the gate once it saw PROGRESS
    return "finished"
