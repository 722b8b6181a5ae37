"""``federation.backend=ray``: Flower's simulation engine (Ray), on this machine or a Ray cluster.

Flower 1.41 offers two ways to simulate: ``flwr run .`` against a local SuperLink (a
background process that outlives the run) and the in-process ``run_simulation``. A Hydra
app and its multiruns need the in-process one; Flower marks it deprecated in 1.41 in favour
of ``flwr run``, which ``astroscale-fl`` supports too (the root pyproject is the Flower app).
``federation.ray_address`` joins an existing Ray cluster (``ray.init(address=...)``).

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
import warnings
from collections.abc import Iterator

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from omegaconf import DictConfig

from astroscale_fl.federation.engine import FIRST_NODE_ID


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
    if cfg.federation.get("ray_address"):
        backend_config["init_args"]["address"] = str(cfg.federation.ray_address)
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
        with warnings.catch_warnings(), _sequential_node_ids():
            warnings.simplefilter("ignore", DeprecationWarning)
            flwr_run_simulation(
                server_app=server_app, client_app=client_app, num_supernodes=int(cfg.federation.num_nodes),
                backend_config=backend_config, verbose_logging=verbose,
            )
    finally:
        torch.set_num_threads(previous_threads)
        flwr_logger.setLevel(previous)
        flwr_logger.removeFilter(deprecation_filter)


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
