#!/usr/bin/env bash
# Install AstroScale FL into ./.venv (created when missing) with everything it needs.
# torch is installed first, pinned to the CPU build that pip finds on this machine's disk;
# an unpinned torch would pull a multi-GB CUDA build. On a GPU machine install the CUDA
# build of torch==2.13.0 into the venv before running this; device=auto then uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
"${PIP[@]}" install -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import astroscale_fl, torch, flwr; print(f'astroscale-fl {astroscale_fl.__version__} (torch {torch.__version__}, flwr {flwr.__version__}) installed in .venv')"
