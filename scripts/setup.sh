#!/usr/bin/env bash
# Creates .venv and installs the locked dependencies, the native engine (built from ./native
# out of the PyPI wheel laminardb==0.17.0) and this project. Re-runs only when the lock changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.lock-$(cat requirements.lock native/pyproject.toml native/repack.py pyproject.toml | "$PY" -c 'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])')
if [ -f "$stamp" ]; then exit 0; fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps ./native
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
rm -f .venv/.lock-*
touch "$stamp"
