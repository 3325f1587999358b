"""A Celery app equivalent to appmod, for running the real Celery tools against taskq workers
(`celery -A celery_equiv inspect ping`). Its broker comes from CELERY_EQUIV_BROKER."""

from __future__ import annotations

import json
import os

from celery import Celery

app = Celery("celery_equiv", broker=os.environ["CELERY_EQUIV_BROKER"])
app.conf.broker_transport_options = json.loads(os.environ.get("CELERY_EQUIV_OPTIONS", "{}"))
