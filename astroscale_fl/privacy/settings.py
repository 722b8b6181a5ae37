"""The privacy settings of a run, one typed, frozen object per mechanism, validated where they are defined.

- :class:`PrivacySettings`: ``privacy=dp_sgd`` (per-node DP-SGD, its ledger, the statistics round);
- :class:`NodeLevelSettings` (with :class:`AdaptiveClipping`): ``privacy=dp_fedavg`` (node-level DP-FedAvg).

Each class owns its checks (``__post_init__`` raises a one-line :class:`PrivacyError` naming the key)
and has no defaults of its own: the defaults live in ``conf/privacy/*.yaml`` and reach here through
the validated run config. :func:`dp_sgd_settings` and :func:`node_level_settings` build them once
per run config (memoised on the ``privacy`` section) and return ``None`` when the run uses the
other mechanism or none. This module imports neither torch nor Opacus, so the run-config check
(:mod:`astroscale_fl.run_config`) can use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache

from omegaconf import DictConfig, OmegaConf

from astroscale_fl.privacy.calibrate import (
    RoundPlan,
    default_delta,
    noise_for_target_epsilon,
    planned_steps,
    sample_rate,
    steps_per_round,
)
from astroscale_fl.privacy.ledger import PrivacyError, check_accountant

PRIVACY_NAMES = ("none", "dp_sgd", "dp_fedavg")


@dataclass(frozen=True)
class PrivacySettings:
    """The validated ``privacy=dp_sgd`` config group."""

    max_grad_norm: float
    noise_multiplier: float | None
    target_epsilon: float | None
    delta: float | None  # None: default_delta(rows of the node)
    accountant: str
    epsilon_budget: float | None  # per node, lifetime; None: no limit
    backend: str  # auto | ghost | opacus
    secure_mode: bool
    statistics_epsilon: float | None  # DP statistics round (privacy.dp_statistics)

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise PrivacyError("privacy: set exactly one of noise_multiplier and target_epsilon (e.g. privacy.noise_multiplier=1.1 privacy.target_epsilon=null)")
        if self.noise_multiplier is not None and not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise PrivacyError(f"privacy.noise_multiplier: expected a positive number, got {self.noise_multiplier}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise PrivacyError(f"privacy.target_epsilon: expected a positive number, got {self.target_epsilon}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise PrivacyError(f"privacy.delta: expected a number in (0, 1), got {self.delta}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise PrivacyError(f"privacy.max_grad_norm: expected a positive number, got {self.max_grad_norm}")
        check_accountant(self.accountant)
        if self.epsilon_budget is not None and not self.epsilon_budget > 0:
            raise PrivacyError(f"privacy.epsilon_budget: expected a positive number, got {self.epsilon_budget}")
        if self.statistics_epsilon is not None and not self.statistics_epsilon > 0:
            raise PrivacyError(f"privacy.statistics_epsilon: expected a positive number or null, got {self.statistics_epsilon}")
        if self.backend not in ("auto", "ghost", "opacus"):
            raise PrivacyError(f"privacy.backend: expected auto, ghost or opacus, got {self.backend!r}")

    @classmethod
    def from_config(cls, section: Mapping | None) -> PrivacySettings | None:
        """Settings from the ``privacy`` config group; ``None`` when the nodes run no DP-SGD
        (``privacy=none``, or ``dp_fedavg``: node-level noise is added by the server)."""
        if _name(section) != "dp_sgd":
            return None
        assert section is not None
        known = {"name", *(f.name for f in fields(cls))}
        unknown = sorted(set(section) - known)
        if unknown:
            raise PrivacyError(f"privacy: unknown keys {unknown}; expected some of {sorted(known)}")
        for f in fields(cls):
            if f.name not in section:
                raise PrivacyError(f"privacy.{f.name}: required for dp_sgd")
        if section["max_grad_norm"] is None:
            raise PrivacyError("privacy.max_grad_norm: required for dp_sgd")
        return cls(
            max_grad_norm=_number(section, "max_grad_norm"),  # type: ignore[arg-type]
            noise_multiplier=_number(section, "noise_multiplier"),
            target_epsilon=_number(section, "target_epsilon"),
            delta=_number(section, "delta"),
            accountant=str(section["accountant"]),
            epsilon_budget=_number(section, "epsilon_budget"),
            backend=str(section["backend"]),
            secure_mode=bool(section["secure_mode"]),
            statistics_epsilon=_number(section, "statistics_epsilon"),
        )

    def delta_for(self, n_rows: int) -> float:
        """δ of a node with ``n_rows`` training rows."""
        return float(self.delta) if self.delta is not None else default_delta(n_rows)

    def plan(
        self,
        *,
        n_rows: int,
        batch_size: int,
        local_epochs: int,
        num_rounds: int,
        participation: float = 1.0,
        prior_history: Sequence[Sequence[float]] = (),
    ) -> RoundPlan:
        """This node's round: σ (given, or calibrated for the run), q, steps, denominator."""
        q = sample_rate(n_rows, batch_size)
        steps = steps_per_round(n_rows, batch_size, local_epochs)
        if self.noise_multiplier is not None:
            sigma = float(self.noise_multiplier)
        else:
            total = planned_steps(steps, num_rounds, participation)
            sigma = noise_for_target_epsilon(self.target_epsilon, self.delta_for(n_rows), q, total, self.accountant, prior_history)  # type: ignore[arg-type]
        return RoundPlan(noise_multiplier=sigma, sample_rate=q, steps=steps, expected_batch_size=q * n_rows, max_grad_norm=self.max_grad_norm)


