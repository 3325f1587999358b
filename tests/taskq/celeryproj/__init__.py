"""A small Celery project, written as a Celery user would, that the drop-in tests run
unchanged on ``taskq worker -A celeryproj``. Its settings come from CELERYPROJ_* variables
so that each test gets its own queue and key prefixes."""

from .celery import app

__all__ = ["app"]
