"""A whole federation on 127.0.0.1: SuperLink + N SuperNodes with TLS and node authentication.

``astroscale-fl deploy local`` (and ``scripts/deploy-local.sh``) and the integration tests
(``tests/deploy``) use it. Every process is started as ``astroscale-fl deploy superlink`` /
``astroscale-fl deploy supernode`` in its own process group, so stopping it also stops the
``flower-superexec`` / ``flwr-clientapp`` children; :meth:`LocalFederation.close` (also on Ctrl-C
and errors) sends SIGTERM, waits, then SIGKILL. Needs nothing but the installed package: the app
that ``flwr run`` submits is the one ``astroscale-fl app`` writes (the installed ServerApp and
ClientApp), and nothing is written outside ``work_dir`` and the output directory.

Layout of ``work_dir``: ``certs/`` (test CA, server certificate, node keys), ``nodes/node-<i>/``
(each node's train.parquet), ``app/`` (the Flower app), ``flwr-home/`` (FLWR_HOME: the ``local``
connection, installed apps), ``logs/`` (one log per process), ``superlink.db``.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

from astroscale_fl.deploy.environment import child_env, command
from astroscale_fl.deploy.flower_app import write_app
from astroscale_fl.deploy.status import write_flwr_home
from astroscale_fl.errors import AstroScaleError, ConfigError, UserArgumentParser, report_user_errors

CONNECTION = "local"
DEPLOY = [sys.executable, "-m", "astroscale_fl.cli", "deploy"]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_config_arg(overrides: list[str] | str, out_dir: str | Path) -> str:
    """The ``--run-config`` value: ``overrides="..." output-dir="..."`` (TOML strings)."""
    quote = lambda o: shlex.quote(o) if any(c.isspace() or c in "'\"" for c in o) else o  # noqa: E731
    text = overrides if isinstance(overrides, str) else " ".join(quote(o) for o in overrides)
    esc = lambda s: str(s).replace("\\", "\\\\").replace('"', '\\"')  # noqa: E731
    return f'overrides="{esc(text)}" output-dir="{esc(Path(out_dir).resolve())}"'


_LIVE: list[LocalFederation] = []


def close_all() -> None:
    """Stop every federation this process started that is still up (signal handlers, atexit)."""
    for fed in list(_LIVE):
        fed.close(grace=5.0)


def install_cleanup_handlers() -> None:
    """On SIGTERM / SIGHUP (a CI timeout, a closed terminal) and at exit, stop our federations first.

    Their processes live in their own sessions (so Ctrl-C reaches only us), hence nothing else
    would stop them if this process died without running its ``finally`` blocks.
    """
    atexit.register(close_all)

    def handler(signum, _frame):
        close_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, handler)


class LocalFederation:
    """Start, drive and stop a local SuperLink and its SuperNodes."""

    def __init__(self, work_dir: str | Path, tls: bool = True, node_auth: bool = True, verbose: bool = False,
                 warm: bool = False, fast_poll: bool | None = None) -> None:
        self.work = Path(work_dir).resolve()
        self.tls, self.node_auth, self.verbose, self.warm = tls, node_auth, verbose, warm
        self.fast_poll = fast_poll  # None: deploy supernode's default (fast polls when warm, none with --cold)
        self.certs = self.work / "certs"
        self.nodes_dir = self.work / "nodes"
        self.logs = self.work / "logs"
        self.home = self.work / "flwr-home"
        self.app = self.work / "app"
        self.port = 0
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}
        self.procs: list[subprocess.Popen] = []
        self.node_ids: dict[int, str] = {}
        self.env = child_env()
        self.env["FLWR_HOME"] = str(self.home)
        self.env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)
        _LIVE.append(self)

    # -- set-up ------------------------------------------------------------------------------

    def prepare(self, num_nodes: int, overrides: list[str] | str = (), num_keys: int | None = None) -> None:
        """Certificates and keys (``num_keys``, default ``num_nodes``), node data directories and the app."""
        from astroscale_fl import config, run_config
        from astroscale_fl.deploy.certs import make_all
        from astroscale_fl.deploy.split_nodes import write_node_dirs

        self.logs.mkdir(parents=True, exist_ok=True)
        make_all(self.certs, num_keys or num_nodes)
        cfg = run_config.validate(config.compose(overrides))
        write_node_dirs(cfg, self.nodes_dir, num_nodes)
        write_app(self.app, num_nodes)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_superlink(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        argv = [*DEPLOY, "superlink", "--port", str(self.port), "--database", str(self.work / "superlink.db")]
        argv += ["--certs", str(self.certs)] if self.tls else ["--insecure"]
        if not self.node_auth:
            argv.append("--no-node-auth")
        self.superlink = self._spawn("superlink", argv)
        write_flwr_home(self.home, f"127.0.0.1:{self.port}", str(self.certs / "ca.crt") if self.tls else None,
                        insecure=not self.tls, name=CONNECTION)
        deadline = time.monotonic() + timeout
        while "Uvicorn running" not in self.log_text("superlink"):
            if self.superlink.poll() is not None:
                raise RuntimeError(f"SuperLink exited ({self.superlink.returncode}):\n{self.log_text('superlink')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"SuperLink not up within {timeout:.0f} s:\n{self.log_text('superlink')[-2000:]}")
            time.sleep(0.2)

    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run a ``flwr`` command against this SuperLink (connection ``local``)."""
        out = subprocess.run([command("flwr"), *args], capture_output=True, text=True, env=self.env, cwd=self.work,
                             timeout=timeout)
        if check and out.returncode != 0:
            raise RuntimeError(f"flwr {' '.join(args)} failed ({out.returncode}): {(out.stdout + out.stderr)[-2000:]}")
        return out

    def register(self, index: int) -> str:
        """Authorise node key ``index`` at the SuperLink; return the node id."""
        out = self.flwr("supernode", "register", str(self.certs / f"node-{index}.pub"), CONNECTION)
        words = [w for w in out.stdout.split() if w.isdigit()]
        self.node_ids[index] = words[0] if words else ""
        return self.node_ids[index]

    def start_node(self, index: int, data_index: int | None = None, key_index: int | None = None, warm: bool | None = None,
                   metrics_port: int = 0, node_config: str = "", trusted_entities: str | None = None) -> subprocess.Popen:
        """Start SuperNode ``index`` on ``nodes/node-<data_index>`` with key ``node-<key_index>``; ``warm``
        (default: the federation's) adds the warm ClientApp runtime, ``node_config`` extra node config."""
        data_index = data_index or index
        key_index = key_index or index
        argv = [*DEPLOY, "supernode", "--superlink", f"127.0.0.1:{self.port}",
                "--data-dir", str(self.nodes_dir / f"node-{data_index}"), "--source", "hipparcos", "--port", str(free_port())]
        if self.warm if warm is None else warm:
            argv += ["--warm", "--metrics-port", str(metrics_port)]
        else:
            argv.append("--cold")
        if self.fast_poll is not None:
            argv.append("--fast-poll" if self.fast_poll else "--no-fast-poll")
        if node_config:
            argv += ["--node-config", node_config]
        if trusted_entities:
            argv += ["--trusted-entities", str(trusted_entities)]
        argv += ["--ca", str(self.certs / "ca.crt")] if self.tls else ["--insecure"]
        if self.node_auth:
            argv += ["--key", str(self.certs / f"node-{key_index}")]
        proc = self._spawn(f"supernode-{index}", argv)
        self.nodes[index] = proc
        return proc

    def start(self, num_nodes: int) -> None:
        """SuperLink, node registration and ``num_nodes`` SuperNodes."""
        self.start_superlink()
        for i in range(1, num_nodes + 1):
            if self.node_auth:
                self.register(i)
            self.start_node(i)

    # -- runs --------------------------------------------------------------------------------

    def run(self, overrides: list[str] | str, out_dir: str | Path, stream: bool = True) -> subprocess.Popen:
        """Start ``flwr run <app> local`` (the app :meth:`prepare` wrote) with the run-config; returns the
        (running) process."""
        argv = [command("flwr"), "run", str(self.app), CONNECTION, "--run-config", run_config_arg(overrides, out_dir)]
        if stream:
            argv.append("--stream")
        name = f"run-{len([p for p in self.logs.glob('run-*.log')]) + 1}"
        if self.verbose:
            proc = subprocess.Popen(argv, env=self.env, cwd=self.work, start_new_session=True)
            self.procs.append(proc)
            return proc
        return self._spawn(name, argv)

    def kill_node(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Kill SuperNode ``index`` and its children (a crashed archive)."""
        self.kill_nodes([index], sig)

    def kill_nodes(self, indices: list[int], sig: int = signal.SIGKILL) -> None:
        """Signal every SuperNode in ``indices`` (with its children) first, then wait for each: they stop together."""
        procs = [self.nodes.pop(i) for i in indices]
        for proc in procs:
            _signal_group(proc, sig)
        deadline = time.monotonic() + (10 if sig == signal.SIGKILL else 60)  # a SIGTERM'd SuperNode leaves the federation first
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=10)

    # -- shutdown ----------------------------------------------------------------------------

    def close(self, grace: float = 10.0) -> None:
        """SIGTERM every process group (nodes first), wait up to ``grace`` s, then SIGKILL."""
        ordered = [p for p in self.procs if p is not self.superlink] + ([self.superlink] if self.superlink else [])
        for proc in ordered:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in ordered:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in ordered:  # the group may hold children even after the leader exited
            _signal_group(proc, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=5)
        self.procs.clear()
        self.nodes.clear()
        if self in _LIVE:
            _LIVE.remove(self)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def node_count(nodes: int | None, overrides: list[str]) -> int:
    """``--nodes`` when given, else the configured ``federation.num_nodes`` (the app's default count)."""
    from astroscale_fl import config, run_config
    from astroscale_fl.data.nodes import resolve_num_nodes

    if nodes is not None:
        if nodes < 1:
            raise ConfigError(f"--nodes: expected an integer >= 1, got {nodes}")
        return nodes
    return int(resolve_num_nodes(run_config.validate(config.compose(overrides))).federation.num_nodes)


@report_user_errors
def main(argv: list[str] | None = None) -> int:
    """``astroscale-fl deploy local [--nodes N] [--cold] [overrides...]`` (``scripts/deploy-local.sh N [overrides]``)."""
    parser = UserArgumentParser(prog="astroscale-fl deploy local", description=(
        "Deploy on 127.0.0.1: write N node data directories, test certificates and keys, start a SuperLink and N "
        "SuperNodes (warm runtime, fast polls) with TLS and node authentication, run the app with `flwr run` and shut "
        "everything down (also on Ctrl-C or failure). Outputs (history.csv, metrics.json, model/) go to $OUT_DIR "
        "(default: a new directory under ./outputs/); certificates, node data and logs to $OUT_DIR/deploy/."))
    parser.add_argument("--nodes", "-n", type=int, help="number of SuperNodes (default: federation.num_nodes, i.e. 5)")
    parser.add_argument("--cold", action="store_true", help="plain flower-supernode processes (no warm runtime, no fast polls)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. federation.num_rounds=5 model.widths=[64]")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    nodes = node_count(args.nodes, args.overrides)
    out_dir = Path(os.environ.get("OUT_DIR") or Path.cwd() / "outputs" / f"deploy-{dt.datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = [f"federation.num_nodes={nodes}", *args.overrides]
    fed = LocalFederation(out_dir / "deploy", verbose=True, warm=not args.cold)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (background jobs)
    started = time.perf_counter()
    try:
        print(f"[deploy-local] writing certificates and {nodes} node data directories under {fed.work}", flush=True)
        fed.prepare(nodes, overrides)
        print("[deploy-local] starting SuperLink (TLS, node authentication) and SuperNodes", flush=True)
        fed.start(nodes)
        print(f"[deploy-local] SuperLink on 127.0.0.1:{fed.port}; running the app", flush=True)
        code = fed.run(overrides, out_dir).wait()
        ok = (out_dir / "metrics.json").is_file()
        if code != 0 or not ok:
            print(f"[deploy-local] run failed (flwr run exit {code}); logs in {fed.logs}", file=sys.stderr, flush=True)
            return 1
    except KeyboardInterrupt:
        print("\n[deploy-local] interrupted; shutting down", file=sys.stderr, flush=True)
        return 130
    except AstroScaleError:
        raise  # one line from report_user_errors, after the finally below
    except Exception as exc:  # report and still clean up
        print(f"[deploy-local] error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        fed.close()
    print(f"[deploy-local] done in {time.perf_counter() - started:.0f} s; outputs: {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
