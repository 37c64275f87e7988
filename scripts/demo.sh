#!/usr/bin/env bash
# The main job: a 2-worker engine, keyed ingestion, queries, per-worker row counts.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/laminardb-demo "$@"
