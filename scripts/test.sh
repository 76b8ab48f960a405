#!/usr/bin/env bash
# Runs the test suite. Creates .venv (if missing) with the project and its dev extra, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow" tests/layers`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DINOV2_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]"
"$VENV/bin/python" -m pytest "$@"
