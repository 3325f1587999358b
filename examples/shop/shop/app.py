"""The shop's taskq app. Its settings come from TASKQ_* variables in production; the test
plugin overrides them per test (own queue, own key prefix)."""

from __future__ import annotations

from taskq import TaskQ

app = TaskQ("shop", include=["shop.tasks"])
