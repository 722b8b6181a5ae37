#!/usr/bin/env bash
# Start a Flower SuperNode (one survey archive) that trains on its own data directory only.
#
#   scripts/start-supernode.sh --superlink HOST:PORT --data-dir DIR --ca CA.crt --key NODE_KEY
#                              [--source NAME] [--port 9094] [--insecure] [-- extra flower-supernode args]
#
# DIR must hold train.parquet (columns id, the task's raw inputs and its target;
# `astroscale-fl node-data` writes test ones from the embedded catalog). CA.crt verifies the
# SuperLink's certificate; NODE_KEY is this node's private key (OpenSSH, ECDSA), whose public
# half the centre has registered with `flwr supernode register`. --port is the node's local
# ClientApp API (127.0.0.1 only): give each SuperNode on one machine its own.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
[[ -x "$root/.venv/bin/flower-supernode" ]] && export PATH="$root/.venv/bin:$PATH"

# Flower's SuperExec polls for new ClientApp/ServerApp tasks every 1 s by default; 0.2 s takes ~0.4 s
# off each message on average for a negligible idle cost (override by exporting it).
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"

superlink="" data_dir="" ca="" key="" source="" port="9094" insecure=0
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --superlink) superlink="$2"; shift 2 ;;
    --data-dir) data_dir="$2"; shift 2 ;;
    --ca) ca="$2"; shift 2 ;;
    --key) key="$2"; shift 2 ;;
    --source) source="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --insecure) insecure=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$superlink" ]] || { echo "error: --superlink HOST:PORT is required" >&2; exit 2; }
[[ -n "$data_dir" ]] || { echo "error: --data-dir DIR is required" >&2; exit 2; }
[[ -f "$data_dir/train.parquet" ]] || { echo "error: $data_dir/train.parquet not found (astroscale-fl node-data writes test data)" >&2; exit 2; }
data_dir="$(cd "$data_dir" && pwd)"
[[ "$data_dir" != *[[:space:]\"]* ]] || { echo "error: --data-dir must not contain spaces or quotes" >&2; exit 2; }
node_config="data-dir=\"$data_dir\""
[[ -n "$source" ]] && node_config+=" source=\"$source\""

args=(--superlink "$superlink" --port "$port" --node-config "$node_config")
if [[ $insecure == 1 ]]; then
  echo "warning: --insecure: traffic to the SuperLink is NOT encrypted" >&2
  args+=(--insecure)
else
  [[ -f "$ca" ]] || { echo "error: --ca CA.crt is required (the CA that signed the SuperLink's certificate)" >&2; exit 2; }
  args+=(--root-certificates "$ca")
fi
if [[ -n "$key" ]]; then
  [[ -f "$key" ]] || { echo "error: node key $key not found" >&2; exit 2; }
  args+=(--auth-supernode-private-key "$key")
fi
exec flower-supernode "${args[@]}" "${extra[@]}"
