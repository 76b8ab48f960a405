#!/usr/bin/env bash
# ruff check + ruff format --check on the given paths (default: the whole repository).
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF=${RUFF:-$( [ -x .venv/bin/ruff ] && echo .venv/bin/ruff || echo ruff )}
"$RUFF" check "${@:-.}"
"$RUFF" format --check "${@:-.}"
