#!/usr/bin/env bash
# Start a Flower SuperLink (the coordinating centre) with TLS and SuperNode authentication.
#
#   scripts/start-superlink.sh --certs DIR [--host 0.0.0.0] [--port 9092] [--database FILE]
#                              [--install-deps] [--insecure] [--no-node-auth] [-- extra flower-superlink args]
#
# DIR holds server.pem, server.key and ca.crt (scripts/make-certs.sh writes test ones; real
# deployments use the centre's certificate). One HTTPS port serves SuperNodes (Fleet API) and
# `flwr` (Control API). After it starts, authorise each archive's node key with
#   flwr supernode register node-<i>.pub <connection>
#
# Runtime dependency installation: a SuperLink normally installs each run's Python dependencies
# from a package index (`uv sync`). AstroScale runs its ServerApp from this environment instead
# (astroscale-fl installed with its pinned dependencies), so this script passes
# --disable-runtime-dependency-installation unless --install-deps is given. That works without a
# package index (air-gapped centres, CI) and keeps the server's code exactly what was deployed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
[[ -x "$root/.venv/bin/flower-superlink" ]] && export PATH="$root/.venv/bin:$PATH"

# Flower's SuperExec polls for new ClientApp/ServerApp tasks every 1 s by default; 0.2 s takes ~0.4 s
# off each message on average for a negligible idle cost (override by exporting it).
export FLWR_SUPEREXEC_TASK_POLL_INTERVAL="${FLWR_SUPEREXEC_TASK_POLL_INTERVAL:-0.2}"

certs="" host="127.0.0.1" port="9092" database="" install_deps=0 insecure=0 auth=1
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --certs) certs="$2"; shift 2 ;;
    --host) host="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --database) database="$2"; shift 2 ;;
    --install-deps) install_deps=1; shift ;;
    --insecure) insecure=1; shift ;;
    --no-node-auth) auth=0; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

args=(--host "$host" --port "$port")
if [[ $insecure == 1 ]]; then
  echo "warning: --insecure: traffic between SuperNodes and the SuperLink is NOT encrypted" >&2
  args+=(--insecure)
else
  [[ -n "$certs" ]] || { echo "error: --certs DIR is required (or --insecure for a throwaway test)" >&2; exit 2; }
  for f in server.pem server.key ca.crt; do
    [[ -f "$certs/$f" ]] || { echo "error: $certs/$f not found (scripts/make-certs.sh writes test certificates)" >&2; exit 2; }
  done
  args+=(--ssl-certfile "$certs/server.pem" --ssl-keyfile "$certs/server.key" --ssl-ca-certfile "$certs/ca.crt")
fi
[[ $auth == 1 ]] && args+=(--enable-supernode-auth)
[[ $install_deps == 0 ]] && args+=(--disable-runtime-dependency-installation)
[[ -n "$database" ]] && args+=(--database "$database")
exec flower-superlink "${args[@]}" "${extra[@]}"
