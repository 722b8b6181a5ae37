"""``astroscale-fl node {launcher,status,supernode}``: the warm ClientApp runtime, a node's own status,
and Flower's SuperNode with short polls (:mod:`astroscale_fl.deploy.fast_poll`).

``node launcher`` runs next to a ``flower-supernode --isolation process`` (``scripts/start-supernode.sh
--warm`` starts both); ``node status --data-dir DIR`` prints what the node did, from its launcher's
``GET /status`` when one runs, else from the status file the ClientApp keeps in DIR.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import urllib.request
from pathlib import Path

from astroscale_fl.data.node_dirs import node_state_dir
from astroscale_fl.deploy.node_status import load_status, validate_status, write_private
from astroscale_fl.errors import ConfigError, UserArgumentParser, report_user_errors

LAUNCHER_FILE = "launcher.json"  # <data-dir>/.astroscale/launcher.json: pid and metrics port of the running launcher


def _data_dir(value: str) -> Path:
    path = Path(value)
    if not path.is_dir():
        raise ConfigError(f"--data-dir {value}: not a directory")
    return path.resolve()


def _runtime_api_address(value: str) -> str:
    """``--runtime-api-address``: ``HOST:PORT`` on loopback with a port in 1..65535."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"--runtime-api-address {value}: expected HOST:PORT with a port in 1..65535")
    if host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"--runtime-api-address {value}: the Runtime API hands out task tokens; "
                          "keep it on loopback (127.0.0.1)")
    return value


def _metrics_host(host: str) -> str:
    """``--metrics-host``: an address this machine can resolve (checked before the slow imports)."""
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--metrics-host {host}: not an address or a name this machine resolves "
                          f"({getattr(exc, 'strerror', None) or exc})") from None
    return host


@report_user_errors
def launcher_main(argv: list[str]) -> int:
    """``astroscale-fl node launcher --data-dir DIR --runtime-api-address HOST:PORT [...]``."""
    parser = UserArgumentParser(
        prog="astroscale-fl node launcher",
        description="Warm ClientApp runtime for a SuperNode started with --isolation process: imports torch, pandas "
                    "and pyarrow once and forks one flwr-clientapp per message (no per-message import cost). "
                    "scripts/start-supernode.sh --warm starts it for you.")
    parser.add_argument("--data-dir", required=True, help="the node's data directory (status file, launcher.json)")
    parser.add_argument("--runtime-api-address", default="127.0.0.1:9094",
                        help="the SuperNode's Runtime API (its --port), loopback only (default 127.0.0.1:9094)")
    parser.add_argument("--superexec-auth-secret-file", help="the secret the SuperNode was given (signs AcquireTask)")
    parser.add_argument("--metrics-port", type=int, default=0,
                        help="serve Prometheus /metrics and GET /status on 127.0.0.1:PORT (default 0: off)")
    parser.add_argument("--metrics-host", default="127.0.0.1",
                        help="address to bind the metrics to (default 127.0.0.1; anything else exposes the node's "
                             "row count, rounds and epsilon to whoever can reach that address)")
    parser.add_argument("--poll", type=float, default=0.05, help="seconds between AcquireTask polls (default 0.05)")
    args = parser.parse_args(argv)
    data_dir = _data_dir(args.data_dir)
    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port: expected 0..65535, got {args.metrics_port}")
    if not 0.01 <= args.poll <= 10:
        raise ConfigError(f"--poll: expected 0.01..10 seconds, got {args.poll}")
    _runtime_api_address(args.runtime_api_address)
    if args.metrics_port:
        _metrics_host(args.metrics_host)
    secret = None
    if args.superexec_auth_secret_file:
        try:
            secret = Path(args.superexec_auth_secret_file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--superexec-auth-secret-file {args.superexec_auth_secret_file}: {exc.strerror}") from None
        if not secret:
            raise ConfigError(f"--superexec-auth-secret-file {args.superexec_auth_secret_file}: empty")

    from astroscale_fl.deploy import launcher

    stats = launcher.LauncherStats()
    stats.warm_import_seconds = launcher.preimport()
    port = 0
    if args.metrics_port:
        from astroscale_fl.deploy.node_metrics import serve

        if args.metrics_host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: node metrics on {args.metrics_host}:{args.metrics_port} are readable by anyone who can reach it",
                  file=sys.stderr)
        try:
            port = serve(data_dir, stats, args.metrics_port, args.metrics_host).server_address[1]
        except OSError as exc:  # port taken, or an address that is not this machine's
            raise ConfigError(f"--metrics-host {args.metrics_host} --metrics-port {args.metrics_port}: cannot listen "
                              f"({exc.strerror or exc})") from None
    info = node_state_dir(data_dir) / LAUNCHER_FILE
    write_private(info, json.dumps({"pid": os.getpid(), "metrics_port": port, "metrics_host": args.metrics_host,
                                     "runtime_api_address": args.runtime_api_address, "started": time.time()}))
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    try:
        launcher.serve_forever(args.runtime_api_address, secret, args.poll, stats, should_stop=lambda: bool(stopping))
    finally:
        info.unlink(missing_ok=True)
    return 0