@dataclass(frozen=True)
class AdaptiveClipping:
    """``privacy.adaptive_clipping.*`` (Andrew et al. 2021); ``clipping_norm`` is the initial C."""

    target_quantile: float  # γ: fraction of updates meant to be within C
    learning_rate: float  # η of the geometric update of C
    clipped_count_stddev: float | None  # σ_b; null: expected sampled nodes / 20 (paper's choice)

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1:
            raise PrivacyError(f"privacy.adaptive_clipping.target_quantile: expected a number in (0, 1), got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise PrivacyError(f"privacy.adaptive_clipping.learning_rate: expected a positive number, got {self.learning_rate}")
        if self.clipped_count_stddev is not None and not self.clipped_count_stddev > 0:
            raise PrivacyError(f"privacy.adaptive_clipping.clipped_count_stddev: expected a positive number, got {self.clipped_count_stddev}")


@dataclass(frozen=True)
class NodeLevelSettings:
    """The validated ``privacy=dp_fedavg`` config group."""

    noise_multiplier: float
    clipping_norm: float
    adaptive: AdaptiveClipping | None  # None: fixed clipping
    delta: float | None  # None: default_delta(10 × nodes)
    epsilon_budget: float | None
    accountant: str
    distributed_noise_nodes: int | None  # m under SecAgg+; None: the reconstruction threshold

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise PrivacyError(f"privacy.node_noise_multiplier: expected a positive number, got {self.noise_multiplier}")
        if not (self.clipping_norm > 0 and math.isfinite(self.clipping_norm)):
            raise PrivacyError(f"privacy.clipping_norm: expected a positive number, got {self.clipping_norm}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise PrivacyError(f"privacy.node_delta: expected a number in (0, 1), got {self.delta}")
        if self.epsilon_budget is not None and not self.epsilon_budget > 0:
            raise PrivacyError(f"privacy.node_epsilon_budget: expected a positive number, got {self.epsilon_budget}")
        if self.accountant not in ("rdp", "prv"):
            raise PrivacyError(f"privacy.accountant: expected rdp or prv for dp_fedavg, got {self.accountant!r}")
        if self.distributed_noise_nodes is not None and not self.distributed_noise_nodes >= 1:
            raise PrivacyError(f"privacy.distributed_noise_nodes: expected an integer >= 1, got {self.distributed_noise_nodes}")

    @classmethod
    def from_config(cls, section: Mapping | None) -> NodeLevelSettings | None:
        """Settings from the ``privacy`` group; ``None`` unless ``privacy=dp_fedavg``."""
        if _name(section) != "dp_fedavg":
            return None
        assert section is not None
        adaptive = section["adaptive_clipping"]
        return cls(
            noise_multiplier=float(section["node_noise_multiplier"]),
            clipping_norm=float(section["clipping_norm"]),
            adaptive=AdaptiveClipping(float(adaptive["target_quantile"]), float(adaptive["learning_rate"]),
                                      _number(adaptive, "clipped_count_stddev")) if adaptive["enabled"] else None,
            delta=_number(section, "node_delta"),
            epsilon_budget=_number(section, "node_epsilon_budget"),
            accountant=str(section["accountant"]),
            distributed_noise_nodes=None if section["distributed_noise_nodes"] is None else int(section["distributed_noise_nodes"]),
        )

    def delta_for(self, num_nodes: int) -> float:
        """δ of the node-level guarantee (default: 1 / (10 N) rounded down to a power of ten)."""
        return float(self.delta) if self.delta is not None else default_delta(10 * int(num_nodes))

    def count_stddev(self, expected_nodes: float) -> float:
        """σ_b of the adaptive clipping count."""
        assert self.adaptive is not None
        return self.adaptive.clipped_count_stddev or max(expected_nodes / 20.0, 1e-12)

    def update_noise_multiplier(self, expected_nodes: float) -> float:
        """σ_Δ: the multiplier on the update sum, leaving room for the clipped count's release."""
        if self.adaptive is None:
            return self.noise_multiplier
        rest = self.noise_multiplier**-2 - (2.0 * self.count_stddev(expected_nodes)) ** -2
        if rest <= 0:
            raise PrivacyError(
                f"privacy.adaptive_clipping.clipped_count_stddev={self.count_stddev(expected_nodes):.4g} is too small for "
                f"node_noise_multiplier={self.noise_multiplier:g}: it must exceed node_noise_multiplier / 2")
        return rest**-0.5


def dp_sgd_settings(section: Mapping | None) -> PrivacySettings | None:
    """:meth:`PrivacySettings.from_config`, built once per distinct ``privacy`` section (one per run)."""
    return _built(PrivacySettings, _section_key(section))


def node_level_settings(section: Mapping | None) -> NodeLevelSettings | None:
    """:meth:`NodeLevelSettings.from_config`, built once per distinct ``privacy`` section (one per run)."""
    return _built(NodeLevelSettings, _section_key(section))


@lru_cache(maxsize=16)
def _built(cls: type, key: str):
    return cls.from_config(json.loads(key))


def _section_key(section: Mapping | None) -> str:
    """The section as canonical JSON (the cache key: equal sections, equal settings)."""
    if section is None:
        return "null"
    plain = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section
    try:
        return json.dumps(plain, sort_keys=True)
    except TypeError:
        raise PrivacyError(f"privacy: expected plain values, got {plain!r}") from None


def _name(section: Mapping | None) -> str:
    name = "none" if section is None else section.get("name", "none")
    if name not in PRIVACY_NAMES:
        raise PrivacyError(f"privacy: expected 'none', 'dp_sgd' or 'dp_fedavg', got {name!r}")
    return str(name)


def _number(section: Mapping, key: str) -> float | None:
    value = section[key]
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise PrivacyError(f"privacy.{key}: expected a number, got {value!r}") from None
