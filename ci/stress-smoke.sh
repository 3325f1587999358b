#!/usr/bin/env bash
# A short stress smoke: `taskq-stress run --suite kill-children` on Redis, RabbitMQ and the
# embedded SQLite broker, a few seconds per cell. Reports (JSON, JUnit) go to stress-reports/.
# Exit code: 0 every oracle passed, 1 an oracle failed, 2 the run could not be carried out.
# Usage: bash ci/stress-smoke.sh [extra taskq-stress run options, e.g. -A yourapp]
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# Always: a .venv made by the README's first command has no redis package.
.venv/bin/python -m pip install -q -e '.[redis,report]'
SEED="${TASKQ_STRESS_SEED:-1}"          # fixed, so CI runs the same schedules every time
DURATION="${TASKQ_STRESS_DURATION:-4}"
OUT="stress-reports/smoke-$SEED"
status=0
for broker in redis://127.0.0.1:6379/0 amqp://guest:guest@127.0.0.1:5672// sqlite://; do
    kind="${broker%%:*}"
    .venv/bin/taskq-stress run --suite kill-children --broker "$broker" --seed "$SEED" \
        --duration "$DURATION" --report-dir "$OUT/$kind" --junit "$OUT/$kind-junit.xml" \
        "$@" || status=$?
    [ "$status" -eq 0 ] || break
done
if [ "$status" -eq 0 ] && [ -d stress-corpus ]; then
    # The cases taskq-stress explore found and shrank: a regression suite.
    .venv/bin/taskq-stress run --corpus stress-corpus --seed "$SEED" --report-dir "$OUT/corpus" || status=$?
fi
exit "$status"
