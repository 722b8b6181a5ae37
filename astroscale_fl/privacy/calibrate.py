"""Choosing DP-SGD's parameters: δ, sample rate, steps, and σ for a target ε.

``privacy=dp_sgd`` settings (:class:`~astroscale_fl.privacy.settings.DpSgdSettings`) turn into one :class:`RoundPlan` per
node and round: noise multiplier σ, Poisson sample rate ``q = batch_size / N``, and the
number of steps ``local_epochs × ⌈N / batch_size⌉``. With ``target_epsilon``, σ is chosen
before the first round so that the node's planned steps over the whole run (rounds ×
expected participation) reach ``target_epsilon`` at δ; with ``prior_history`` (the node's
ledger at the start of the run) the target covers the node's whole life.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from astroscale_fl.privacy.ledger import MAX_SIGMA, PrivacyError, check_accountant, create_accountant, epsilon_of


def default_delta(n_rows: int) -> float:
    """``1 / n_rows`` rounded down to a power of ten (4,400 rows -> 1e-4; 1,000 rows -> 1e-3)."""
    n_rows = int(n_rows)
    if n_rows < 2:
        raise PrivacyError(f"privacy: a node needs at least 2 training rows for a default delta, got {n_rows}; set privacy.delta")
    return 10.0 ** -len(str(n_rows - 1))  # 10^-ceil(log10 N), in integers


def sample_rate(n_rows: int, batch_size: int) -> float:
    """Poisson sampling rate ``batch_size / n_rows`` (at most 1)."""
    if n_rows < 1 or batch_size < 1:
        raise PrivacyError(f"privacy: expected positive rows and batch size, got {n_rows} rows, batch size {batch_size}")
    return min(1.0, batch_size / n_rows)


def steps_per_round(n_rows: int, batch_size: int, local_epochs: int) -> int:
    """DP steps in one round: as many as the non-private loop takes (``epochs × ⌈N / B⌉``)."""
    return int(local_epochs) * math.ceil(n_rows / batch_size)


def planned_steps(steps_per_round: int, num_rounds: int, participation: float = 1.0) -> int:
    """Steps a node expects over a run: per-round steps × ⌈rounds × participation⌉.

    ``participation`` is the expected fraction of rounds the node trains in (Flower's
    ``fraction_train``, or ``max(fraction_train, min_train_nodes / num_nodes)``).
    """
    if not 0.0 < participation <= 1.0:
        raise PrivacyError(f"privacy: expected participation in (0, 1], got {participation}")
    return int(steps_per_round) * math.ceil(num_rounds * participation - 1e-9)


def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    prior_history: Sequence[Sequence[float]] = (),
    rel_tolerance: float = 1e-3,
) -> float:
    """The smallest σ (to ``rel_tolerance`` of ε) whose ``steps`` steps reach at most ``target_epsilon``.

    Without ``prior_history`` this is Opacus' ``get_noise_multiplier``; with it, the same
    bisection over ``prior_history + [(σ, sample_rate, steps)]``.
    """
    check_accountant(accountant)
    if not target_epsilon > 0:
        raise PrivacyError(f"privacy.target_epsilon: expected a positive number, got {target_epsilon}")
    prior = tuple(tuple(h) for h in prior_history)
    with warnings.catch_warnings():  # bisection probes large σ (RDP's "largest alpha" note), gdp's notice
        warnings.simplefilter("ignore")
        return _calibrate(float(target_epsilon), float(delta), float(sample_rate), int(steps), accountant, prior, float(rel_tolerance))


@lru_cache(maxsize=64)
def _calibrate(target: float, delta: float, q: float, steps: int, accountant: str, prior: tuple, rel_tolerance: float) -> float:
    if steps < 1:
        raise PrivacyError(f"privacy: no steps planned to calibrate for (steps={steps})")
    if not prior:
        from opacus.accountants.utils import get_noise_multiplier

        try:
            return float(get_noise_multiplier(
                target_epsilon=target, target_delta=delta, sample_rate=q, steps=steps,
                accountant=accountant, epsilon_tolerance=rel_tolerance * target,
            ))
        except ValueError as exc:
            raise PrivacyError(f"privacy.target_epsilon={target:g} cannot be reached with {steps} steps at sample rate {q:.4g}: {exc}") from None
    if accountant == "gdp":
        raise PrivacyError("privacy: the gdp accountant cannot compose a new noise multiplier with a node's earlier steps; use rdp or prv, or set noise_multiplier")
    spent = epsilon_of(accountant, prior, delta)
    if spent >= target:
        raise PrivacyError(f"privacy.target_epsilon={target:g}: this node has already spent epsilon={spent:.4g}")

    def eps(sigma: float) -> float:
        acc = create_accountant(accountant)
        acc.history = [*prior, (sigma, q, steps)]
        return float(acc.get_epsilon(delta=delta))

    low, high, eps_high = 0.0, 10.0, math.inf
    while eps_high > target:  # same bisection as Opacus' get_noise_multiplier
        high *= 2
        if high > MAX_SIGMA:
            raise PrivacyError(f"privacy.target_epsilon={target:g} cannot be reached (noise multiplier over {MAX_SIGMA:g})")
        eps_high = eps(high)
    while target - eps_high > rel_tolerance * target:
        mid = (low + high) / 2
        e = eps(mid)
        if e < target:
            high, eps_high = mid, e
        else:
            low = mid
    return high


@dataclass(frozen=True)
class RoundPlan:
    """What one node's DP-SGD round will do, fixed before it trains."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    expected_batch_size: float  # sample_rate × rows: the mean's denominator
    max_grad_norm: float
