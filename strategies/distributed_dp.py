"""Distributed DP-FedAvg: ``privacy=dp_fedavg`` with ``federation.secure_aggregation=secaggplus``.

Under SecAgg+ the server only ever sees the masked sum, so it can neither clip an update nor be
trusted to add the noise to a sum it is not meant to see unnoised. Each round therefore:

1. the server Poisson-samples nodes with probability ``q`` (as :class:`strategies.dp_fedavg.DpFedAvg`)
   and runs SecAgg+ with them; the train message tells every node ``C`` and ``s = σC / √m``;
2. each node clips its update (model delta; SCAFFOLD: with the control-variate delta, one vector)
   to L2 norm ``C`` and adds ``N(0, s²)`` per coordinate *before* quantising and masking
   (:func:`astroscale_fl.privacy.node_level.clip_and_add_noise`, OS entropy);
3. the server unmasks only if at least ``m`` masked vectors arrived (and at least the
   reconstruction threshold), so the sum carries ``n ≥ m`` noise shares, std ``σC √(n/m) ≥ σC``,
   and releases ``Σ_k (clip(Δ_k) + z_k) / (q N)``: the server-side mechanism's release (uniform
   weights, fixed denominator ``q N``) with at least its noise. The ledger records ``[σ, q, 1]``
   per round exactly as server-side; the card's ``privacy.node_level`` says ``mode: "distributed"``.

``m`` is ``privacy.distributed_noise_nodes`` (default ``federation.secaggplus.reconstruction_threshold``:
the protocol never unmasks fewer contributions, so the noise is ≥ σC whatever drops; a larger ``m``,
up to the nodes expected to survive, adds less noise but fails rounds where fewer survive). This is
Kairouz, Liu & Steinke's (ICML 2021) "distributed DP" setting with a continuous Gaussian split
``n`` ways; Flower's ``DifferentialPrivacyClientSideFixedClipping`` clips on the nodes but adds the
noise on the server (the server sees the exact sum), and ``LocalDpMod`` gives every node the full
noise (local DP, ``n`` times the variance).

What the guarantee assumes:

- an honest-but-curious server: it sends the configured ``C`` and ``s`` and follows SecAgg+ (a
  server that sent ``s = 0``, or unmasked a sum of fewer than ``m`` nodes, would break it; nodes
  do not yet check ``s`` against a floor of their own);
- honest noise-adding nodes: a node that skips its noise share lowers the total; with ``m`` at the
  reconstruction threshold, the noise of any ``m`` honest nodes suffices;
- against the *server*, which chose the sample, there is no amplification by sampling: the card's
  ``node_level.against_server`` accounts the same rounds with ``q = 1`` (identical at the default
  ``fraction_train = 1``); ``epsilon`` (with ``q``) is against observers of the released models;
- adjacency is add/remove of one node as server-side, treating the extra noise of rounds with
  ``n > m`` shares as post-processing; a node's own noise share is counted, so at exactly ``n = m``
  the others' noise alone is ``σC √((m−1)/m)``; a reader who counts only the other nodes' noise
  should take the guarantee at ``σ √((m−1)/m)`` (or raise ``m`` by one above the survivors needed);
- quantisation: the noisy update is stochastically rounded to a grid of step ``2c/Q`` (``c`` =
  ``federation.secaggplus.clipping_range``, ``Q`` = ``quantization_range``: about ``1e-7 c``), so
  the sum is a discretised Gaussian, not exactly Gaussian; this rounding is not accounted (it is
  ~``10⁻⁶`` of the noise std; a rigorous discrete mechanism is the distributed discrete Gaussian,
  not built). Floating-point Gaussian sampling has the usual (Mironov 2012) caveat;
- no wrap-around: coordinates are clipped to ``[−c, c]`` before quantising (never wrapped modulo
  ``2^62``); the config refuses ``c < C + 8 s`` so the noise is clipped with probability < 1e-15 per
  coordinate (clipping the noise would lower it).

Adaptive clipping is refused with SecAgg+ (it needs each node's clipped bit, which is hidden).
Rounds with fewer than ``max(m, t)`` sampled nodes are redrawn; at ``q < 1`` that conditions the
Poisson sample (negligible when ``q N`` is well above ``m``; exact at ``q = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid

from astroscale_fl.federation.records import numpy_to_arrays
from astroscale_fl.federation.secagg.scheme import DP_CLIP, DP_STDDEV, SecAggPlusParams, noise_share_nodes
from astroscale_fl.privacy.node_level import card_entry
from astroscale_fl.privacy.settings import NodeLevelSettings
from strategies.dp_fedavg import DpFedAvg, SampledGrid
from strategies.fedavg import FedAvg
from strategies.mean_step import apply_mean_update
from strategies.secaggplus import SecAggPlus, split_sums


class DistributedDpFedAvg(DpFedAvg):
    """DP-FedAvg whose clipping and noise happen on the nodes, aggregated by SecAgg+."""

    name = "distributed DP-FedAvg"
    min_sampled_source = " (privacy.distributed_noise_nodes / reconstruction_threshold)"

    def __init__(self, strategy: FedAvg, settings: NodeLevelSettings, num_nodes: int, params: SecAggPlusParams, timeout: float,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__(strategy, settings, num_nodes, rng)
        self.secure = SecAggPlus(strategy, params, timeout)
        self.noise_nodes = noise_share_nodes(settings, params)
        self.secure.min_contributions = self.noise_nodes
        self.min_sampled = max(self.noise_nodes, params.reconstruction_threshold)

    @property
    def node_noise_stddev(self) -> float:
        """``s = σC / √m``: each node's share of the noise."""
        return self.settings.node_noise_multiplier * self.clipping_norm / math.sqrt(self.noise_nodes)

    @property
    def protocol_bytes(self) -> list[int]:
        return self.secure.protocol_bytes

    @property
    def error_bound(self) -> float:
        """Quantisation error bound of the last round's released mean, per coordinate."""
        return self.secure.sum_error_bound / self.expected_nodes

    def summary(self) -> None:
        log(INFO, "Distributed DP-FedAvg (nodes clip to C=%.4g and add N(0, %.4g^2); m=%d noise shares, sigma=%.4g, q=%.3g) "
            "with SecAgg+ (%s) around:", self.clipping_norm, self.node_noise_stddev, self.noise_nodes,
            self.settings.node_noise_multiplier, self.sample_rate, self.secure.secagg.as_dict())
        self.strategy.summary()

    def node_level_section(self) -> dict:
        return card_entry(self.ledger, self.settings, self.clipping_norms, self._connected,
                          distributed={"noise_share_nodes": self.noise_nodes, "node_noise_stddev": self.node_noise_stddev})

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Poisson-sample (at least ``max(m, t)`` nodes), then SecAgg+'s stages with C and s for the nodes."""
        sampled = self.sample_nodes(server_round, grid)
        self.secure.node_dp = {DP_CLIP: self.clipping_norm, DP_STDDEV: self.node_noise_stddev}
        return self.secure.configure_train(server_round, arrays, config, SampledGrid(grid, sampled))

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The unmasked noisy sum divided by ``q N``, then the wrapped strategy's server step."""
        self.ledger.record(self.settings.node_noise_multiplier, self.sample_rate, 1)  # write-ahead: count before unmasking
        total, _, metrics = self.secure.unmasked_sum(server_round, replies)
        self.clipping_norms.append(self.clipping_norm)
        model, control = split_sums(total, self.expected_nodes)
        new = apply_mean_update(self.strategy, model, control, self.sample_rate)
        return numpy_to_arrays(new), MetricRecord({**metrics, "clipping-norm": self.clipping_norm, "node-epsilon": self.ledger.epsilon()})
