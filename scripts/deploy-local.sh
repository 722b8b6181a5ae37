#!/usr/bin/env bash
# One-command local deployment on 127.0.0.1 with TLS and SuperNode authentication.
#
#   scripts/deploy-local.sh N [hydra overrides...]
#   OUT_DIR=/tmp/run scripts/deploy-local.sh 3 federation.num_rounds=5
#
# Writes N node data directories from the embedded catalog, a test CA / server certificate / node
# keys, starts a SuperLink (runtime dependency installation off: the app runs from this
# environment) and N SuperNodes, registers the node keys, runs the app with `flwr run --stream`,
# and shuts everything down (also on Ctrl-C or failure). history.csv, metrics.json and model/
# land in $OUT_DIR (default: a new directory under outputs/, printed at the end); certificates,
# node data, the SuperLink database and per-process logs in $OUT_DIR/deploy/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
export PATH="$(dirname "$py"):$PATH"
cd "$root"   # `flwr run .` needs the app directory; OUT_DIR is resolved before this
[[ -n "${OUT_DIR:-}" ]] && export OUT_DIR="$(cd "$OLDPWD" && mkdir -p "$OUT_DIR" && cd "$OUT_DIR" && pwd)"
exec "$py" -m astroscale_fl.deploy.local "$@"
