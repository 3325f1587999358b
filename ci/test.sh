#!/usr/bin/env bash
# Install taskq with its test dependencies into ./.venv and run the test suite.
# This is the README's test command; .ci/run calls it after starting the brokers.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
exec .venv/bin/python -m pytest -n 2 -p no:cacheprovider "$@"
