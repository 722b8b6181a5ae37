"""Each strategy's parameters as a frozen dataclass that checks its own ranges (pfl-research's
``FedProxParams`` pattern), torch-free, below the run config so that its check can build them.

Each class is also the schema of its ``strategy=`` choice: its fields are the keys of
``conf/strategy/<name>.yaml`` (which holds the defaults), and :data:`astroscale_fl.run_config.SCHEMAS`
merges the YAML onto :func:`astroscale_fl.config.schema_of` of it, so a key is defined once. The
strategies in ``strategies/`` build their ``Params`` from their keyword arguments and read their
parameters from it (``self.hyper``), so a strategy made in code is checked the same way as one made
from the config; :func:`strategy_params` is the run config's door. A range error is the one-line
:class:`~astroscale_fl.errors.ConfigError` naming ``strategy.<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from astroscale_fl.config import require


@dataclass(frozen=True)
class FedAvgParams:
    """``strategy=fedavg``: the server step on the averaged update (1 = plain FedAvg)."""

    server_lr: float

    def __post_init__(self) -> None:
        require(self.server_lr > 0, "strategy.server_lr", "a positive number", self.server_lr)


@dataclass(frozen=True)
class FedProxParams(FedAvgParams):
    """``strategy=fedprox``: FedAvg's, and the proximal strength ``mu`` (0 = FedAvg)."""

    mu: float

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.mu >= 0, "strategy.mu", "a number >= 0", self.mu)


@dataclass(frozen=True)
class FedAdamParams(FedAvgParams):
    """``strategy=fedadam``: server-side Adam's step, moment decays and adaptivity."""

    beta1: float
    beta2: float
    tau: float
    bias_correction: bool

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.tau > 0, "strategy.tau", "a positive number", self.tau)
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            require(0 <= value < 1, f"strategy.{key}", "a number in [0, 1)", value)


@dataclass(frozen=True)
class ScaffoldParams(FedAvgParams):
    """``strategy=scaffold``: the server step and the nodes' SGD step ``local_lr``."""

    local_lr: float

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.local_lr > 0, "strategy.local_lr", "a positive number", self.local_lr)


STRATEGY_PARAMS: dict[str, type[FedAvgParams]] = {
    "fedavg": FedAvgParams, "fedprox": FedProxParams, "fedadam": FedAdamParams, "scaffold": ScaffoldParams,
}


def strategy_params(section: Mapping) -> FedAvgParams:
    """The checked parameters of the ``strategy`` config group (its keys other than ``name``)."""
    name = section["name"]
    require(name in STRATEGY_PARAMS, "strategy", f"one of {sorted(STRATEGY_PARAMS)}", name)
    return STRATEGY_PARAMS[name](**{k: v for k, v in section.items() if k != "name"})
