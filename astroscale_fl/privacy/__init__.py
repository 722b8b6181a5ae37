"""Differential privacy for AstroScale FL nodes (GitHub issues 5 and 16).

- :mod:`.settings`: the validated settings, one frozen object per mechanism (DP-SGD, node-level);
- :mod:`.dp_sgd`: DP-SGD for the tensor-slicing loop (Poisson masks, per-sample clipping,
  Gaussian noise; FedProx / SCAFFOLD terms as post-processing);
- :mod:`.ghost`: the ghost-clipping DP optimizer (per-sample norms of ``nn.Linear`` models);
- :mod:`.ledger`: a node's lifetime accountant history, ε, budget check, persistence;
- :mod:`.calibrate`: δ, sample rate, steps, σ for a target ε;
- :mod:`.node`: a node's privacy round as one call (``PlainRound`` or DP-SGD), declines;
- :mod:`.card`: reply records and the model card's ``privacy`` section (recomputable);
- :mod:`.dp_statistics`: the statistics round through the Gaussian mechanism (``privacy.statistics_epsilon``);
- :mod:`.node_level`: node-level DP-FedAvg clipping, noise and accounting (``privacy=dp_fedavg``).

The package re-exports only what imports neither torch nor Opacus (settings, calibration, the
ledger), so the run-config check can read the settings cheaply; import :mod:`.dp_sgd` and
:mod:`.card` by name.
"""

from astroscale_fl.federation.protocol import BUDGET_EXCEEDED_CODE, FLOOR_REFUSED_CODE  # re-exported
from astroscale_fl.privacy.calibrate import (
    RoundPlan,
    default_delta,
    noise_for_target_epsilon,
    planned_steps,
    sample_rate,
    steps_per_round,
)
from astroscale_fl.privacy.ledger import (
    LEDGER_FILENAME,
    PrivacyError,
    PrivacyLedger,
    commit_ledger,
    epsilon_of,
    ledger_from_state,
    ledger_to_state,
    open_ledger,
)
from astroscale_fl.privacy.settings import (
    AdaptiveClipping,
    DpSgdSettings,
    NodeLevelSettings,
    dp_sgd_settings,
    node_level_settings,
)

__all__ = [
    "BUDGET_EXCEEDED_CODE", "FLOOR_REFUSED_CODE", "LEDGER_FILENAME", "AdaptiveClipping", "NodeLevelSettings", "PrivacyError",
    "PrivacyLedger", "DpSgdSettings", "RoundPlan", "commit_ledger", "default_delta", "dp_sgd_settings", "epsilon_of",
    "ledger_from_state", "ledger_to_state", "node_level_settings", "noise_for_target_epsilon", "open_ledger",
    "planned_steps", "sample_rate", "steps_per_round",
]
