"""A whole federation on 127.0.0.1: SuperLink + N SuperNodes with TLS and node authentication.

Used by ``scripts/deploy-local.sh`` and by the integration tests (``tests/deploy``). Every
process is started through ``scripts/start-superlink.sh`` / ``scripts/start-supernode.sh`` in
its own process group, so stopping it also stops the ``flower-superexec`` / ``flwr-clientapp``
children; :meth:`LocalFederation.close` (also on Ctrl-C and errors) sends SIGTERM, waits, then
SIGKILL.

Layout of ``work_dir``: ``certs/`` (test CA, server certificate, node keys), ``nodes/node-<i>/``
(each node's train.parquet), ``flwr-home/`` (FLWR_HOME: the ``local`` connection, installed
apps), ``logs/`` (one log per process), ``superlink.db``.
"""

from __future__ import annotations

import argparse
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

from astroscale_fl.deploy.status import write_flwr_home

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPTS = ROOT / "scripts"
CONNECTION = "local"


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
        self.fast_poll = fast_poll  # None: start-supernode.sh's default (fast polls with --warm only)
        self.certs = self.work / "certs"
        self.nodes_dir = self.work / "nodes"
        self.logs = self.work / "logs"
        self.home = self.work / "flwr-home"
        self.port = 0
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}
        self.procs: list[subprocess.Popen] = []
        self.node_ids: dict[int, str] = {}
        self.env = dict(os.environ)
        bin_dir = str(Path(sys.executable).parent)
        self.env["PATH"] = bin_dir + os.pathsep + self.env.get("PATH", "")
        self.env["FLWR_HOME"] = str(self.home)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)
        _LIVE.append(self)

    # -- set-up ------------------------------------------------------------------------------

    def prepare(self, num_nodes: int, overrides: list[str] | str = (), num_keys: int | None = None) -> None:
        """Certificates and keys (``num_keys``, default ``num_nodes``) and node data directories."""
        from astroscale_fl import config, run_config
        from astroscale_fl.deploy.certs import make_all
        from astroscale_fl.deploy.node_data import write_node_dirs

        self.logs.mkdir(parents=True, exist_ok=True)
        make_all(self.certs, num_keys or num_nodes)
        cfg = run_config.validate(config.compose(overrides))
        write_node_dirs(cfg, self.nodes_dir, num_nodes)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_superlink(self, timeout: float = 60.0) -> None:
        self.port = free_port()
        argv = [str(SCRIPTS / "start-superlink.sh"), "--port", str(self.port), "--database", str(self.work / "superlink.db")]
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
        out = subprocess.run(["flwr", *args], capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=timeout)
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
        argv = [str(SCRIPTS / "start-supernode.sh"), "--superlink", f"127.0.0.1:{self.port}",
                "--data-dir", str(self.nodes_dir / f"node-{data_index}"), "--source", "hipparcos", "--port", str(free_port())]
        if self.warm if warm is None else warm:
            argv += ["--warm", "--metrics-port", str(metrics_port)]
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
        """Start ``flwr run . local`` with the run-config; returns the (running) process."""
        argv = ["flwr", "run", ".", CONNECTION, "--run-config", run_config_arg(overrides, out_dir)]
        if stream:
            argv.append("--stream")
        name = f"run-{len([p for p in self.logs.glob('run-*.log')]) + 1}"
        if self.verbose:
            proc = subprocess.Popen(argv, env=self.env, cwd=ROOT, start_new_session=True)
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


def main(argv: list[str] | None = None) -> int:
    """``scripts/deploy-local.sh N [overrides...]``."""
    parser = argparse.ArgumentParser(prog="deploy-local.sh", description=(
        "Deploy on 127.0.0.1: write N node data directories, start a SuperLink and N SuperNodes with TLS and node "
        "authentication, run the app with `flwr run` and shut everything down. Outputs (history.csv, metrics.json, "
        "model/) go to $OUT_DIR (default: a new directory under outputs/); certificates, node data and logs to "
        "$OUT_DIR/deploy/."))
    parser.add_argument("nodes", type=int, help="number of SuperNodes")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. federation.num_rounds=5 model.widths=[64]")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("N must be >= 1")
    out_dir = Path(os.environ.get("OUT_DIR") or ROOT / "outputs" / f"deploy-{dt.datetime.now():%Y-%m-%d_%H-%M-%S}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = [f"federation.num_nodes={args.nodes}", *args.overrides]
    fed = LocalFederation(out_dir / "deploy", verbose=True)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # also when started with SIGINT ignored (background jobs)
    started = time.perf_counter()
    try:
        print(f"[deploy-local] writing certificates and {args.nodes} node data directories under {fed.work}", flush=True)
        fed.prepare(args.nodes, overrides)
        print("[deploy-local] starting SuperLink (TLS, node authentication) and SuperNodes", flush=True)
        fed.start(args.nodes)
        print(f"[deploy-local] SuperLink on 127.0.0.1:{fed.port}; running the app", flush=True)
        code = fed.run(overrides, out_dir).wait()
        ok = (out_dir / "metrics.json").is_file()
        if code != 0 or not ok:
            print(f"[deploy-local] run failed (flwr run exit {code}); logs in {fed.logs}", file=sys.stderr, flush=True)
            return 1
    except KeyboardInterrupt:
        print("\n[deploy-local] interrupted; shutting down", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # report and still clean up
        print(f"[deploy-local] error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        fed.close()
    print(f"[deploy-local] done in {time.perf_counter() - started:.0f} s; outputs: {out_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
