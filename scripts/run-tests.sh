#!/usr/bin/env bash
# Install (when needed), lint (ruff check: findings fail the run), then run the whole test
# suite, the slow end-to-end tests included.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast ones only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
python -m ruff check .
exec python -m pytest -q "$@"
