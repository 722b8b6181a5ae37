"""``federation.backend=ray``: Flower's simulation engine (Ray), on this machine or a Ray cluster.

Flower 1.41 offers two ways to simulate: ``flwr run .`` against a local SuperLink (a
background process that outlives the run) and the in-process ``run_simulation``. A Hydra
app and its multiruns need the in-process one; Flower marks it deprecated in 1.41 in favour
of ``flwr run``, which ``astroscale-fl`` supports too (the root pyproject is the Flower app).
``federation.ray_address`` joins an existing Ray cluster (``ray.init(address=...)``).

Never hangs: ``ray_address: null`` starts a fresh local Ray instance (``address="local"``),
whatever ``ray_current_cluster`` file an earlier ``ray start`` left in Ray's temporary directory
(plain ``ray.init()`` would join that cluster, alive or dead, and retry a dead one for minutes).
A configured address must answer within ``federation.ray_connect_timeout`` seconds, else the run
stops with a one-line error. While Ray runs, SIGTERM and SIGINT are taken by a watcher thread
(Ray's C++ calls can hold the main thread for minutes, so Python's own handlers would not run):
it shuts Ray down (at most a few seconds) and ends the process with 128 + the signal number.

Same seed, same results as ``federation.backend=inprocess``: node ``i`` (``partition-id`` i)
gets the node id ``FIRST_NODE_ID + i`` in both backends (Flower draws node ids at random;
:func:`_sequential_node_ids` numbers them in creation order instead), so the strategies sample
the same nodes and the round loop aggregates the replies in the same order, and the driver
uses ``federation.client_threads`` torch threads, as the in-process engine does.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from omegaconf import DictConfig

from astroscale_fl.errors import ConfigError
from astroscale_fl.federation.engine import FIRST_NODE_ID
from astroscale_fl.federation.rounds import FederationError

# host:port, optionally behind ray:// (Ray Client); the host a name, IPv4 or [IPv6]
_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})$")
SHUTDOWN_GRACE = 5.0  # seconds ray.shutdown() may take after a signal before the process ends anyway


class _DropRunSimulationDeprecation(logging.Filter):
    """Hide Flower's deprecation notice for ``run_simulation`` (explained in the module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()


def run_simulation(server_app: ServerApp, client_app: ClientApp, cfg: DictConfig, verbose: bool = False) -> None:
    """Simulate ``cfg.federation.num_nodes`` SuperNodes on this machine."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    num_gpus = 0.0
    if cfg.device != "cpu":
        import torch

        if torch.cuda.is_available():
            # share the GPU among the virtual nodes that run at once
            num_gpus = 1.0 / max(1, int((os.cpu_count() or 1) // max(cfg.federation.client_cpus, 1)))
    backend_config = {
        "client_resources": {"num_cpus": float(cfg.federation.client_cpus), "num_gpus": num_gpus},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": verbose, "include_dashboard": False},
    }
    address = cfg.federation.get("ray_address")
    backend_config["init_args"]["address"] = str(address) if address else "local"
    flwr_logger = logging.getLogger("flwr")
    previous = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    deprecation_filter = _DropRunSimulationDeprecation()
    flwr_logger.addFilter(deprecation_filter)
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.federation.client_threads))  # the server's evaluation: as in-process
    try:
        with warnings.catch_warnings(), _sequential_node_ids(), stop_on_signals():
            warnings.simplefilter("ignore", DeprecationWarning)
            init_ray(backend_config["init_args"], float(cfg.federation.get("ray_connect_timeout", 30.0)))
            flwr_run_simulation(
                server_app=server_app, client_app=client_app, num_supernodes=int(cfg.federation.num_nodes),
                backend_config=backend_config, verbose_logging=verbose,
            )
    finally:
        torch.set_num_threads(previous_threads)
        flwr_logger.setLevel(previous)
        flwr_logger.removeFilter(deprecation_filter)


def parse_ray_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``federation.ray_address`` (``host:port`` or ``ray://host:port``), or a ConfigError."""
    match = _ADDRESS.match(str(address).strip())
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ConfigError(f"federation.ray_address: expected HOST:PORT or ray://HOST:PORT of a running Ray cluster "
                          f"(or null to start Ray here), got {address!r}")
    return match["host"].strip("[]"), port


