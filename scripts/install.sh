#!/usr/bin/env bash
# Install AstroScale FL into ./.venv (created when missing) with everything it needs.
# torch is installed first, the CPU build pinned to the tested release that pip finds on this
# machine's disk; an unpinned torch would pull a multi-GB CUDA build. On a GPU machine install
# the CUDA build of torch==2.13.0 into the venv before running this; device=auto then uses it.
# constraints.txt pins every package to the set the tests passed with (reproducible installs);
# INSTALL_UNPINNED=1 installs from pyproject.toml's ranges instead (e.g. on Python 3.12 / 3.13).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
CONSTRAINTS=(-c constraints.txt)
[ "${INSTALL_UNPINNED:-0}" = 1 ] && CONSTRAINTS=()
"${PIP[@]}" install "${CONSTRAINTS[@]}" torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install "${CONSTRAINTS[@]}" -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import astroscale_fl, torch, flwr; print(f'astroscale-fl {astroscale_fl.__version__} (torch {torch.__version__}, flwr {flwr.__version__}) installed in .venv')"
