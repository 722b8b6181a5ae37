"""Server-side client-level DP (DP-FedAvg, McMahan et al. 2018) for the model arrays only.

What it protects: a whole node's participation. Each node's model update ``Δ_k = w_k − w_g``
is clipped to L2 norm ``C`` (over all model arrays together), the clipped updates are
summed and Gaussian noise ``N(0, (σC)²)`` is added to the sum, which is divided by the
number of sampled nodes. Whoever sees the released global models (other nodes, users of the
published model) learns about as much as if any one node had not taken part, with ε from an
Opacus accountant over ``(σ, q = fraction_train, rounds)``.

What it does not protect: the server sees every raw update before clipping (trust the
server, or combine with node-side DP-SGD, which protects rows even from the server). With a
handful of nodes the noise ``σC / n`` is large relative to the mean update.

Flower 1.41's DP wrappers refuse replies with more than one ArrayRecord (SCAFFOLD's control
variates), so these helpers clip only the model arrays; for SCAFFOLD the server must not
release unnoised control variates if client-level DP is claimed for them (they are not
covered here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def update_norm(update: Sequence[np.ndarray]) -> float:
    """L2 norm of an update over all its arrays together."""
    return float(np.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in update)))


def clip_update(update: Sequence[np.ndarray], clip_norm: float) -> tuple[list[np.ndarray], float]:
    """``update × min(1, C / ‖update‖)`` and the norm before clipping."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm must be positive, got {clip_norm}")
    norm = update_norm(update)
    factor = min(1.0, clip_norm / (norm + 1e-12))
    return [np.asarray(a, dtype=np.float64) * factor for a in update], norm


def noisy_mean_update(
    updates: Sequence[Sequence[np.ndarray]],
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    denominator: float | None = None,
) -> list[np.ndarray]:
    """``(Σ_k clip(Δ_k) + N(0, (σC)²)) / denominator`` (default: the number of updates)."""
    if not updates:
        raise ValueError("no updates to aggregate")
    clipped = [clip_update(u, clip_norm)[0] for u in updates]
    total = [np.sum([c[i] for c in clipped], axis=0) for i in range(len(clipped[0]))]
    std = noise_multiplier * clip_norm
    denominator = float(len(updates) if denominator is None else denominator)
    return [(t + rng.normal(0.0, std, size=t.shape)) / denominator for t in total]


def dp_fedavg(
    global_arrays: Sequence[np.ndarray],
    node_arrays: Sequence[Sequence[np.ndarray]],
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
    denominator: float | None = None,
) -> list[np.ndarray]:
    """New global model: ``w_g + noisy_mean_update(w_k − w_g)``, cast back to the arrays' dtypes."""
    updates = [[np.asarray(w, dtype=np.float64) - np.asarray(g, dtype=np.float64) for w, g in zip(arrays, global_arrays, strict=True)] for arrays in node_arrays]
    step = noisy_mean_update(updates, clip_norm, noise_multiplier, rng, denominator)
    return [(np.asarray(g, dtype=np.float64) + s).astype(np.asarray(g).dtype) for g, s in zip(global_arrays, step, strict=True)]
