"""FedAvg (McMahan et al. 2017) on Flower's Message API, with float64 aggregation.

Each round: sample nodes (seeded), send them the global arrays and the round config, and
replace the global model by the mean of the returned models weighted by ``num-examples``.
With ``server_lr`` != 1 the server moves only that fraction of the way:
``w <- w + server_lr * (mean - w)``.

Flower's own FedAvg accumulates in the arrays' dtype (float32); we accumulate in float64 and
cast back once; the round loop hands the replies over in node-id order, so a seeded run
aggregates the same sums in the same order every time (bit-identical runs, in either backend).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from astroscale_fl.federation.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    DELTA_KEY,
    EPSILON_KEY,
    LOSS_KEY,
    METRICS_KEY,
    SERVER_ROUND_KEY,
    SSE_KEY,
    SUM_Y2_KEY,
    SUM_Y_KEY,
    WEIGHT_KEY,
)
from astroscale_fl.federation.records import arrays_to_numpy, numpy_to_arrays
from astroscale_fl.federation.strategy_params import FedAvgParams


def weighted_mean(arrays: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """Example-weighted mean of several models' arrays, accumulated in float64."""
    total = float(np.sum(np.asarray(weights, dtype=np.float64)))
    if total <= 0:
        raise ValueError("weighted mean needs a positive total weight")
    out: dict[str, np.ndarray] = {}
    for name, first in arrays[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for model, weight in zip(arrays, weights, strict=True):  # in the replies' (node-id) order
            acc += np.asarray(model[name], dtype=np.float64) * (float(weight) / total)
        out[name] = acc.astype(first.dtype, copy=False)
    return out


class FedAvg(Strategy):
    """Federated averaging, weighted by each reply's ``num-examples``.

    Parameters
    ----------
    fraction_train, fraction_evaluate : fraction of connected nodes sampled per round.
    min_train_nodes : sample at least this many nodes for training.
    server_lr : server step on the averaged update (1 = plain FedAvg).
    seed : seeds node sampling (round ``r`` uses ``(seed, r)``), so runs are reproducible.
    arrayrecord_key : record holding the model in messages and replies.
    configrecord_key : record holding the round config sent to the nodes.
    weighted_by_key : reply metric that weights each node in the average.

    The record keys default to :mod:`astroscale_fl.federation.protocol`'s, as Flower's own
    ``FedAvg`` takes them.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 1,
        server_lr: float = 1.0,
        seed: int = 0,
        arrayrecord_key: str = ARRAYS_KEY,
        configrecord_key: str = CONFIG_KEY,
        weighted_by_key: str = WEIGHT_KEY,
    ) -> None:
        self.arrayrecord_key = arrayrecord_key
        self.configrecord_key = configrecord_key
        self.weighted_by_key = weighted_by_key
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.hyper: FedAvgParams = FedAvgParams(server_lr)  # checks the range; a subclass replaces it with its own
        self.seed = seed
        self.global_arrays: dict[str, np.ndarray] | None = None

    # -- summary and state ------------------------------------------------------------------

    def params(self) -> dict[str, float]:
        """Strategy parameters as recorded in the model card."""
        return dataclasses.asdict(self.hyper)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Strategy state a checkpoint must keep (FedAvg has none beyond the global model)."""
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict` output (resuming from a checkpoint)."""
        del state

    def summary(self) -> None:
        log(INFO, "%s: %s, fraction_train=%.2f, fraction_evaluate=%.2f", type(self).__name__,
            self.params(), self.fraction_train, self.fraction_evaluate)

    # -- sampling and messages --------------------------------------------------------------

    def sample(self, grid: Grid, server_round: int, fraction: float, minimum: int, purpose: int) -> list[int]:
        """Seeded sample of connected nodes: ``max(minimum, fraction * N)`` of them."""
        nodes = sorted(grid.get_node_ids())
        size = min(len(nodes), max(minimum, int(round(fraction * len(nodes)))))
        if size >= len(nodes):
            return nodes
        rng = np.random.default_rng([self.seed, server_round, purpose])
        # choose positions: numpy would turn 64-bit node ids into float64 and lose digits
        return sorted(nodes[int(i)] for i in rng.choice(len(nodes), size=size, replace=False))

    def _messages(self, content: RecordDict, node_ids: list[int], message_type: str) -> list[Message]:
        return [Message(content=content, message_type=message_type, dst_node_id=n) for n in node_ids]

    def train_content(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        """What a sampled node receives for training (subclasses add records)."""
        config[SERVER_ROUND_KEY] = server_round
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample nodes and send each the global arrays and the round config."""
        self.global_arrays = arrays_to_numpy(arrays)
        node_ids = self.sample(grid, server_round, self.fraction_train, self.min_train_nodes, purpose=0)
        return self._messages(self.train_content(server_round, arrays, config), node_ids, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Sample nodes for federated evaluation of the global arrays on their local rows."""
        if self.fraction_evaluate == 0.0:
            return []
        node_ids = self.sample(grid, server_round, self.fraction_evaluate, 1, purpose=1)
        config[SERVER_ROUND_KEY] = server_round
        content = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._messages(content, node_ids, MessageType.EVALUATE)

    # -- aggregation ------------------------------------------------------------------------

    @staticmethod
    def valid_replies(replies: Iterable[Message]) -> list[Message]:
        """Replies that carry content (errors are counted by the round loop)."""
        return [m for m in replies if not m.has_error()]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """New global arrays: the example-weighted mean of the replies' arrays."""
        valid = self.valid_replies(replies)
        if not valid:
            return None, None
        weights = self.reply_weights(valid)
        mean = weighted_mean([arrays_to_numpy(m.content[self.arrayrecord_key]) for m in valid], weights)
        return numpy_to_arrays(self.server_step(mean)), weighted_metrics(valid, weights, self.weighted_by_key)

    def reply_weights(self, replies: list[Message]) -> list[float]:
        """Each reply's aggregation weight (its ``weighted_by_key`` metric)."""
        return [float(m.content[METRICS_KEY][self.weighted_by_key]) for m in replies]

    def server_step(self, mean: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``w + server_lr * (mean - w)``; exactly ``mean`` when ``server_lr`` is 1."""
        if self.hyper.server_lr == 1.0 or self.global_arrays is None:
            return mean
        out = {}
        for name, avg in mean.items():
            current = self.global_arrays[name].astype(np.float64)
            out[name] = (current + self.hyper.server_lr * (avg.astype(np.float64) - current)).astype(avg.dtype)
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Pooled loss, RMSE and R² over all evaluating nodes' rows (from their sums)."""
        valid = self.valid_replies(replies)
        if not valid:
            return None
        return pooled_regression_metrics([m.content[METRICS_KEY] for m in valid], self.weighted_by_key)


#: Per-node privacy guarantees: aggregated as the worst node's value, never averaged.
WORST_CASE_METRICS = (EPSILON_KEY, DELTA_KEY)


def weighted_metrics(replies: list[Message], weights: list[float], weighted_by_key: str = WEIGHT_KEY) -> MetricRecord:
    """Example-weighted mean of every numeric metric the replies share (the max for privacy ones)."""
    total = float(sum(weights))
    keys = set.intersection(*(set(m.content[METRICS_KEY].keys()) for m in replies)) - {weighted_by_key}
    out = {}
    for k in sorted(keys):
        values = [float(m.content[METRICS_KEY][k]) for m in replies]
        if k in WORST_CASE_METRICS:
            out[k] = max(values)
        else:
            out[k] = math.fsum(v * w for v, w in zip(values, weights)) / total
    out[weighted_by_key] = int(total)
    return MetricRecord(out)


def pooled_regression_metrics(records: list[MetricRecord], weighted_by_key: str = WEIGHT_KEY) -> MetricRecord:
    """Exact pooled metrics from per-node sums: n, sum of squared errors, sum y, sum y², loss sum."""
    n = math.fsum(float(r[weighted_by_key]) for r in records)  # exact sums: independent of the replies' order
    sse = math.fsum(float(r[SSE_KEY]) for r in records)
    sum_y = math.fsum(float(r[SUM_Y_KEY]) for r in records)
    sum_y2 = math.fsum(float(r[SUM_Y2_KEY]) for r in records)
    loss = math.fsum(float(r[LOSS_KEY]) * float(r[weighted_by_key]) for r in records) / n
    ss_tot = sum_y2 - sum_y**2 / n
    return MetricRecord({
        "loss": loss,
        "rmse": float(np.sqrt(sse / n)),
        "r2": float(1.0 - sse / ss_tot) if ss_tot > 0 else float("nan"),
        weighted_by_key: int(n),
    })
