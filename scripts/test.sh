#!/usr/bin/env bash
# The whole test suite: lint and strict typing first (fast, and they keep the code one
# style), then pytest. Extra arguments go to pytest (e.g. `-m slow` for the long tiers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
