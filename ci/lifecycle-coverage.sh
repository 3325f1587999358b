#!/usr/bin/env bash
# The delivery-guarantee table's unit tests (tests/taskq/worker/test_lifecycle.py) with the
# line and branch coverage of taskq/worker/lifecycle.py; fails below 95 % (issue 19).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/taskq/worker/test_lifecycle.py \
    --cov=taskq.worker.lifecycle --cov-branch --cov-report=term-missing --cov-fail-under=95
