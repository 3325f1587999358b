#!/usr/bin/env bash
# CI's part of Celery's conformance suite (ci/celery-conformance.sh): Celery 5.7's
# t/integration tests of tasks and inspect, and the canvas classes and chord tests that run in
# a few minutes, against a real `taskq worker` process. Tests taskq is known to fail
# (ci/conformance/known-failures.txt, each with its reason) are deselected; any other failure
# fails CI. The full run, both workers (about 20 minutes a worker):
#   bash ci/celery-conformance.sh t/integration/test_tasks.py t/integration/test_inspect.py \
#       t/integration/test_canvas.py
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q -e '.[conformance]'
C=t/integration/test_canvas.py
export CONFORMANCE_WORKERS=taskq CONFORMANCE_EXPECT=ci/conformance/known-failures.txt
export CONFORMANCE_OUT="${CONFORMANCE_OUT:-conformance-out}"
exec bash ci/celery-conformance.sh t/integration/test_tasks.py t/integration/test_inspect.py \
    "$C::test_group" "$C::test_link_error" "$C::test_xmap_xstarmap" \
    "$C::test_signature_serialization" "$C::test_result_set" \
    "$C::test_chain::test_header_failure_fails_the_chords_after_a_group_body" \
    "$C::test_chord::test_nested_group_chain" \
    "$C::test_chord::test_nested_chord_group_chain_group_tail" \
    "$C::test_chord::test_chord_error_propagation_with_different_body_types" \
    "$C::test_chord::test_errbacks_of_chord_in_group_body_run_on_header_failure" \
    "$C::test_chord::test_errback_set_as_one_signature_runs_on_header_failure" \
    "$C::test_chord::test_link_error_option_with_link_error_of_group_body" \
    "$C::test_chord::test_link_error_option_runs_once_for_chord_in_group_body_with_link_error"