def _launcher_status(data_dir: Path) -> dict | None:
    try:
        info = json.loads((node_state_dir(data_dir) / LAUNCHER_FILE).read_text())
        os.kill(int(info["pid"]), 0)
        port = int(info.get("metrics_port") or 0)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # none running, or not our file
        return None
    if not 0 < port <= 65535:
        return None
    host = info.get("metrics_host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{host}:{port}/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.loads(resp.read())
    except (OSError, ValueError):
        return None
    return validate_status(doc, f"the launcher's {url}")


@report_user_errors
def status_main(argv: list[str]) -> int:
    """``astroscale-fl node status --data-dir DIR [--json]``."""
    parser = UserArgumentParser(prog="astroscale-fl node status",
                                     description="What this node did: rows, rounds trained, last round's seconds, "
                                                 "epsilon spent vs budget, declines (from its launcher's /status, or "
                                                 "from the status file in DIR when no launcher serves metrics).")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--json", action="store_true", help="print the JSON document")
    args = parser.parse_args(argv)
    data_dir = _data_dir(args.data_dir)
    status = _launcher_status(data_dir)
    if status is None:
        status = {**load_status(data_dir), "data_dir": str(data_dir), "launcher": None}
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    fmt = lambda v, spec=".4g": "-" if v is None else format(v, spec)  # noqa: E731
    print(f"node data dir     {status.get('data_dir', data_dir)}")
    print(f"rows              {status.get('rows', '-')}")
    print(f"rounds trained    {status.get('rounds_trained', 0)}")
    print(f"last train        {fmt(status.get('last_train_seconds'), '.3f')} s")
    print(f"epsilon spent     {fmt(status.get('epsilon'))} of budget {fmt(status.get('epsilon_budget'))}")
    print(f"declines          {status.get('declines', 0)}" + (f" (last: {status['last_decline']})" if status.get("last_decline") else ""))
    busy = status.get("in_progress")
    print(f"in progress       {busy['kind'] + ' round ' + str(busy['round']) if busy else '-'}")
    launcher = status.get("launcher")
    print("warm launcher     " + (f"pid {launcher['pid']}, {launcher['clientapps_started']} ClientApps "
                                  f"({launcher['clientapps_failed']} failed)" if launcher else "not running (or no --metrics-port)"))
    return 0


def main(argv: list[str]) -> int:
    """``astroscale-fl node <launcher|status|supernode> ...``."""
    from astroscale_fl.deploy import fast_poll

    commands = {"launcher": launcher_main, "status": status_main, "supernode": fast_poll.main}
    if not argv or argv[0] not in commands:
        print("usage: astroscale-fl node {launcher,status,supernode} [args...]  (see --help of each)", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])
