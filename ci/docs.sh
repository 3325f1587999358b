#!/usr/bin/env bash
# Build the documentation (docs/, mkdocs.yml) with warnings as errors: a broken link, a missing
# page or an API reference entry that no longer exists fails CI. The site goes to site/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q -e '.[docs]'
exec .venv/bin/mkdocs build --strict --quiet
