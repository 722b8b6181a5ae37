#!/usr/bin/env bash
# Start a Flower SuperNode (one survey archive) that trains on its own data directory only.
#
#   scripts/start-supernode.sh --superlink HOST:PORT --data-dir DIR --ca CA.crt --key NODE_KEY
#       [--source NAME] [--port 9094] [--insecure] [--warm] [--metrics-port P]
#       [--fast-poll] [--poll-interval S] [--no-fast-poll]
#       [--trusted-entities FILE] [--node-config 'require-dp=true min-noise-multiplier=1.0 ...']
#       [-- extra flower-supernode args]
#
# DIR must hold train.parquet (columns id, the task's raw inputs and its target;
# `astroscale-fl node-data` writes test ones from the embedded catalog). CA.crt verifies the
# SuperLink's certificate; NODE_KEY is this node's private key (OpenSSH, ECDSA), whose public
# half the centre has registered with `flwr supernode register`. --port is the node's local
# ClientApp Runtime API (127.0.0.1 only): give each SuperNode on one machine its own.
#
# --warm            warm ClientApp runtime: the SuperNode runs with --isolation process and
#                   `astroscale-fl node launcher` (restarted if it dies) imports torch/pandas once and
#                   forks one flwr-clientapp per message; AcquireTask is signed with a secret kept
#                   0600 in DIR/.astroscale/. Stopping this script stops both. Implies --fast-poll.
# --fast-poll       run the SuperNode as `astroscale-fl node supernode`: Flower's flower-supernode with
#                   its idle pull (3 s) and reply polls (0.5 s) capped at --poll-interval S (default 0.2),
#                   so a round's message reaches the node within S; while idle the SuperLink serves
#                   1/S pulls a second per node. Needs flwr 1.41.x (refused otherwise).
# --no-fast-poll    plain flower-supernode, also with --warm.
# --metrics-port P  (with --warm) Prometheus /metrics and GET /status of this node on 127.0.0.1:P
#                   (`astroscale-fl node status --data-dir DIR` reads it).
# --trusted-entities FILE  run only apps signed by these keys (Flower app signing; YAML of
#                   public-key-id: "ssh-ed25519 ..."); other FABs get an error reply.
# --node-config 'K=V ...'  extra node config, e.g. this archive's privacy floor: require-dp=true,
#                   min-noise-multiplier=X, max-epsilon=X (lifetime), max-rounds=N.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
[[ -x "$root/.venv/bin/flower-supernode" ]] && export PATH="$root/.venv/bin:$PATH"

# Flower's SuperExec polls for new ClientApp/ServerApp tasks every 1 s by default; 0.2 s takes ~0.4 s
# off each message on average for a negligible idle cost (override by exporting it).
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"

superlink="" data_dir="" ca="" key="" source="" port="9094" insecure=0 warm=0 metrics_port=0 trusted="" more_config=""
fast_poll="" poll_interval="0.2"
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
    --warm) warm=1; shift ;;
    --fast-poll) fast_poll=1; shift ;;
    --no-fast-poll) fast_poll=0; shift ;;
    --poll-interval) poll_interval="$2"; fast_poll="${fast_poll:-1}"; shift 2 ;;
    --metrics-port) metrics_port="$2"; shift 2 ;;
    --trusted-entities) trusted="$2"; shift 2 ;;
    --node-config) more_config="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$superlink" ]] || { echo "error: --superlink HOST:PORT is required" >&2; exit 2; }
[[ -n "$data_dir" ]] || { echo "error: --data-dir DIR is required" >&2; exit 2; }
[[ -f "$data_dir/train.parquet" ]] || { echo "error: $data_dir/train.parquet not found (astroscale-fl node-data writes test data)" >&2; exit 2; }
[[ "$metrics_port" =~ ^[0-9]+$ && "$metrics_port" -le 65535 ]] || { echo "error: --metrics-port: expected 0..65535, got $metrics_port" >&2; exit 2; }
[[ "$metrics_port" == 0 || $warm == 1 ]] || { echo "error: --metrics-port needs --warm (the launcher serves the metrics)" >&2; exit 2; }
data_dir="$(cd "$data_dir" && pwd)"
[[ "$data_dir" != *[[:space:]\"]* ]] || { echo "error: --data-dir must not contain spaces or quotes" >&2; exit 2; }
node_config="data-dir=\"$data_dir\""
[[ -n "$source" ]] && node_config+=" source=\"$source\""
[[ -n "$more_config" ]] && node_config+=" $more_config"

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
if [[ -n "$trusted" ]]; then
  [[ -f "$trusted" ]] || { echo "error: --trusted-entities $trusted not found" >&2; exit 2; }
  args+=(--trusted-entities "$trusted")
fi
[[ -n "$fast_poll" ]] || fast_poll=$warm
supernode_cmd=(flower-supernode)
if [[ $fast_poll == 1 || $warm == 1 ]]; then   # our Python commands, from this checkout
  export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
  py="$(dirname "$(command -v flower-supernode)")/python"; [[ -x "$py" ]] || py=python3
  [[ $fast_poll == 1 ]] && supernode_cmd=("$py" -m astroscale_fl.cli node supernode --poll-interval "$poll_interval")
fi
[[ $warm == 1 ]] || exec "${supernode_cmd[@]}" "${args[@]}" "${extra[@]}"

# -- warm runtime: SuperNode (process isolation) + our launcher, stopped together ----------------
state="$data_dir/.astroscale"
mkdir -p "$state" && chmod 700 "$state"
secret="$state/superexec.secret"
(umask 077 && head -c 32 /dev/urandom > "$secret.tmp" && mv -f "$secret.tmp" "$secret")

"${supernode_cmd[@]}" "${args[@]}" --isolation process --superexec-auth-secret-file "$secret" "${extra[@]}" &
supernode=$!
(
  trap 'kill -TERM "$launcher" 2>/dev/null; wait "$launcher"; exit 0' TERM INT
  while kill -0 "$supernode" 2>/dev/null; do   # restart the launcher if it dies (its message fails, the node goes on)
    "$py" -m astroscale_fl.cli node launcher --data-dir "$data_dir" --runtime-api-address "127.0.0.1:$port" \
      --superexec-auth-secret-file "$secret" --metrics-port "$metrics_port" &
    launcher=$!
    wait "$launcher" || true
    sleep 0.5
  done
) &
supervisor=$!
stop() { kill -TERM "$supervisor" "$supernode" 2>/dev/null || true; }
trap 'stop; wait; exit 143' TERM INT
code=0
wait "$supernode" || code=$?
stop
wait "$supervisor" 2>/dev/null || true
exit "$code"
