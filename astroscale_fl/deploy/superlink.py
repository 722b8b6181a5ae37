"""``astroscale-fl deploy superlink``: a Flower SuperLink (the coordinating centre) with TLS and
SuperNode authentication (``scripts/start-superlink.sh`` runs this).

One HTTPS port serves SuperNodes (Fleet API) and ``flwr`` (Control API). Runtime dependency
installation is off unless ``--install-deps``: a SuperLink normally installs each run's Python
dependencies from a package index (``uv sync``); AstroScale runs its ServerApp from the environment
astroscale-fl is installed in, which works without a package index (air-gapped centres, CI) and
keeps the server's code exactly what was deployed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from astroscale_fl.deploy.environment import child_env, command
from astroscale_fl.errors import ConfigError, UserArgumentParser, report_user_errors

SERVER_FILES = ("server.pem", "server.key", "ca.crt")


def parser() -> argparse.ArgumentParser:
    """The options of ``deploy superlink``."""
    p = UserArgumentParser(
        prog="astroscale-fl deploy superlink",
        description="Start a Flower SuperLink with TLS (--certs DIR: server.pem, server.key, ca.crt; `astroscale-fl "
                    "deploy certs` writes test ones) and SuperNode authentication. After it starts, authorise each "
                    "archive's node key with `flwr supernode register node-<i>.pub <connection>`.")
    p.add_argument("--certs", metavar="DIR", help="directory with server.pem, server.key and ca.crt")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9092, help="the one HTTPS port (default 9092)")
    p.add_argument("--database", metavar="FILE", help="SuperLink state database (default: in memory)")
    p.add_argument("--install-deps", action="store_true", help="let the SuperLink install each run's dependencies")
    p.add_argument("--insecure", action="store_true", help="no TLS: traffic is NOT encrypted (throwaway tests only)")
    p.add_argument("--no-node-auth", action="store_true", help="admit SuperNodes without registered keys")
    p.add_argument("extra", nargs="*", help="after --: extra flower-superlink arguments")
    return p


def superlink_argv(args: argparse.Namespace) -> list[str]:
    """The ``flower-superlink`` command line for parsed ``args``; ConfigError for missing files."""
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port: expected 1..65535, got {args.port}")
    argv = [command("flower-superlink"), "--host", args.host, "--port", str(args.port)]
    if args.insecure:
        argv.append("--insecure")
    else:
        if not args.certs:
            raise ConfigError("--certs DIR is required (or --insecure for a throwaway test)")
        for name in SERVER_FILES:
            if not (Path(args.certs) / name).is_file():
                raise ConfigError(f"--certs {args.certs}: {name} not found (`astroscale-fl deploy certs DIR` writes test certificates)")
        certs = Path(args.certs).resolve()
        argv += ["--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
                 "--ssl-ca-certfile", str(certs / "ca.crt")]
    if not args.no_node_auth:
        argv.append("--enable-supernode-auth")
    if not args.install_deps:
        argv.append("--disable-runtime-dependency-installation")
    if args.database:
        argv += ["--database", str(Path(args.database).resolve())]
    return argv + list(args.extra)


@report_user_errors
def main(argv: list[str]) -> int:
    """``astroscale-fl deploy superlink [options] [-- flower-superlink args]``: replaces this process."""
    args = parser().parse_args(argv)
    cmd = superlink_argv(args)
    if args.insecure:
        print("warning: --insecure: traffic between SuperNodes and the SuperLink is NOT encrypted", file=sys.stderr)
    os.execvpe(cmd[0], cmd, child_env())
