#!/usr/bin/env bash
# The transport and worker tests on the oldest kombu taskq supports, in ./.venv-oldest.
# ci/test.sh runs everything on the newest kombu pip finds; the internals taskq reaches into
# (taskq/compat.py) must work across the whole declared range (pyproject: kombu>=5.3,<6).
# The oldest kombu that the test extras can be installed with is 5.3.4 (celery>=5.4, a test
# dependency, requires it); override with KOMBU_VERSION=... Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
KOMBU_VERSION="${KOMBU_VERSION:-5.3.4}"
python3 -m venv .venv-oldest
.venv-oldest/bin/python -m pip install -q --upgrade pip
.venv-oldest/bin/python -m pip install -q -e '.[test]' "kombu==${KOMBU_VERSION}"
installed="$(.venv-oldest/bin/python -c 'import kombu; print(kombu.__version__)')"
if [ "$installed" != "$KOMBU_VERSION" ]; then
    echo "test-oldest-kombu: asked for kombu $KOMBU_VERSION, got $installed" >&2
    exit 1
fi
echo "test-oldest-kombu: kombu $installed"
# Deselected: the Celery half of this test needs Celery >= 5.5's result keys. Celery 5.4 (the
# only Celery kombu 5.3.4 installs with) always puts "_" after result_backend_transport_options'
# global_keyprefix, so its client reads other keys than the worker writes under the test's
# "...:r:" prefix. Celery's doing, not kombu's: it fails the same way with kombu 5.7.
exec .venv-oldest/bin/python -m pytest -n 2 -p no:cacheprovider \
    --deselect "tests/taskq/worker/test_e2e_revoke.py::test_terminated_task_is_revoked_for_taskq_and_celery_clients" \
    tests/taskq/test_compat.py tests/taskq/transports tests/taskq/worker "$@"
