#!/usr/bin/env bash
# Start a Flower SuperLink (the coordinating centre) with TLS and SuperNode authentication.
# Wrapper for this checkout's `astroscale-fl deploy superlink` (options: --help); installed, run that command.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m astroscale_fl.cli deploy superlink "$@"
