"""SecAgg+ pieces shared by the server and the nodes: parameters, neighbour graph, vectors, masks.

Crypto is Flower's (``flwr.common.secure_aggregation``: Shamir shares, ECDH + HKDF shared keys,
Fernet encryption, stochastic quantisation; ``flwr.supercore.primitives.asymmetric``: SECP384R1
key pairs) or the ``cryptography`` package's AES. One deliberate difference: Flower's
``pseudo_rand_gen`` folds the 32-byte seed into a 32-bit ``numpy.random.RandomState`` seed, so a
curious server could brute-force a node's private mask in 2^32 tries; masks here are the AES-256
CTR keystream of the full 32-byte seed (a standard cryptographic PRG).

The masked vector of a node (all integers modulo ``MODULUS = 2^62``) is::

    [round(w Q)] + quantize(round(w Q)/Q · Δ_k, c, Q) + PRG(b_k) ± Σ_v PRG(s_kv)

with ``w = weight / max_weight`` (examples, or 1 for unweighted strategies), ``Q`` the
quantisation range, ``c`` the clipping range and ``Δ_k`` the node's update arrays (model delta;
SCAFFOLD: and control-variate delta). Summed over the nodes, with the masks removed, it gives
``Σ w̃_k`` and ``Σ w̃_k Δ_k`` (+ an offset ``(n − 1) c`` from the shifted quantisation): only the
weighted sum and the total weight, never one node's count.

Quantisation error of the mean (stochastic rounding, unbiased): at most one step ``2c/Q`` per
node and coordinate, so ``|mean − exact w̃-weighted mean| ≤ n · 2c / Σ_k round(w_k Q)`` per
coordinate (``SecAggPlus.error_bound``); values beyond ``±c`` are clipped.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from astroscale_fl.errors import ConfigError
from astroscale_fl.federation.protocol import SECAGG_WEIGHT_KEY
from astroscale_fl.privacy.settings import node_level_settings

MODULUS = 1 << 62  # power of two: int64 sums wrap modulo 2^64, and 2^62 divides it
WEIGHT = SECAGG_WEIGHT_KEY
DP_CLIP, DP_STDDEV = "dp-clip-norm", "dp-noise-stddev"  # train message: distributed DP-FedAvg's C and a node's noise std


@dataclass(frozen=True)
class SecAggPlusParams:
    """``federation.secaggplus.*``, validated, with ``clipping_range`` resolved (the config's null:
    :func:`secagg_params`). No defaults: they live in ``conf/federation/default.yaml``."""

    num_shares: int  # neighbours per node, itself included (odd; >= nodes: everyone)
    reconstruction_threshold: int  # shares needed to rebuild a secret
    clipping_range: float  # update coordinates are clipped to [-c, c] before quantisation
    quantization_range: int  # Q: quantisation levels over [-c, c]
    max_weight: float  # largest node weight (examples); w = weight / max_weight

    def __post_init__(self) -> None:
        if self.num_shares < 2:
            raise ConfigError(f"federation.secaggplus.num_shares: expected an integer >= 2, got {self.num_shares}")
        if not 1 <= self.reconstruction_threshold <= self.num_shares:
            raise ConfigError(f"federation.secaggplus.reconstruction_threshold: expected 1..num_shares={self.num_shares}, "
                              f"got {self.reconstruction_threshold}")
        if not (self.clipping_range > 0 and math.isfinite(self.clipping_range)):
            raise ConfigError(f"federation.secaggplus.clipping_range: expected a positive number, got {self.clipping_range}")
        if not 2 <= self.quantization_range < (1 << 30):
            raise ConfigError(f"federation.secaggplus.quantization_range: expected an integer in [2, 2^30), got {self.quantization_range}")
        if not self.max_weight > 0:
            raise ConfigError(f"federation.secaggplus.max_weight: expected a positive number, got {self.max_weight}")

    @classmethod
    def from_config(cls, section: Mapping) -> SecAggPlusParams:
        return cls(int(section["num_shares"]), int(section["reconstruction_threshold"]), float(section["clipping_range"]),
                   int(section["quantization_range"]), float(section["max_weight"]))

    def as_dict(self) -> dict:
        return {"num_shares": self.num_shares, "reconstruction_threshold": self.reconstruction_threshold,
                "clipping_range": self.clipping_range, "quantization_range": self.quantization_range,
                "max_weight": self.max_weight, "modulus": MODULUS}


def secagg_params(cfg) -> SecAggPlusParams:
    """``federation.secaggplus.*`` of a run, ``clipping_range: null`` (the default) resolved: 1.0, or
    under distributed DP-FedAvg the smallest range (to 0.1) that never clips a node's noised update
    (:func:`distributed_dp_range`)."""
    section = dict(cfg.federation.secaggplus)
    if section.get("clipping_range") is None:
        section["clipping_range"] = distributed_dp_range(cfg) if cfg.privacy.name == "dp_fedavg" else 1.0
    return SecAggPlusParams.from_config(section)


def distributed_dp_range(cfg) -> float:
    """:func:`needed_range` of the run's distributed DP-FedAvg, rounded up to 0.1."""
    settings = node_level_settings(cfg.privacy)
    params = SecAggPlusParams.from_config({**cfg.federation.secaggplus, "clipping_range": 1.0})
    return math.ceil(10 * needed_range(settings, noise_share_nodes(settings, params)) - 1e-9) / 10


