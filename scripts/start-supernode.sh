#!/usr/bin/env bash
# Start a Flower SuperNode (one survey archive): warm ClientApp runtime and fast polls unless --cold.
# Wrapper for this checkout's `astroscale-fl deploy supernode` (options: --help); installed, run that command.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m astroscale_fl.cli deploy supernode "$@"
