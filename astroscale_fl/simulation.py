"""Run a ServerApp and a ClientApp as a one-machine Flower simulation (Ray backend).

Flower 1.41 offers two ways to simulate: ``flwr run .`` against a local SuperLink (a
background process that outlives the run) and the in-process ``run_simulation``. A Hydra
app and its multiruns need the in-process one; Flower marks it deprecated in 1.41 in favour
of ``flwr run``, which ``astroscale-fl`` supports too (the root pyproject is the Flower app).
"""

from __future__ import annotations

import logging
import os
import warnings

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from omegaconf import DictConfig


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
    flwr_logger = logging.getLogger("flwr")
    previous = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    deprecation_filter = _DropRunSimulationDeprecation()
    flwr_logger.addFilter(deprecation_filter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            flwr_run_simulation(
                server_app=server_app, client_app=client_app, num_supernodes=int(cfg.federation.num_nodes),
                backend_config=backend_config, verbose_logging=verbose,
            )
    finally:
        flwr_logger.setLevel(previous)
        flwr_logger.removeFilter(deprecation_filter)
