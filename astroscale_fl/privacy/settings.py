"""The privacy settings of a run: one typed, frozen object per mechanism, each the schema of its
``conf/privacy/*.yaml`` choice and validated where it is defined.

- :class:`NoPrivacy`: ``privacy=none`` (at most a DP statistics round);
- :class:`DpSgdSettings`: ``privacy=dp_sgd`` (per-node DP-SGD, its ledger, the statistics round);
- :class:`NodeLevelSettings` (with :class:`AdaptiveClipping`): ``privacy=dp_fedavg`` (node-level DP-FedAvg).

The field names are the config keys: :data:`PRIVACY_SETTINGS` is the ``privacy`` group's schema
registry (the run config merges the YAML onto :func:`astroscale_fl.config.schema_of` of these
classes), so a key is defined once. Each class owns its checks (``__post_init__`` raises a one-line
:class:`PrivacyError` naming the key) and has no defaults of its own: the defaults live in
``conf/privacy/*.yaml``. :func:`dp_sgd_settings` and :func:`node_level_settings` build them once per
run config (memoised on the ``privacy`` section) and return ``None`` when the run uses the other
mechanism or none. This module imports neither torch nor Opacus, so the run-config check
(:mod:`astroscale_fl.run_config`) can use it.
"""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from functools import lru_cache

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from astroscale_fl.config import merge_section, schema_of
from astroscale_fl.errors import ConfigError
from astroscale_fl.privacy.calibrate import (
    RoundPlan,
    default_delta,
    noise_for_target_epsilon,
    planned_steps,
    sample_rate,
    steps_per_round,
)
from astroscale_fl.privacy.ledger import PrivacyError, check_accountant


def _check_statistics_epsilon(value: float | None) -> None:
    if value is not None and not value > 0:
        raise PrivacyError(f"privacy.statistics_epsilon: expected a positive number or null, got {value}")


@dataclass(frozen=True)
class NoPrivacy:
    """The validated ``privacy=none`` config group: no DP training, at most a DP statistics round."""

    statistics_epsilon: float | None  # DP statistics round (Gaussian mechanism); None: exact statistics

    def __post_init__(self) -> None:
        _check_statistics_epsilon(self.statistics_epsilon)


@dataclass(frozen=True)
class DpSgdSettings:
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
        _check_statistics_epsilon(self.statistics_epsilon)
        if self.backend not in ("auto", "ghost", "opacus"):
            raise PrivacyError(f"privacy.backend: expected auto, ghost or opacus, got {self.backend!r}")

    @classmethod
    def from_config(cls, section: Mapping | None) -> DpSgdSettings | None:
        """The settings of a ``privacy`` section; ``None`` when it names another mechanism."""
        return settings_from_config(section) if _name(section) == _CHOICE[cls] else None

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

    def plan_in_run(self, cfg, n_rows: int, prior_history: Sequence[Sequence[float]] = ()) -> RoundPlan:
        """:meth:`plan` for a node with ``n_rows`` training rows in the run ``cfg`` (its batch size, local
        epochs, rounds, and the share of nodes a round samples)."""
        fed = cfg.federation
        participation = min(1.0, max(int(fed.num_nodes * fed.fraction_train), fed.min_train_nodes) / fed.num_nodes)
        return self.plan(n_rows=n_rows, batch_size=int(cfg.train.batch_size), local_epochs=int(cfg.train.local_epochs),
                         num_rounds=int(fed.num_rounds), participation=participation, prior_history=prior_history)


