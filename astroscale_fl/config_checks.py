"""Config mistakes caught before anything is written (no run directory, no model, no ledger).

:func:`check_values` runs inside :func:`astroscale_fl.run_config.validate` (keys on their own);
:func:`check_run` runs in the training preflight, once the data and the node count are known
(keys against each other and against the data: ``min_replies`` vs the nodes, a checkpoint to
resume from, a privacy budget that could not pay for one round).
"""

from __future__ import annotations

import math

import numpy as np
from omegaconf import DictConfig, OmegaConf

from astroscale_fl.config import require
from astroscale_fl.data.holdout import is_local_val
from astroscale_fl.errors import ConfigError
from astroscale_fl.federation import checkpoint
from astroscale_fl.federation.checkpoint import checkpoint_path
from astroscale_fl.learning.model_spec import check_mlp
from astroscale_fl.privacy.ledger import PrivacyLedger
from astroscale_fl.privacy.settings import dp_sgd_settings

MAX_PORT = 65535
def _finite_positive(value) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def check_values(cfg: DictConfig) -> None:
    """Federation, model and task keys that have a valid range of their own."""
    fed = cfg.federation
    require(0 <= fed.metrics_port <= MAX_PORT, "federation.metrics_port", f"a port in 0..{MAX_PORT} (0 = off)", fed.metrics_port)
    require(_finite_positive(fed.round_timeout), "federation.round_timeout", "a positive number of seconds", fed.round_timeout)
    require(fed.min_replies >= 1, "federation.min_replies", "an integer >= 1", fed.min_replies)
    require(fed.max_update_norm is None or _finite_positive(fed.max_update_norm), "federation.max_update_norm",
             "a positive number or null", fed.max_update_norm)
    if fed.num_nodes is not None:
        check_min_replies(fed)
    if fed.resume_from:
        path = checkpoint_path(fed.resume_from)
        require(path.is_file(), "federation.resume_from", "a run directory holding checkpoint.npz, or a .npz file",
                 str(fed.resume_from))
    if cfg.model.name == "mlp":
        check_mlp(cfg.model.widths, str(cfg.model.activation), float(cfg.model.dropout))
    fraction = cfg.task.get("max_bad_fraction")
    if fraction is not None:
        require(0 <= fraction < 1, "task.max_bad_fraction", "a number in [0, 1)", fraction)


def check_min_replies(fed: DictConfig) -> None:
    """``min_replies`` no larger than the nodes a round samples (else no round could aggregate)."""
    require(fed.min_replies <= fed.num_nodes, "federation.min_replies",
             f"at most federation.num_nodes={fed.num_nodes} (a round could never aggregate)", fed.min_replies)
    sampled = min(fed.num_nodes, max(fed.min_train_nodes, int(round(fed.fraction_train * fed.num_nodes))))
    require(fed.min_replies <= sampled, "federation.min_replies",
             f"at most the {sampled} nodes a round samples (federation.fraction_train={fed.fraction_train:g} of "
             f"{fed.num_nodes}, at least federation.min_train_nodes={fed.min_train_nodes})", fed.min_replies)


def check_run(cfg: DictConfig, node_rows: np.ndarray | None) -> None:
    """Checks that need the resolved node count and, in simulation, each node's row count."""
    fed = cfg.federation
    check_min_replies(fed)
    if fed.resume_from:
        resumed = checkpoint.load(fed.resume_from)
        checkpoint.check_compatible(resumed, OmegaConf.to_container(cfg, resolve=True), fed.resume_from)
    if node_rows is not None and cfg.privacy.name != "none" and cfg.privacy.get("epsilon_budget") is not None:
        check_first_round_budget(cfg, node_rows)


def check_first_round_budget(cfg: DictConfig, node_rows: np.ndarray) -> None:
    """A lifetime budget smaller than one round's ε would make every node decline round 1."""
    settings = dp_sgd_settings(cfg.privacy)
    for n_rows in sorted({int(n) for n in node_rows}):
        ledger = PrivacyLedger(settings.accountant, settings.delta_for(n_rows))
        plan = settings.plan_in_run(cfg, n_rows)
        cost = ledger.epsilon_after(plan.noise_multiplier, plan.sample_rate, plan.steps)
        if cost > settings.epsilon_budget:
            raise ConfigError(
                f"privacy.epsilon_budget={settings.epsilon_budget:g}: one round costs epsilon={cost:.4g} on a node with "
                f"{n_rows} training rows (noise multiplier {plan.noise_multiplier:.4g}, {plan.steps} steps, "
                f"delta={ledger.delta:g}); every node would decline round 1: raise the budget or privacy.noise_multiplier")


def node_training_rows(train, nodes: np.ndarray, num_nodes: int, seed: int) -> np.ndarray:
    """Rows each simulated node trains on: its partition less its local validation rows (by row id)."""
    is_val = is_local_val({"id": train["id"].to_numpy()}, seed)
    total = np.bincount(nodes, minlength=num_nodes)
    val = np.bincount(nodes, weights=is_val, minlength=num_nodes).astype(np.int64)
    return np.where((val == total) | (total < 2), total, total - val)  # a node all-validation trains on all
