#!/usr/bin/env bash
# The test command: installs everything the suite needs, lints, and runs the tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k recycle).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh test
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
