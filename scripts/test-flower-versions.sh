#!/usr/bin/env bash
# Run the deployment and fast-poll tests against another Flower release (default 1.42) in a
# throwaway venv, next to the 1.41 that constraints.txt pins for CI and the shared .venv.
#
#   scripts/test-flower-versions.sh [pytest args...]     e.g. -m "not slow"
#   FLWR_VERSION=1.42.* VENV=/tmp/flwr142 scripts/test-flower-versions.sh   (VENV is reused when it exists)
#
# The venv gets torch==2.13.0 (the CPU build from pip's cache or index), every other package at
# constraints.txt's pin except Flower and what that Flower release needs newer (uv, certifi), then
# this checkout's package. The tests import the checkout (PYTHONPATH) and the venv's flwr.
set -euo pipefail
cd "$(dirname "$0")/.."
flwr_version="${FLWR_VERSION:-1.42.*}"
venv="${VENV:-$(mktemp -d /tmp/astroscale-flwr-XXXXXX)/venv}"
python="${PYTHON:-python3.11}"
if [[ ! -x "$venv/bin/python" ]]; then
  "$python" -m venv "$venv"
  constraints="$(mktemp)"
  trap 'rm -f "$constraints"' EXIT
  grep -v -E '^(flwr|uv|certifi)==' constraints.txt > "$constraints"
  pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
  "${pip[@]}" install -c "$constraints" torch==2.13.0
  "${pip[@]}" install -c "$constraints" ".[dev]" "flwr[simulation]==$flwr_version"
fi
export PATH="$venv/bin:$PATH" PYTHONPATH="$PWD"
python -c "import flwr, torch; print(f'flwr {flwr.__version__}, torch {torch.__version__} in $venv')"
exec python -m pytest -q -p no:cacheprovider tests/deploy "$@"
