"""Node-level DP (``privacy=dp_fedavg``): clipping, noise and the server's ledger (settings: :mod:`.settings`).

DP-FedAvg (McMahan et al., ICLR 2018) protects a whole node: the released global models are
about as likely with or without any one archive's participation (all its rows at once). Each
round every node is sampled independently with probability ``q`` (``federation.fraction_train``),
its update ``Δ_k`` (model delta, and for SCAFFOLD the control-variate delta too, as one vector)
is clipped to L2 norm ``C`` and the server releases

    Δ̃ = (Σ_k clip(Δ_k, C) + N(0, (σ_Δ C)²)) / (q N)

(fixed denominator: the expected number of sampled nodes, so one node changes the sum by at
most ``C`` whatever the others do). That is one step of the subsampled Gaussian mechanism with
noise multiplier ``σ`` and sample rate ``q``; the server's ledger (a :class:`PrivacyLedger`, the
same Opacus history format as the nodes') records ``[σ, q, 1]`` per round and the model card
carries it (``privacy.node_level``), recomputable with Opacus.

Adaptive clipping (Andrew et al., NeurIPS 2021): the server also releases the noisy fraction of
sampled nodes whose update was within ``C``, ``b̃ = (Σ 1[‖Δ_k‖ ≤ C] + N(0, σ_b²)) / (q N)``,
and moves ``C ← C · exp(−η (b̃ − γ))`` towards the ``γ`` quantile of the update norms. The two
releases together are one Gaussian mechanism with multiplier ``σ`` when
``σ_Δ = (σ⁻² − (2σ_b)⁻²)^(-1/2)`` (their Theorem 1), so the ledger still records ``σ``.

With ``federation.secure_aggregation=secaggplus`` the same mechanism runs *distributed*: each node
clips its own update and adds ``N(0, (σC)² / m)`` before masking (:func:`clip_and_add_noise`), the
server only unmasks the noisy sum; the same ledger, card entry ``mode: "distributed"``. What that
assumes is in :mod:`strategies.distributed_dp`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from astroscale_fl.privacy.ledger import PrivacyLedger
from astroscale_fl.privacy.settings import NodeLevelSettings


def flat_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of an update over all its arrays together (float64)."""
    return math.sqrt(sum(float(np.square(np.asarray(v, dtype=np.float64)).sum()) for v in update.values()))


def clipped(update: Mapping[str, np.ndarray], clip_norm: float) -> tuple[dict[str, np.ndarray], float]:
    """``update × min(1, C / ‖update‖)`` (float64) and the norm before clipping."""
    norm = flat_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * factor for k, v in update.items()}, norm


def clip_and_add_noise(vector: np.ndarray, clip_norm: float, stddev: float, rng: np.random.Generator) -> np.ndarray:
    """One node's share of distributed DP-FedAvg: ``vector × min(1, C / ‖vector‖) + N(0, stddev²)`` (float64)."""
    vector = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return vector * factor + rng.normal(0.0, stddev, vector.shape)


def noisy_mean(updates: list[Mapping[str, np.ndarray]], clip_norm: float, noise_multiplier: float, denominator: float,
               rng: np.random.Generator) -> tuple[dict[str, np.ndarray], list[float]]:
    """``(Σ clip(Δ_k, C) + N(0, (σ C)²)) / denominator`` per array, and the norms before clipping."""
    if not updates:
        raise ValueError("no updates to aggregate")
    total: dict[str, np.ndarray] = {k: np.zeros(np.shape(v), np.float64) for k, v in updates[0].items()}
    norms = []
    for update in updates:
        clipped_update, norm = clipped(update, clip_norm)
        norms.append(norm)
        for k, v in clipped_update.items():
            total[k] += v
    std = noise_multiplier * clip_norm
    return {k: (v + rng.normal(0.0, std, v.shape)) / denominator for k, v in total.items()}, norms


def next_clipping_norm(clip_norm: float, norms: list[float], settings: NodeLevelSettings, expected_nodes: float,
                       rng: np.random.Generator) -> float:
    """Andrew et al.'s geometric update of C from the noisy fraction of unclipped updates."""
    assert settings.adaptive is not None
    within = sum(1 for n in norms if n <= clip_norm)
    fraction = (within + rng.normal(0.0, settings.count_stddev(expected_nodes))) / expected_nodes
    return float(clip_norm * math.exp(-settings.adaptive.learning_rate * (fraction - settings.adaptive.target_quantile)))


def affordable_rounds(ledger: PrivacyLedger, noise_multiplier: float, sample_rate: float, budget: float | None, wanted: int) -> int:
    """How many of ``wanted`` further rounds fit the node-level budget (bisection over the ledger)."""
    if budget is None or wanted <= 0:
        return max(0, wanted)
    low, high = 0, wanted
    while low < high:
        mid = (low + high + 1) // 2
        if ledger.epsilon_after(noise_multiplier, sample_rate, mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def card_entry(ledger: PrivacyLedger, settings: NodeLevelSettings, clipping_norms: list[float], num_nodes: int,
               distributed: dict | None = None) -> dict:
    """The model card's ``privacy.node_level``: recomputable ``{accountant, history, delta, epsilon}`` and the settings.

    ``distributed`` (SecAgg+): the noise-share parameters; the entry then says ``mode: "distributed"``
    and adds ``against_server``, the same rounds accounted with ``q = 1``: the server chose the
    sample, so against it there is no amplification by sampling."""
    extra: dict = {"mode": "server"}
    if distributed is not None:
        server = PrivacyLedger(ledger.accountant, ledger.delta, [(s, 1.0, int(n)) for s, _, n in ledger.history])
        extra = {"mode": "distributed", **distributed, "against_server": {
            "accountant": server.accountant, "history": [list(h) for h in server.history], "delta": server.delta,
            "epsilon": server.epsilon()}}
    return {
        "accountant": ledger.accountant, "history": [list(h) for h in ledger.history], "delta": ledger.delta,
        "epsilon": ledger.epsilon(), "rounds": ledger.steps, "num_nodes": int(num_nodes),
        "noise_multiplier": settings.node_noise_multiplier, "clipping": "adaptive" if settings.adaptive else "fixed",
        "clipping_norms": [float(c) for c in clipping_norms], "epsilon_budget": settings.node_epsilon_budget,
        "weighting": "uniform (each sampled node's clipped update counts once; fixed denominator q N)", **extra,
    }
