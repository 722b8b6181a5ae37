"""Command-line entry points of the deployment helpers.

- ``node_data_main(argv)``: ``astroscale-fl node-data`` (write N node data directories);
- ``status_main(argv)``: ``astroscale-fl status`` (runs and SuperNodes of a SuperLink);
- ``certs_main(argv)``: test CA, server certificate and node keys (``astroscale-fl deploy certs``);
- ``deploy_main(argv)``: ``astroscale-fl deploy {certs,superlink,supernode,local}``.

``python -m astroscale_fl.deploy.cli {node-data,status,certs} ...`` runs them too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from astroscale_fl.errors import DataError, UserArgumentParser, report_user_errors


@report_user_errors
def node_data_main(argv: list[str]) -> int:
    """``astroscale-fl node-data OUT_DIR --nodes N [overrides...]``."""
    parser = UserArgumentParser(
        prog="astroscale-fl node-data",
        description="Write OUT_DIR/node-<i>/train.parquet (i = 1..N): node i's share of the configured task's "
                    "training split (same task, partition and seed as a simulation with N nodes), for SuperNodes "
                    "started with --node-config \"data-dir=OUT_DIR/node-<i>\".")
    parser.add_argument("out_dir", help="directory to write node-1 .. node-N into")
    parser.add_argument("--nodes", "-n", type=int, required=True, help="number of nodes N")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/ (task, partition, seed), e.g. partition=iid")
    args = parser.parse_intermixed_args(argv)  # overrides may follow --nodes N
    if args.nodes < 1:
        parser.error("--nodes must be >= 1")
    out = Path(args.out_dir)
    blocking = next((p for p in (out, *out.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise DataError(f"node-data OUT_DIR {args.out_dir}: {blocking} is a file, not a directory; give a directory to write node-1 .. node-N into")
    from astroscale_fl import config, run_config
    from astroscale_fl.deploy.split_nodes import source_name, write_node_dirs

    cfg = run_config.validate(config.compose(args.overrides))
    try:
        paths = write_node_dirs(cfg, args.out_dir, args.nodes)
    except OSError as exc:  # permissions, a full disk, a file where a node directory goes
        raise DataError(f"node-data OUT_DIR {args.out_dir}: cannot write ({exc.strerror or exc}: {exc.filename})") from None
    for path in paths:
        meta = json.loads((path / "node.json").read_text())
        print(f"{path}  rows={meta['rows']}  --node-config 'data-dir=\"{path.resolve()}\" source=\"{source_name(cfg)}\"'")
    return 0


@report_user_errors
def status_main(argv: list[str]) -> int:
    """``astroscale-fl status [--superlink HOST:PORT --root-certificates CA | --connection NAME]``."""
    parser = UserArgumentParser(prog="astroscale-fl status",
                                     description="Show the runs and SuperNodes a SuperLink knows, as tables.")
    parser.add_argument("--superlink", metavar="HOST:PORT", help="SuperLink address (its one HTTPS port)")
    parser.add_argument("--root-certificates", "--ca", dest="ca", metavar="CA.crt",
                        help="CA certificate that signed the SuperLink's certificate")
    parser.add_argument("--insecure", action="store_true", help="connect without TLS (test SuperLinks started with --insecure)")
    parser.add_argument("--connection", metavar="NAME",
                        help="a connection in $FLWR_HOME/config.toml instead of --superlink (default: flwr's default)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each query (default 30)")
    args = parser.parse_args(argv)
    if args.superlink and not (args.ca or args.insecure):
        parser.error("--superlink needs --root-certificates CA.crt (or --insecure)")
    from astroscale_fl.deploy.status import Connection, query, render

    status = query(Connection(name=args.connection, address=args.superlink, root_certificates=args.ca, insecure=args.insecure),
                   timeout=args.timeout)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        render(status)
    return 0


@report_user_errors
def certs_main(argv: list[str]) -> int:
    """Write a test CA, a SuperLink certificate and node keys."""
    parser = UserArgumentParser(
        prog="astroscale-fl deploy certs", description="Write a local CA (ca.crt), a SuperLink certificate (server.pem, server.key) and "
                                       "SuperNode key pairs (node-<i>, node-<i>.pub) for TESTING. Real deployments bring "
                                       "their own certificates and keys.")
    parser.add_argument("out_dir")
    parser.add_argument("--nodes", "-n", type=int, default=2, help="node key pairs to write (default 2)")
    parser.add_argument("--host", action="append", dest="hosts",
                        help="name or IP the SuperLink is reached at (repeatable; default 127.0.0.1, localhost, ::1)")
    parser.add_argument("--days", type=int, default=30, help="certificate validity (default 30 days)")
    args = parser.parse_args(argv)
    from astroscale_fl.deploy.certs import DEFAULT_HOSTS, make_all

    paths = make_all(args.out_dir, args.nodes, tuple(args.hosts or DEFAULT_HOSTS), args.days)
    for key, path in paths.items():
        print(f"{key:12s} {path}")
    return 0


DEPLOY_USAGE = """usage: astroscale-fl deploy {certs,superlink,supernode,local} [args...]

  certs DIR [--nodes N] [--host NAME ...]   test CA, SuperLink certificate and node key pairs
  superlink --certs DIR [--host H] [--port P] [--database FILE] [--insecure] [--no-node-auth] [--install-deps]
  supernode --superlink HOST:PORT --data-dir DIR --ca CA.crt --key NODE_KEY [--cold] [--metrics-port P]
            [--trusted-entities FILE] [--node-config 'require-dp=true min-noise-multiplier=1.0 ...']
  local [--nodes N] [overrides...]          SuperLink + N SuperNodes on 127.0.0.1, run the app, stop

Run `astroscale-fl deploy <command> --help` for a command's options."""


def deploy_main(argv: list[str]) -> int:
    """``astroscale-fl deploy <certs|superlink|supernode|local> ...``."""
    from astroscale_fl.deploy import local, superlink, supernode

    commands = {"certs": certs_main, "superlink": superlink.main, "supernode": supernode.main, "local": local.main}
    if not argv or argv[0] not in commands:
        print(DEPLOY_USAGE, file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return commands[argv[0]](argv[1:])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"node-data": node_data_main, "status": status_main, "certs": certs_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m astroscale_fl.deploy.cli {{{','.join(commands)}}} [args...]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
