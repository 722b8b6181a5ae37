#!/usr/bin/env bash
# Write a local CA, a SuperLink server certificate and SuperNode key pairs FOR TESTING.
# Wrapper for this checkout's `astroscale-fl deploy certs` (options: --help); installed, run that command.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"; py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m astroscale_fl.cli deploy certs "$@"
