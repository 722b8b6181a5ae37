"""``astroscale-fl deploy supernode``: a Flower SuperNode (one survey archive) that trains on its own
data directory only (``scripts/start-supernode.sh`` runs this).

The fast path is the default: the warm ClientApp runtime (the SuperNode runs with ``--isolation
process`` next to ``astroscale-fl node launcher``, which imports torch/pandas once and forks one
``flwr-clientapp`` per message; restarted if it dies) and fast polls (``astroscale-fl node
supernode``: Flower's SuperNode with its 3 s idle pull capped at ``--poll-interval``). ``--cold``
runs plain ``flower-supernode`` (a fresh ClientApp process per message; ``--fast-poll`` adds the
short polls to it). The launcher signs AcquireTask with a secret kept 0600 in
``DIR/.astroscale/``. SIGTERM / SIGINT stop the SuperNode and the launcher together.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from astroscale_fl.atomic import write_bytes
from astroscale_fl.data.node_dirs import node_state_dir
from astroscale_fl.deploy.environment import child_env, command
from astroscale_fl.deploy.fast_poll import DEFAULT_POLL_INTERVAL
from astroscale_fl.errors import ConfigError, UserArgumentParser, report_user_errors

SECRET_FILE = "superexec.secret"
RESTART_DELAY = 0.5  # seconds before a dead launcher is started again
STOP_GRACE = 30.0  # seconds the SuperNode may take to leave the federation after SIGTERM


def parser() -> argparse.ArgumentParser:
    """The options of ``deploy supernode``."""
    p = UserArgumentParser(
        prog="astroscale-fl deploy supernode",
        description="Start a Flower SuperNode that trains on DIR/train.parquet only (columns id, the task's raw inputs "
                    "and its target; `astroscale-fl node-data` writes test ones). Warm ClientApp runtime and fast polls "
                    "unless --cold.")
    p.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the SuperLink's address")
    p.add_argument("--data-dir", required=True, metavar="DIR", help="this archive's data directory (train.parquet)")
    p.add_argument("--ca", metavar="CA.crt", help="the CA that signed the SuperLink's certificate")
    p.add_argument("--key", metavar="NODE_KEY", help="this node's private key (OpenSSH, ECDSA) registered at the centre")
    p.add_argument("--source", help="the catalog's name (node config source=...)")
    p.add_argument("--port", type=int, default=9094,
                   help="the node's local ClientApp Runtime API port on 127.0.0.1 (default 9094; one per SuperNode)")
    p.add_argument("--insecure", action="store_true", help="no TLS: traffic is NOT encrypted (throwaway tests only)")
    speed = p.add_mutually_exclusive_group()
    speed.add_argument("--warm", dest="warm", action="store_true", default=True,
                       help="warm ClientApp runtime with fast polls (the default)")
    speed.add_argument("--cold", dest="warm", action="store_false",
                       help="plain flower-supernode: a fresh ClientApp process per message, Flower's polls")
    polls = p.add_mutually_exclusive_group()
    polls.add_argument("--fast-poll", dest="fast_poll", action="store_true", default=None,
                       help="short idle pulls (default with --warm; adds them to --cold)")
    polls.add_argument("--no-fast-poll", dest="fast_poll", action="store_false", help="Flower's own polls, also when warm")
    p.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL,
                   help=f"seconds between idle pulls with fast polls (default {DEFAULT_POLL_INTERVAL})")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="(warm) Prometheus /metrics and GET /status of this node on 127.0.0.1:P (default 0: off)")
    p.add_argument("--trusted-entities", metavar="FILE",
                   help="run only apps signed by these keys (YAML of public-key-id: \"ssh-ed25519 ...\")")
    p.add_argument("--node-config", default="", metavar="'K=V ...'",
                   help="extra node config, e.g. the privacy floor: require-dp=true min-noise-multiplier=X max-epsilon=X "
                        "max-rounds=N")
    p.add_argument("extra", nargs="*", help="after --: extra flower-supernode arguments")
    return p


def _checked(args: argparse.Namespace) -> Path:
    """Validate ``args``; return the resolved data directory."""
    data_dir = Path(args.data_dir)
    if not (data_dir / "train.parquet").is_file():
        raise ConfigError(f"--data-dir {args.data_dir}: train.parquet not found (astroscale-fl node-data writes test data)")
    data_dir = data_dir.resolve()
    if any(c.isspace() or c in "\"'" for c in str(data_dir)):
        raise ConfigError(f"--data-dir {data_dir}: must not contain spaces or quotes (it travels in --node-config)")
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port: expected 1..65535, got {args.port}")
    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port: expected 0..65535, got {args.metrics_port}")
    if args.metrics_port and not args.warm:
        raise ConfigError("--metrics-port needs the warm runtime (the launcher serves the metrics); drop --cold")
    if not 0.01 <= args.poll_interval <= 3:
        raise ConfigError(f"--poll-interval: expected seconds (0.01..3), got {args.poll_interval}")
    if not args.insecure and not args.ca:
        raise ConfigError("--ca CA.crt is required: the CA that signed the SuperLink's certificate (or --insecure "
                          "for a throwaway test)")
    if not args.insecure and not Path(args.ca).is_file():
        raise ConfigError(f"--ca {args.ca}: not found (the CA that signed the SuperLink's certificate)")
    if args.key and not Path(args.key).is_file():
        raise ConfigError(f"--key {args.key}: node key not found")
    if args.trusted_entities and not Path(args.trusted_entities).is_file():
        raise ConfigError(f"--trusted-entities {args.trusted_entities}: not found")
    return data_dir


def supernode_argv(args: argparse.Namespace, data_dir: Path) -> list[str]:
    """The SuperNode command line: ``astroscale-fl node supernode`` with fast polls, else ``flower-supernode``."""
    fast_poll = args.warm if args.fast_poll is None else args.fast_poll
    if fast_poll:
        argv = [sys.executable, "-m", "astroscale_fl.cli", "node", "supernode", "--poll-interval", str(args.poll_interval)]
    else:
        argv = [command("flower-supernode")]
    node_config = f'data-dir="{data_dir}"' + (f' source="{args.source}"' if args.source else "")
    if args.node_config:
        node_config += f" {args.node_config}"
    argv += ["--superlink", args.superlink, "--port", str(args.port), "--node-config", node_config]
    argv += ["--insecure"] if args.insecure else ["--root-certificates", str(Path(args.ca).resolve())]
    if args.key:
        argv += ["--auth-supernode-private-key", str(Path(args.key).resolve())]
    if args.trusted_entities:
        argv += ["--trusted-entities", str(Path(args.trusted_entities).resolve())]
    return argv


def write_secret(data_dir: Path) -> Path:
    """A fresh per-start secret in ``DIR/.astroscale/superexec.secret`` (directory 0700, file 0600)."""
    state = node_state_dir(data_dir)  # the launcher's secret and launcher.json (0700)
    state.mkdir(mode=0o700, exist_ok=True)
    state.chmod(0o700)
    return write_bytes(state / SECRET_FILE, os.urandom(32), mode=0o600)


class WarmNode:
    """A SuperNode with ``--isolation process`` and its launcher, restarted whenever it dies."""

    def __init__(self, supernode: list[str], launcher: list[str], env: dict[str, str]) -> None:
        self.supernode_argv, self.launcher_argv, self.env = supernode, launcher, env
        self.supernode: subprocess.Popen | None = None
        self.launcher: subprocess.Popen | None = None
        self.stopping = False

    def run(self) -> int:
        """Start both, keep the launcher alive while the SuperNode runs; the SuperNode's exit code."""
        self.supernode = subprocess.Popen(self.supernode_argv, env=self.env)
        while self.supernode.poll() is None and not self.stopping:
            if self.launcher is None or self.launcher.poll() is not None:
                if self.launcher is not None:
                    time.sleep(RESTART_DELAY)  # its message fails; the node goes on
                    if self.stopping or self.supernode.poll() is not None:
                        break
                self.launcher = subprocess.Popen(self.launcher_argv, env=self.env)
            time.sleep(0.1)
        code = self.stop()
        return 128 + signal.SIGTERM if self.stopping else code

    def stop(self) -> int:
        """SIGTERM both, wait (SIGKILL after the grace), return the SuperNode's exit code."""
        for proc in (self.launcher, self.supernode):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc, grace in ((self.launcher, 10.0), (self.supernode, STOP_GRACE)):
            if proc is None:
                continue
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return self.supernode.returncode if self.supernode is not None else 0


@report_user_errors
def main(argv: list[str]) -> int:
    """``astroscale-fl deploy supernode --superlink HOST:PORT --data-dir DIR [options] [-- flower-supernode args]``."""
    args = parser().parse_args(argv)
    data_dir = _checked(args)
    cmd = supernode_argv(args, data_dir)
    env = child_env()
    if args.insecure:
        print("warning: --insecure: traffic to the SuperLink is NOT encrypted", file=sys.stderr)
    if not args.warm:
        os.execvpe(cmd[0], cmd + list(args.extra), env)
    secret = write_secret(data_dir)
    cmd += ["--isolation", "process", "--superexec-auth-secret-file", str(secret), *args.extra]
    launcher = [sys.executable, "-m", "astroscale_fl.cli", "node", "launcher", "--data-dir", str(data_dir),
                "--runtime-api-address", f"127.0.0.1:{args.port}", "--superexec-auth-secret-file", str(secret),
                "--metrics-port", str(args.metrics_port)]
    node = WarmNode(cmd, launcher, env)

    def on_signal(_signum, _frame):
        node.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return node.run()