def needed_range(settings, shares: int) -> float:
    """The smallest clipping range that practically never clips a node's noised update under
    distributed DP-FedAvg: C + NOISE_MARGIN x a node's noise std (σC / sqrt(m))."""
    return settings.clipping_norm + NOISE_MARGIN * settings.node_noise_multiplier * settings.clipping_norm / math.sqrt(shares)


def check_config(cfg) -> None:
    """One-line errors for settings SecAgg+ cannot honour."""
    secagg_params(cfg)
    if cfg.federation.max_update_norm is not None:
        raise ConfigError("federation.max_update_norm: the server cannot see individual updates under secure_aggregation=secaggplus; set it to null")
    if cfg.privacy.name == "dp_fedavg":
        check_distributed_dp(cfg)


def check_distributed_dp(cfg) -> None:
    """``privacy=dp_fedavg`` with SecAgg+ is distributed DP-FedAvg (``strategies/distributed_dp.py``):
    fixed clipping only, enough nodes for the noise shares, and a quantisation range wide enough
    that the noise is never clipped."""
    settings = node_level_settings(cfg.privacy)
    if settings.adaptive is not None:
        raise ConfigError("privacy.adaptive_clipping.enabled: not supported with secure_aggregation=secaggplus (the server "
                          "would need each node's clipped/unclipped bit, which SecAgg+ hides); use fixed clipping")
    params = secagg_params(cfg)
    nodes = cfg.federation.num_nodes
    shares = noise_share_nodes(settings, params)
    if shares < params.reconstruction_threshold or (nodes is not None and shares > int(nodes)):
        raise ConfigError(f"privacy.distributed_noise_nodes: expected an integer in [reconstruction_threshold="
                          f"{params.reconstruction_threshold}, num_nodes={nodes}], got {shares}")
    needed = needed_range(settings, shares)
    if params.clipping_range < needed:
        raise ConfigError(f"federation.secaggplus.clipping_range: expected >= {needed:.4g} under distributed DP-FedAvg "
                          f"(clipping_norm + {NOISE_MARGIN:g} x each node's noise std), got {params.clipping_range:g}")


NOISE_MARGIN = 8.0  # the quantiser's range covers a node's clipped update plus this many noise std (tail < 1e-15)


def noise_share_nodes(settings, params: SecAggPlusParams) -> int:
    """m: how many nodes' noise shares make up the noise std σC (``privacy.distributed_noise_nodes``,
    default the reconstruction threshold: no unmasked sum ever has fewer contributions)."""
    return int(settings.distributed_noise_nodes or params.reconstruction_threshold)


def neighbours(node_ids: list[int], num_shares: int, rng: np.random.Generator) -> dict[int, list[int]]:
    """SecAgg+'s sparse graph: each node and its ``num_shares − 1`` ring neighbours (after a shuffle)."""
    order = [int(node_ids[i]) for i in rng.permutation(len(node_ids))]  # permute indices: node ids are uint64
    n = len(order)
    if num_shares >= n:
        return {v: sorted(order) for v in order}
    half = num_shares // 2
    return {v: sorted({order[(i + k) % n] for k in range(-half, half + 1)}) for i, v in enumerate(order)}


def prg(seed: bytes, size: int) -> np.ndarray:
    """``size`` pseudo-random int64 in ``[0, MODULUS)``: AES-256-CTR keystream of a 32-byte seed."""
    key = seed if len(seed) == 32 else base64.urlsafe_b64decode(seed)
    stream = Cipher(algorithms.AES(key[:32]), modes.CTR(b"\x00" * 16)).encryptor().update(b"\x00" * (8 * size))
    return (np.frombuffer(stream, dtype=np.uint64) & np.uint64(MODULUS - 1)).astype(np.int64)


def flatten(arrays: Mapping[str, np.ndarray], dtype=np.float64) -> np.ndarray:
    """Arrays (in order) as one vector (``np.int64`` for masked vectors: float64 would round them)."""
    return np.concatenate([np.asarray(v, dtype=dtype).reshape(-1) for v in arrays.values()]) if arrays else np.zeros(0, dtype)


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`flatten` with the names and shapes of ``like``."""
    out, start = {}, 0
    for name, ref in like.items():
        size = int(np.prod(np.shape(ref), dtype=np.int64))
        out[name] = vector[start:start + size].reshape(np.shape(ref))
        start += size
    return out
