#!/usr/bin/env bash
# Write a local CA, a SuperLink server certificate and SuperNode key pairs FOR TESTING.
#
#   scripts/make-certs.sh DIR [--nodes N] [--host NAME_OR_IP ...] [--days 30]
#
# DIR/ca.crt, ca.key        test certificate authority (keep ca.key private)
# DIR/server.pem, .key      SuperLink certificate for the --host names (default 127.0.0.1, localhost, ::1)
# DIR/node-<i>, .pub        SuperNode i's ECDSA P-384 key pair (OpenSSH); register node-<i>.pub at the SuperLink
#
# Real deployments bring their own: the centre's certificate from its CA, and a key pair that each
# archive generates itself (e.g. ssh-keygen -t ecdsa -b 384 -N "" -f node-key) and sends only the .pub.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
py="$root/.venv/bin/python"; [[ -x "$py" ]] || py=python3
[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
exec "$py" -m astroscale_fl.deploy.cli certs "$@"
