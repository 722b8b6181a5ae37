#!/usr/bin/env bash
# Install (when needed) and run the whole test suite, the slow end-to-end tests included.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast ones only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest -q "$@"
