#!/usr/bin/env bash
# Celery's own integration suite (t/integration from the installed Celery's sdist, fetched
# with pip at run time, never copied here) against a real `taskq worker` process, and the
# same harness against Celery's own worker as a separate process, for comparison.
#
#   bash ci/celery-conformance.sh [test files...]   (default: t/integration/test_tasks.py)
#
# CONFORMANCE_WORKERS="taskq" (or "celery") runs one worker's half only (default: both).
#
# Runs on a private redis-server (broker and backend): the suite's tasks talk to Redis db 0
# directly. Logs, JUnit files and compare.txt (ci/conformance/compare.py: the figures, and the
# tests taskq fails that Celery's worker passes) go to $CONFORMANCE_OUT (default:
# ./conformance-out). Exit 1 when taskq fails a test Celery's worker passes.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$(realpath -m "${CONFORMANCE_OUT:-conformance-out}")"
FILES=("$@")
[ ${#FILES[@]} -eq 0 ] && FILES=(t/integration/test_tasks.py)
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'kill "${REDIS_PID:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

VERSION="$("$PY" -c 'import celery; print(celery.__version__)')"
"$PY" -m pip download --quiet --no-deps --no-binary :all: "celery==$VERSION" -d "$WORK"
tar xzf "$WORK/celery-$VERSION.tar.gz" -C "$WORK"
SUITE="$WORK/celery-$VERSION"
# Upstream reruns flaky tests with pytest-rerunfailures; without it the marker is inert.
"$PY" -c 'import pydantic' 2>/dev/null || {
    echo "Celery's t/integration/tasks.py needs pydantic: $PY -m pip install pydantic" >&2
    exit 2
}

PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" \
    >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

export TEST_BROKER="redis://127.0.0.1:$PORT/0" TEST_BACKEND="redis://127.0.0.1:$PORT/0"
export PYTHONPATH="$ROOT/ci/conformance:$SUITE"
export CONFORMANCE_LOG_DIR="$OUT"

# With CONFORMANCE_EXPECT, its known failures are deselected (most of them wait out a
# timeout): what runs must pass.
deselect=()
if [ -n "${CONFORMANCE_EXPECT:-}" ]; then
    while IFS= read -r line; do
        entry="${line%%  #*}"
        entry="${entry%"${entry##*[![:space:]]}"}"
        [[ -z "$entry" || "$entry" == \#* ]] || deselect+=(--deselect "$entry")
    done <"$CONFORMANCE_EXPECT"
fi

status=0
for worker in ${CONFORMANCE_WORKERS:-taskq celery}; do
    redis-cli -p "$PORT" flushall >/dev/null
    echo "== $worker worker: ${FILES[*]}"
    (cd "$SUITE" && CONFORMANCE_WORKER=$worker WORKER_LOGLEVEL=INFO "$PY" -m pytest \
        -p celery.contrib.pytest -p conformance_plugin -p no:cacheprovider -q -rfEs --timeout 300 \
        --junitxml "$OUT/$worker.xml" "${deselect[@]}" "${FILES[@]}") >"$OUT/$worker.txt" 2>&1 \
        || status=1
    tail -n 1 "$OUT/$worker.txt"
done
# Per file, passed/failed/skipped of each worker (the README's figures), then the tests
# Celery's worker passes and taskq's does not. With both halves run, that list decides the
# exit status: each worker fails some tests a separate worker process cannot pass.
# CONFORMANCE_EXPECT=FILE (taskq's half alone, as CI runs it): the tests taskq is known to
# fail, each with its reason; any other failure is the exit status.
expect=()
[ -n "${CONFORMANCE_EXPECT:-}" ] && expect=(--expect "$(realpath "$CONFORMANCE_EXPECT")")
"$PY" "$ROOT/ci/conformance/compare.py" "$OUT" "${expect[@]}" | tee "$OUT/compare.txt" \
    && compared=0 || compared=1
workers="${CONFORMANCE_WORKERS:-taskq celery}"
[[ ( "$workers" == *taskq* && "$workers" == *celery* ) || ${#expect[@]} -gt 0 ]] \
    && status=$compared
exit $status
