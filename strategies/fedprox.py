"""FedProx (Li et al. 2020): FedAvg aggregation, a proximal term on the nodes.

The server sends ``mu`` with every training round; each node then minimises
``loss(w) + mu/2 * ||w - w_global||^2`` (see
:func:`astroscale_fl.federation.local_objectives.proximal_gradient`). With ``mu = 0`` the
proximal gradient is exactly zero and the run is bit-identical to FedAvg.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from astroscale_fl.federation.protocol import ProximalTerm
from astroscale_fl.federation.strategy_params import FedProxParams
from strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg with a proximal term ``mu`` sent to the nodes in the round config
    (as :class:`~astroscale_fl.federation.protocol.ProximalTerm`)."""

    def __init__(self, *, mu: float, **kwargs) -> None:  # mu: from conf/strategy/fedprox.yaml, no second default
        super().__init__(**kwargs)
        self.hyper: FedProxParams = FedProxParams(self.hyper.server_lr, mu)

    def train_content(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        ProximalTerm(float(self.hyper.mu)).write(config)
        return super().train_content(server_round, arrays, config)