def wait_for_ray(address: str, timeout: float) -> None:
    """Return once something accepts TCP connections at ``address``; FederationError after ``timeout`` s."""
    host, port = parse_ray_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
                return
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if time.monotonic() >= deadline:
            raise FederationError(f"federation.ray_address {address}: no Ray cluster answered within {timeout:g} s "
                                  f"(federation.ray_connect_timeout; last attempt: {reason}); start it, fix the "
                                  "address, or set federation.ray_address=null to start Ray here")
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def init_ray(init_args: dict, connect_timeout: float) -> None:
    """``ray.init(**init_args)`` (Flower's Ray backend then reuses it), bounded by ``connect_timeout``
    when ``init_args["address"]`` names a cluster to join: ray.init itself retries an address that
    does not answer for minutes."""
    import ray

    # as Flower's Ray backend does when it starts Ray: workers see this driver's sys.path
    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PYTHONPATH"] = pythonpath
    init_args = {"include_dashboard": False, **init_args, "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}}}
    address = init_args.get("address", "local")
    if address == "local":
        ray.init(**init_args)
        return
    started = time.monotonic()
    wait_for_ray(address, connect_timeout)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            ray.init(**init_args)
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=connect, name="ray-connect", daemon=True)
    worker.start()
    worker.join(max(0.1, connect_timeout - (time.monotonic() - started)))
    if not outcome:  # a port answers but no Ray cluster behind it: Ray would keep retrying
        print(f"error: federation.ray_address {address}: no Ray cluster answered within {connect_timeout:g} s "
              "(federation.ray_connect_timeout)", file=sys.stderr, flush=True)
        os._exit(2)  # the connecting thread is stuck in Ray's C++ code and would block the interpreter's exit
    if outcome[0] is not None:
        raise FederationError(f"federation.ray_address {address}: cannot join the Ray cluster: {outcome[0]}") from None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM / SIGINT end the process promptly while the block runs (see the module doc).

    Whichever thread the kernel hands a signal to, Python's C-level handler writes its number to a
    wakeup pipe (``signal.set_wakeup_fd``) at once; a watcher thread reads the pipe and stops Ray,
    so nothing waits for the main thread to come back from Ray's C++ code. The Python-level
    handlers do nothing meanwhile; the previous ones are back when the block ends.
    """
    watched = (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; whoever runs there handles them
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)

    def watch() -> None:
        while True:
            data = os.read(read_end, 1)
            if not data:  # the block ended
                return
            if data[0] in watched:
                print(f"\ninterrupted (signal {data[0]}): stopping Ray", file=sys.stderr, flush=True)
                _shutdown_ray(SHUTDOWN_GRACE)
                os._exit(128 + data[0])

    previous = {sig: signal.signal(sig, lambda *_: None) for sig in watched}
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="ray-signal-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(write_end)
        watcher.join()
        os.close(read_end)


def _shutdown_ray(grace: float) -> None:
    """``ray.shutdown()`` in a helper thread, waiting at most ``grace`` seconds for it."""
    import ray

    stopper = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    stopper.start()
    stopper.join(grace)


@contextlib.contextmanager
def _sequential_node_ids() -> Iterator[None]:
    """Number the simulated nodes FIRST_NODE_ID, FIRST_NODE_ID + 1, ... in creation order.

    Flower registers node ``i`` of the simulation (``partition-id`` i) i-th, drawing a random
    id for it; the in-memory link state draws node ids with ``exclude={SUPERLINK_NODE_ID, 0}``
    (run and task ids exclude the ids in use), which is how the node draw is told apart.
    """
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.server.superlink.linkstate import in_memory_linkstate as state_module

    draw = state_module.generate_rand_int_from_bytes
    node_ids = itertools.count(FIRST_NODE_ID)

    def next_id(num_bytes: int, exclude: set[int] | None = None) -> int:
        if exclude == {SUPERLINK_NODE_ID, 0}:
            return next(node_ids)
        return draw(num_bytes, exclude=exclude)

    state_module.generate_rand_int_from_bytes = next_id
    try:
        yield
    finally:
        state_module.generate_rand_int_from_bytes = draw
