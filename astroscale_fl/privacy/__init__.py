"""Differential privacy for AstroScale FL nodes (GitHub issues 5 and 16).

- :mod:`.dp_sgd`: DP-SGD for the tensor-slicing loop (Poisson masks, per-sample clipping,
  Gaussian noise; FedProx / SCAFFOLD terms as post-processing);
- :mod:`.ghost`: the ghost-clipping DP optimizer (per-sample norms of ``nn.Linear`` models);
- :mod:`.ledger`: a node's lifetime accountant history, ε, budget check, persistence;
- :mod:`.calibrate`: δ, sample rate, steps, σ for a target ε, the validated settings;
- :mod:`.node`: a node's privacy round as one call (``PlainRound`` or DP-SGD), declines;
- :mod:`.card`: reply records and the model card's ``privacy`` section (recomputable);
- :mod:`.dp_statistics`: the statistics round through the Gaussian mechanism (``privacy.statistics_epsilon``);
- :mod:`.node_level`: node-level DP-FedAvg settings, clipping, noise and accounting (``privacy=dp_fedavg``).
"""

from astroscale_fl.federation.protocol import BUDGET_EXCEEDED_CODE, FLOOR_REFUSED_CODE  # re-exported
from astroscale_fl.privacy.calibrate import (
    PrivacySettings,
    RoundPlan,
    default_delta,
    noise_for_target_epsilon,
    planned_steps,
    sample_rate,
    steps_per_round,
)
from astroscale_fl.privacy.card import (
    entry_from_record,
    node_entry,
    privacy_section,
    recompute_epsilon,
    reply_record,
    verify_section,
)
from astroscale_fl.privacy.dp_sgd import make_private, poisson_batches, train_local_dp, unwrap
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

__all__ = [
    "BUDGET_EXCEEDED_CODE", "FLOOR_REFUSED_CODE", "LEDGER_FILENAME", "PrivacyError", "PrivacyLedger", "PrivacySettings", "RoundPlan",
    "commit_ledger", "default_delta", "entry_from_record", "epsilon_of", "ledger_from_state", "ledger_to_state",
    "make_private", "node_entry", "noise_for_target_epsilon", "open_ledger", "planned_steps", "poisson_batches",
    "privacy_section", "recompute_epsilon", "reply_record", "sample_rate", "steps_per_round", "train_local_dp",
    "unwrap", "verify_section",
]
