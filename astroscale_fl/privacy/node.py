"""A node's DP-SGD round: plan it, check the budget, spend it in the ledger, then train.

Called by the ClientApp for every training message under ``privacy=dp_sgd``:

1. open the node's ledger (``Context.state``, and ``<data-dir>/.astroscale/privacy-ledger.json``
   in deployment, so the spend survives restarts and later runs on the same data);
2. plan the round: sample rate ``q = batch_size / N``, steps ``local_epochs / q``; with
   ``target_epsilon`` the noise multiplier is chosen once, on the node's first round of the
   run, for all planned steps of the run (rounds x expected participation), and kept;
3. decline (:class:`BudgetExceeded`) if the round would take the node past ``epsilon_budget``;
4. record the spend *before* training (write-ahead: no noised output exists that the ledger
   does not count), then train with Poisson batches, per-example clipping and Gaussian noise.

Noise and Poisson masks come from OS randomness, never from the run's seed (which the server
knows): DP runs are therefore not bit-reproducible.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flwr.app import ConfigRecord, RecordDict

from astroscale_fl.privacy.calibrate import PrivacySettings, RoundPlan
from astroscale_fl.privacy.floor import PrivacyFloor
from astroscale_fl.privacy.ledger import LEDGER_FILENAME, PrivacyError, PrivacyLedger, commit_ledger, open_ledger

PLAN_KEY = "privacy-plan"


class BudgetExceeded(PrivacyError):
    """The planned round would take this node past its lifetime ε budget."""


def node_name(node_config: dict) -> str:
    """A name for the node that stays the same across restarts (not Flower's node id)."""
    if "node-name" in node_config:
        return str(node_config["node-name"])
    if "data-dir" in node_config:
        return Path(str(node_config["data-dir"])).resolve().name
    return f"partition-{node_config.get('partition-id', 0)}"


def ledger_path(node_config: dict) -> Path | None:
    """The node's ledger file (deployment), or None in simulation."""
    return Path(str(node_config["data-dir"])) / ".astroscale" / LEDGER_FILENAME if "data-dir" in node_config else None


def plan_round(settings: PrivacySettings, cfg, state: RecordDict, ledger: PrivacyLedger, n_rows: int, batch_size: int) -> RoundPlan:
    """This round's plan; the noise multiplier is fixed on the node's first round of the run."""
    fed = cfg.federation
    participation = min(1.0, max(int(fed.num_nodes * fed.fraction_train), fed.min_train_nodes) / fed.num_nodes)
    if PLAN_KEY in state:
        stored = state[PLAN_KEY]
        fixed = dataclasses.replace(settings, noise_multiplier=float(stored["noise-multiplier"]), target_epsilon=None)
        return fixed.plan(n_rows=n_rows, batch_size=batch_size, local_epochs=int(cfg.train.local_epochs),
                          num_rounds=int(fed.num_rounds), participation=participation)
    plan = settings.plan(n_rows=n_rows, batch_size=batch_size, local_epochs=int(cfg.train.local_epochs),
                         num_rounds=int(fed.num_rounds), participation=participation, prior_history=ledger.history)
    state[PLAN_KEY] = ConfigRecord({"noise-multiplier": float(plan.noise_multiplier)})
    return plan


def spend_round(settings: PrivacySettings, cfg, state: RecordDict, node_config: dict, n_rows: int,
                floor: PrivacyFloor | None = None) -> tuple[PrivacyLedger, RoundPlan]:
    """Plan the round, check the node's floor and budget, and record the spend; raise
    :class:`BudgetExceeded` or :class:`~astroscale_fl.privacy.floor.FloorRefused`."""
    floor = floor or PrivacyFloor()
    path = ledger_path(node_config)
    ledger = open_ledger(settings.accountant, settings.delta_for(n_rows), state=state, path=path)
    plan = plan_round(settings, cfg, state, ledger, n_rows, int(cfg.train.batch_size))
    floor.check_noise(plan.noise_multiplier, node_name(node_config))
    budget = floor.budget(settings.epsilon_budget)
    reason = ledger.budget_refusal(budget, plan.noise_multiplier, plan.sample_rate, plan.steps)
    if reason:
        if budget != settings.epsilon_budget:
            reason += f" (node config max-epsilon={floor.max_epsilon:g})"
        raise BudgetExceeded(f"node {node_name(node_config)} declines: {reason}")
    ledger.record(plan.noise_multiplier, plan.sample_rate, plan.steps)
    commit_ledger(ledger, state=state, path=path)
    return ledger, plan
