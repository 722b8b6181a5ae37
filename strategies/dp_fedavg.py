"""Node-level DP-FedAvg (``privacy=dp_fedavg``) as a wrapper around any of our four strategies.

The mechanism and its accounting are in :mod:`astroscale_fl.privacy.node_level`. The wrapper:

- samples nodes itself, each independently with probability ``q = federation.fraction_train``
  (Poisson sampling, which the subsampled-Gaussian accountant assumes; ``min_train_nodes`` does not
  apply), and lets the wrapped strategy build the messages for exactly those nodes;
- clips each reply's update (model delta; SCAFFOLD: model and control-variate deltas as one
  vector), adds Gaussian noise to the sum and divides by ``q N``, *before* the wrapped strategy's
  server step: FedAvg/FedProx move by ``server_lr`` along the noisy mean, FedAdam takes its Adam
  step on it, SCAFFOLD updates ``x`` and ``c`` from the noisy means (share ``q``). Whatever the
  server optimiser does afterwards is post-processing and costs no privacy;
- records ``[σ, q, 1]`` per round in the server's ledger (before releasing), stops the run at
  ``privacy.node_epsilon_budget`` (:meth:`affordable_rounds`), and keeps ledger and clipping norm in
  its ``state_dict`` so a resumed run keeps counting.

Why not Flower's ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` (flwr 1.41): they
(1) clip *every* ArrayRecord of a reply against the global model, so SCAFFOLD's ``control-delta``
record would be "clipped" as if it were a model, and its norm would not count towards the node's
sensitivity; (2) add noise to the wrapped strategy's *output*, i.e. after FedAdam's Adam step,
whose per-coordinate normalisation can move the model by far more than ``C / n`` for one node's
update, so the stated noise no longer bounds the sensitivity; (3) require equal weights once
accounting is on and otherwise average with example weights, which lets a large node's update
exceed ``C / n`` in the mean and reveals counts; (4) divide by the number of replies rather than
the expected number, so a dropped node changes the scale. Flower also does not account ε for them
in a way a model card can carry. Here nodes are weighted equally (each clipped update once).

With ``federation.secure_aggregation=secaggplus`` the server cannot clip; the nodes clip and add
the noise instead (:class:`strategies.distributed_dp.DistributedDpFedAvg`, same ledger and weights).

Training metrics of the nodes (loss) are not aggregated under node-level DP: they are not covered
by the noise. Federated evaluation (``federation.fraction_evaluate``) releases un-noised pooled
sums; set it to 0 for the guarantee to cover everything the server publishes.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from astroscale_fl.federation.protocol import ARRAYS_KEY, CONTROL_DELTA_KEY
from astroscale_fl.federation.records import arrays_to_numpy, numpy_to_arrays
from astroscale_fl.federation.rounds import FederationError
from astroscale_fl.privacy.ledger import PrivacyLedger
from astroscale_fl.privacy.node_level import (
    affordable_rounds,
    card_entry,
    next_clipping_norm,
    noisy_mean,
)
from astroscale_fl.privacy.settings import NodeLevelSettings
from strategies.fedavg import FedAvg
from strategies.mean_step import apply_mean_update

MODEL, CONTROL = "model/", "control/"


class SampledGrid:
    """The grid as the wrapped strategy sees it: only this round's sampled nodes."""

    def __init__(self, grid: Grid, node_ids: list[int]):
        self._grid, self._nodes = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._nodes)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


