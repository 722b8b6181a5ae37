"""Our Flower strategies (server side), built from the ``strategy`` config group."""

from __future__ import annotations

from omegaconf import DictConfig

from astroscale_fl.errors import ConfigError
from astroscale_fl.federation.secagg.scheme import secagg_params
from astroscale_fl.privacy.settings import node_level_settings
from strategies.distributed_dp import DistributedDpFedAvg
from strategies.dp_fedavg import DpFedAvg
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedprox import FedProx
from strategies.scaffold import Scaffold
from strategies.secaggplus import SecAggPlus

STRATEGIES = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "scaffold": Scaffold}


def build_strategy(cfg: DictConfig) -> FedAvg:
    """The strategy named in ``cfg.strategy``, with the federation's sampling settings."""
    try:
        cls = STRATEGIES[cfg.strategy.name]
    except KeyError:
        raise ConfigError(f"strategy: unknown strategy {cfg.strategy.name!r}; expected one of {sorted(STRATEGIES)}") from None
    params = {k: v for k, v in cfg.strategy.items() if k != "name"}  # checked by the strategy's own Params
    fed = cfg.federation
    strategy = cls(
        fraction_train=fed.fraction_train,
        fraction_evaluate=fed.fraction_evaluate,
        min_train_nodes=fed.min_train_nodes,
        seed=int(cfg.seed),
        **params,
    )
    node_level = node_level_settings(cfg.privacy)
    if node_level is not None and fed.secure_aggregation == "secaggplus":
        return DistributedDpFedAvg(strategy, node_level, int(fed.num_nodes), secagg_params(cfg),
                                   float(fed.round_timeout))
    if node_level is not None:
        return DpFedAvg(strategy, node_level, int(fed.num_nodes))
    if fed.secure_aggregation == "secaggplus":
        return SecAggPlus(strategy, secagg_params(cfg), float(fed.round_timeout))
    return strategy


__all__ = ["DistributedDpFedAvg", "DpFedAvg", "FedAdam", "FedAvg", "FedProx", "STRATEGIES", "Scaffold", "SecAggPlus", "build_strategy"]
