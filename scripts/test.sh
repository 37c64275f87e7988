#!/usr/bin/env bash
# The whole test suite (lint first: it is fast and keeps the code one style).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
