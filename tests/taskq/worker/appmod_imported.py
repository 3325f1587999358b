"""A task module that only the ``imports`` setting brings into a worker of appmod
(test_e2e_celery_settings.py)."""

from __future__ import annotations

from appmod import app


@app.task
def imported() -> str:
    return "imported"
