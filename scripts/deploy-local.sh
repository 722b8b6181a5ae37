#!/usr/bin/env bash
# One-command local deployment on 127.0.0.1 with TLS and SuperNode authentication:
#   scripts/deploy-local.sh [N] [hydra overrides...]      (OUT_DIR=/tmp/run for the outputs' directory)
# Wrapper for this checkout's `astroscale-fl deploy local [--nodes N] [overrides]` (options: --help).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
[[ "${1:-}" =~ ^[0-9]+$ ]] && set -- --nodes "$@"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m astroscale_fl.cli deploy local "$@"