class DpFedAvg(Strategy):
    """Server-side DP-FedAvg (fixed or adaptive clipping) around a FedAvg-family strategy."""

    def __init__(self, strategy: FedAvg, settings: NodeLevelSettings, num_nodes: int, rng: np.random.Generator | None = None) -> None:
        self.strategy = strategy
        self.settings = settings
        self.sample_rate = float(strategy.fraction_train)
        strategy.fraction_train, strategy.min_train_nodes = 1.0, 1  # the wrapper samples
        self.num_nodes = int(num_nodes)
        self.ledger = PrivacyLedger(settings.accountant, settings.delta_for(num_nodes))
        self.clipping_norm = settings.clipping_norm
        self.clipping_norms: list[float] = []
        self.rng = rng or np.random.default_rng()  # OS entropy: the noise must not follow the run's seed
        self._connected = self.num_nodes

    def __getattr__(self, name: str):  # the wrapped strategy's other attributes (global_arrays, ...)
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def expected_nodes(self) -> float:
        """``q N``: the fixed denominator of the noisy mean."""
        return self.sample_rate * self._connected

    # -- budget, card, state ----------------------------------------------------------------

    def affordable_rounds(self, wanted: int) -> int:
        """How many of ``wanted`` further rounds fit ``privacy.node_epsilon_budget``."""
        return affordable_rounds(self.ledger, self.settings.node_noise_multiplier, self.sample_rate, self.settings.node_epsilon_budget, wanted)

    def node_level_section(self) -> dict:
        """The model card's ``privacy.node_level``."""
        return card_entry(self.ledger, self.settings, self.clipping_norms, self._connected)

    def params(self) -> dict:
        return {**self.strategy.params(), "node_noise_multiplier": self.settings.node_noise_multiplier,
                "clipping_norm": self.settings.clipping_norm, "sample_rate": self.sample_rate}

    def summary(self) -> None:
        log(INFO, "DP-FedAvg (node-level, %s clipping C=%.4g, sigma=%.4g, q=%.3g) around:",
            "adaptive" if self.settings.adaptive else "fixed", self.clipping_norm, self.settings.node_noise_multiplier, self.sample_rate)
        self.strategy.summary()

    def state_dict(self) -> dict[str, np.ndarray]:
        history = np.asarray(self.ledger.history, dtype=np.float64).reshape(-1, 3)
        return {**self.strategy.state_dict(), "dp/history": history, "dp/clipping_norms": np.asarray(self.clipping_norms, np.float64),
                "dp/clipping_norm": np.asarray([self.clipping_norm], np.float64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.strategy.load_state_dict({k: v for k, v in state.items() if not k.startswith("dp/")})
        self.ledger = PrivacyLedger(self.ledger.accountant, self.ledger.delta, [(s, q, int(n)) for s, q, n in state.get("dp/history", [])])
        self.clipping_norms = [float(c) for c in state.get("dp/clipping_norms", [])]
        if "dp/clipping_norm" in state:
            self.clipping_norm = float(np.asarray(state["dp/clipping_norm"]).reshape(-1)[0])

    # -- rounds -----------------------------------------------------------------------------

    name = "DP-FedAvg"
    min_sampled = 1  # an empty round would release only noise: redrawn (probability (1 - q)^N)
    min_sampled_source = ""  # the settings behind min_sampled, for the error

    def sample_nodes(self, server_round: int, grid: Grid) -> list[int]:
        """Poisson-sample the connected nodes (probability ``q`` each), redrawn until at least
        :attr:`min_sampled` are in; a round fails when fewer are connected."""
        nodes = sorted(grid.get_node_ids())
        self._connected = len(nodes)
        if len(nodes) < self.min_sampled:
            raise FederationError(f"round {server_round}: {self.name} needs at least {self.min_sampled} connected nodes"
                                  f"{self.min_sampled_source}, {len(nodes)} connected")
        sampled: list[int] = []
        while len(sampled) < self.min_sampled:
            sampled = [n for n in nodes if self.rng.random() < self.sample_rate]
        return sampled

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Poisson-sample the nodes (:meth:`sample_nodes`), then the wrapped strategy's messages."""
        sampled = self.sample_nodes(server_round, grid)
        return self.strategy.configure_train(server_round, arrays, config, SampledGrid(grid, sampled))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, sum, noise, divide by ``q N``; then the wrapped strategy's server step."""
        valid = [m for m in replies if not m.has_error()]
        if not valid:
            return None, None
        x = self.strategy.global_arrays
        assert x is not None, "configure_train sets the global arrays first"
        updates = []
        for reply in valid:
            model = arrays_to_numpy(reply.content[ARRAYS_KEY])
            update = {MODEL + k: model[k].astype(np.float64) - x[k].astype(np.float64) for k in x}
            if CONTROL_DELTA_KEY in reply.content.array_records:
                update.update({CONTROL + k: v for k, v in arrays_to_numpy(reply.content[CONTROL_DELTA_KEY]).items()})
            updates.append(update)
        self.ledger.record(self.settings.node_noise_multiplier, self.sample_rate, 1)  # write-ahead: count before releasing
        used = self.clipping_norm
        mean, norms = noisy_mean(updates, used, self.settings.update_noise_multiplier(self.expected_nodes), self.expected_nodes, self.rng)
        self.clipping_norms.append(used)
        if self.settings.adaptive is not None:
            self.clipping_norm = next_clipping_norm(used, norms, self.settings, self.expected_nodes, self.rng)
        control = {k[len(CONTROL):]: v for k, v in mean.items() if k.startswith(CONTROL)}
        new = apply_mean_update(self.strategy, {k: mean[MODEL + k] for k in x}, control, self.sample_rate)
        return numpy_to_arrays(new), MetricRecord({"clipping-norm": used, "node-epsilon": self.ledger.epsilon()})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)