@dataclass(frozen=True)
class AdaptiveClipping:
    """``privacy.adaptive_clipping.*`` (Andrew et al. 2021); ``clipping_norm`` is the initial C."""

    enabled: bool  # false: fixed clipping at clipping_norm (the other keys are not used)
    target_quantile: float  # γ: fraction of updates meant to be within C
    learning_rate: float  # η of the geometric update of C
    clipped_count_stddev: float | None  # σ_b; None: expected sampled nodes / 20 (paper's choice)

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not 0 < self.target_quantile < 1:
            raise PrivacyError(f"privacy.adaptive_clipping.target_quantile: expected a number in (0, 1), got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise PrivacyError(f"privacy.adaptive_clipping.learning_rate: expected a positive number, got {self.learning_rate}")
        if self.clipped_count_stddev is not None and not self.clipped_count_stddev > 0:
            raise PrivacyError(f"privacy.adaptive_clipping.clipped_count_stddev: expected a positive number, got {self.clipped_count_stddev}")


@dataclass(frozen=True)
class NodeLevelSettings:
    """The validated ``privacy=dp_fedavg`` config group."""

    node_noise_multiplier: float  # σ of the node-level Gaussian mechanism
    clipping_norm: float  # L2 bound on a node's update (the initial C under adaptive clipping)
    adaptive_clipping: AdaptiveClipping
    node_delta: float | None  # None: default_delta(10 × nodes)
    node_epsilon_budget: float | None  # the run stops before the node-level ε would pass it
    accountant: str  # rdp | prv
    statistics_epsilon: float | None  # DP statistics round (example-level, in the nodes' ledgers)
    distributed_noise_nodes: int | None  # m under SecAgg+; None: the reconstruction threshold

    def __post_init__(self) -> None:
        if not (self.node_noise_multiplier > 0 and math.isfinite(self.node_noise_multiplier)):
            raise PrivacyError(f"privacy.node_noise_multiplier: expected a positive number, got {self.node_noise_multiplier}")
        if not (self.clipping_norm > 0 and math.isfinite(self.clipping_norm)):
            raise PrivacyError(f"privacy.clipping_norm: expected a positive number, got {self.clipping_norm}")
        if self.node_delta is not None and not 0 < self.node_delta < 1:
            raise PrivacyError(f"privacy.node_delta: expected a number in (0, 1), got {self.node_delta}")
        if self.node_epsilon_budget is not None and not self.node_epsilon_budget > 0:
            raise PrivacyError(f"privacy.node_epsilon_budget: expected a positive number, got {self.node_epsilon_budget}")
        if self.accountant not in ("rdp", "prv"):
            raise PrivacyError(f"privacy.accountant: expected rdp or prv for dp_fedavg, got {self.accountant!r}")
        _check_statistics_epsilon(self.statistics_epsilon)
        if self.distributed_noise_nodes is not None and not self.distributed_noise_nodes >= 1:
            raise PrivacyError(f"privacy.distributed_noise_nodes: expected an integer >= 1, got {self.distributed_noise_nodes}")

    @property
    def adaptive(self) -> AdaptiveClipping | None:
        """The adaptive clipping settings, ``None`` under fixed clipping."""
        return self.adaptive_clipping if self.adaptive_clipping.enabled else None

    @classmethod
    def from_config(cls, section: Mapping | None) -> NodeLevelSettings | None:
        """The settings of a ``privacy`` section; ``None`` when it names another mechanism."""
        return settings_from_config(section) if _name(section) == _CHOICE[cls] else None

    def delta_for(self, num_nodes: int) -> float:
        """δ of the node-level guarantee (default: 1 / (10 N) rounded down to a power of ten)."""
        return float(self.node_delta) if self.node_delta is not None else default_delta(10 * int(num_nodes))

    def count_stddev(self, expected_nodes: float) -> float:
        """σ_b of the adaptive clipping count."""
        assert self.adaptive is not None
        return self.adaptive.clipped_count_stddev or max(expected_nodes / 20.0, 1e-12)

    def update_noise_multiplier(self, expected_nodes: float) -> float:
        """σ_Δ: the multiplier on the update sum, leaving room for the clipped count's release."""
        if self.adaptive is None:
            return self.node_noise_multiplier
        rest = self.node_noise_multiplier**-2 - (2.0 * self.count_stddev(expected_nodes)) ** -2
        if rest <= 0:
            raise PrivacyError(
                f"privacy.adaptive_clipping.clipped_count_stddev={self.count_stddev(expected_nodes):.4g} is too small for "
                f"node_noise_multiplier={self.node_noise_multiplier:g}: it must exceed node_noise_multiplier / 2")
        return rest**-0.5


#: the ``privacy`` group's choices and the settings class (and config schema) of each
PRIVACY_SETTINGS: dict[str, type] = {"none": NoPrivacy, "dp_sgd": DpSgdSettings, "dp_fedavg": NodeLevelSettings}


def settings_from_config(section: Mapping | None) -> NoPrivacy | DpSgdSettings | NodeLevelSettings:
    """The settings object of a ``privacy`` section (``None``: ``privacy=none``): the section merged
    onto its choice's schema (unknown keys, ill-typed and missing values are one-line errors), then
    the class's own checks."""
    name = _name(section)
    if section is None:
        return NoPrivacy(statistics_epsilon=None)
    cls = PRIVACY_SETTINGS[name]
    try:
        typed = merge_section(section, "privacy", schema_of(cls))
        plain = OmegaConf.to_container(typed, throw_on_missing=True)
    except ConfigError as exc:
        raise PrivacyError(str(exc)) from None
    except OmegaConfBaseException as exc:
        raise PrivacyError(f"privacy.{exc.full_key}: a value is required for privacy={name}") from None
    return _from_mapping(cls, plain)


def privacy_settings(section: Mapping | None) -> NoPrivacy | DpSgdSettings | NodeLevelSettings:
    """:func:`settings_from_config`, built once per distinct section (one per run)."""
    return _built(_section_key(section))


def dp_sgd_settings(section: Mapping | None) -> DpSgdSettings | None:
    """The ``privacy=dp_sgd`` settings; ``None`` when the nodes run no DP-SGD (``privacy=none``, or
    ``dp_fedavg``: node-level noise is added by the server)."""
    settings = privacy_settings(section)
    return settings if isinstance(settings, DpSgdSettings) else None


def node_level_settings(section: Mapping | None) -> NodeLevelSettings | None:
    """The ``privacy=dp_fedavg`` settings; ``None`` unless the run uses node-level DP-FedAvg."""
    settings = privacy_settings(section)
    return settings if isinstance(settings, NodeLevelSettings) else None


_CHOICE = {cls: name for name, cls in PRIVACY_SETTINGS.items()}


def _name(section: Mapping | None) -> str:
    name = "none" if section is None else section.get("name", "none")
    if name not in PRIVACY_SETTINGS:
        raise PrivacyError(f"privacy: expected one of {sorted(PRIVACY_SETTINGS)}, got {name!r}")
    return str(name)


@lru_cache(maxsize=16)
def _built(key: str):
    return settings_from_config(json.loads(key))


def _from_mapping(cls: type, values: Mapping):
    """``cls`` from a plain mapping of the schema's values (less ``name``), nested settings classes built too."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _from_mapping(hints[f.name], values[f.name]) if is_dataclass(hints[f.name]) else values[f.name]
                  for f in fields(cls)})


def _section_key(section: Mapping | None) -> str:
    """The section as canonical JSON (the cache key: equal sections, equal settings)."""
    if section is None:
        return "null"
    plain = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section
    try:
        return json.dumps(plain, sort_keys=True)
    except TypeError:
        raise PrivacyError(f"privacy: expected plain values, got {plain!r}") from None
