"""SCAFFOLD (Karimireddy et al. 2020, "Stochastic Controlled Averaging"), option II.

Server state: the global model ``x`` and the server control variate ``c``. Each round the
sampled nodes receive ``x`` and ``c`` (an extra ArrayRecord, ``control``). Node ``i`` keeps
its own control variate ``c_i`` in its node state (never on the server), runs ``K`` SGD
steps ``y <- y - local_lr * (g(y) - c_i + c)``, then sets

    c_i+ = c_i - c + (x - y) / (K * local_lr)

and replies with its model ``y`` and ``delta_c_i = c_i+ - c_i`` (ArrayRecord
``control-delta``). The server updates

    x <- x + server_lr * mean_i(y_i - x)
    c <- c + (|S| / N) * mean_i(delta_c_i)

with ``|S|`` the nodes that replied and ``N`` the nodes connected. A node that is not sampled
keeps its ``c_i`` untouched. Control variates double the traffic each way; the round loop
counts every ArrayRecord in the bytes up and down.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from astroscale_fl.federation.protocol import CONTROL_DELTA_KEY, CONTROL_KEY, ScaffoldCorrection
from astroscale_fl.federation.records import arrays_to_numpy, numpy_to_arrays
from astroscale_fl.federation.strategy_params import ScaffoldParams
from strategies.fedavg import FedAvg, weighted_metrics


class Scaffold(FedAvg):
    """SCAFFOLD with server control variate ``c`` as strategy state.

    ``control_key`` / ``control_delta_key`` name the ArrayRecords carrying ``c`` to the nodes
    and ``delta_c_i`` back (defaults from :mod:`astroscale_fl.federation.protocol`).
    """

    def __init__(self, *, server_lr: float, local_lr: float, control_key: str = CONTROL_KEY,
                 control_delta_key: str = CONTROL_DELTA_KEY, **kwargs) -> None:
        super().__init__(server_lr=server_lr, **kwargs)
        self.control_key = control_key
        self.control_delta_key = control_delta_key
        self.hyper: ScaffoldParams = ScaffoldParams(server_lr, local_lr)
        self.control: dict[str, np.ndarray] = {}
        self.num_nodes = 0

    def train_content(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        if not self.control:
            self.control = {k: np.zeros(v.shape, np.float64) for k, v in arrays_to_numpy(arrays).items()}
        ScaffoldCorrection(float(self.hyper.local_lr)).write(config)
        content = super().train_content(server_round, arrays, config)
        content[self.control_key] = numpy_to_arrays({k: v.astype(np.float32) for k, v in self.control.items()})
        return content

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.num_nodes = len(list(grid.get_node_ids()))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``x += server_lr * mean(y_i - x)``; ``c += |S|/N * mean(delta_c_i)``."""
        valid = self.valid_replies(replies)
        if not valid:
            return None, None
        assert self.global_arrays is not None
        models = [arrays_to_numpy(m.content[self.arrayrecord_key]) for m in valid]
        deltas = [arrays_to_numpy(m.content[self.control_delta_key]) for m in valid]
        new = {}
        for name, current in self.global_arrays.items():
            x = current.astype(np.float64)
            mean_dy = np.mean([model[name].astype(np.float64) - x for model in models], axis=0)
            new[name] = (x + self.hyper.server_lr * mean_dy).astype(current.dtype)
        share = len(valid) / max(self.num_nodes, len(valid))
        for name in self.control:
            self.control[name] = self.control[name] + share * np.mean([d[name].astype(np.float64) for d in deltas], axis=0)
        return numpy_to_arrays(new), weighted_metrics(valid, self.reply_weights(valid), self.weighted_by_key)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"c/{k}": v for k, v in self.control.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.control = {k[2:]: np.asarray(v, np.float64) for k, v in state.items() if k.startswith("c/")}
