"""A node's privacy round as one call: plan it, check the budget, spend it, then train.

:func:`node_privacy` gives the ClientApp one object whose :meth:`~DPSGDRound.train` runs the
node's local training, whether privacy is on or off (pfl-research's ``NoPrivacy`` idea):
:class:`PlainRound` trains on seeded shuffled batches; :class:`DPSGDRound`, under
``privacy=dp_sgd``, does:

1. open the node's ledger (``Context.state``, and ``<data-dir>/.astroscale/privacy-ledger.json``
   in deployment, so the spend survives restarts and later runs on the same data);
2. plan the round: sample rate ``q = batch_size / N``, steps ``local_epochs / q``; with
   ``target_epsilon`` the noise multiplier is chosen once, on the node's first round of the
   run, for all planned steps of the run (rounds x expected participation), and kept;
3. decline (:class:`BudgetExceeded`, carrying a structured
   :class:`~astroscale_fl.federation.protocol.Decline`: node, reason, ε so far) if the round
   would take the node past ``epsilon_budget``;
4. record the spend *before* training (write-ahead: no noised output exists that the ledger
   does not count), then train with Poisson batches, per-example clipping and Gaussian noise.

Noise and Poisson masks come from OS randomness, never from the run's seed (which the server
knows): DP runs are therefore not bit-reproducible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ConfigRecord, RecordDict

from astroscale_fl.data.node_data import NodeData
from astroscale_fl.federation.protocol import DELTA_KEY, EPSILON_KEY, PRIVACY_KEY, TRAIN_LOSS_KEY, WEIGHT_KEY, Decline
from astroscale_fl.learning.steps import GradHook, TrainReport
from astroscale_fl.learning.training import shuffled_batches, train_local
from astroscale_fl.privacy import card
from astroscale_fl.privacy.calibrate import RoundPlan
from astroscale_fl.privacy.dp_sgd import make_private, poisson_batches, train_local_dp
from astroscale_fl.privacy.floor import PrivacyFloor
from astroscale_fl.privacy.ledger import LEDGER_FILENAME, PrivacyError, PrivacyLedger, commit_ledger, open_ledger
from astroscale_fl.privacy.settings import DpSgdSettings

PLAN_KEY = "privacy-plan"


class BudgetExceeded(PrivacyError):
    """The planned round would take this node past its lifetime ε budget."""

    def __init__(self, decline: Decline):
        super().__init__(str(decline))
        self.decline = decline


@dataclass
class LocalJob:
    """One round of local training as the node sets it up (model, optimizer, rows, hooks)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    features: torch.Tensor
    target: torch.Tensor
    batch_size: int
    local_epochs: int
    generator: torch.Generator  # seeds the shuffled batches of non-private training
    after_backward: GradHook | None = None
    cuda_graph: bool = False  # train.cuda_graph: replay the step from a CUDA graph (rows on CUDA, no DP)


@dataclass
class LocalRound:
    """What a node's training round produced: the loop's report, the reply metrics, and the
    extra reply records (the DP ledger entry)."""

    report: TrainReport
    metrics: dict[str, float | int]
    records: dict[str, ConfigRecord]


class PlainRound:
    """``privacy=none``: seeded shuffled batches, plain :func:`~astroscale_fl.learning.training.train_local`."""

    def train(self, job: LocalJob) -> LocalRound:
        batches = shuffled_batches(len(job.target), job.batch_size, job.local_epochs, job.generator)
        report = train_local(job.model, job.optimizer, job.features, job.target, batches, after_backward=job.after_backward,
                             cuda_graph=job.cuda_graph)
        return LocalRound(report, {WEIGHT_KEY: report.examples, TRAIN_LOSS_KEY: report.loss}, {})


class DPSGDRound:
    """``privacy=dp_sgd``: plan -> decline -> spend -> train with clipping and noise.

    Strategy terms (``after_backward``: FedProx, SCAFFOLD) act after clip + noise (see
    :mod:`astroscale_fl.privacy.dp_sgd`). The reply carries ε so far and the node's ledger (for
    the model card), and no loss computed without noise.
    """

    def __init__(self, settings: DpSgdSettings, cfg, state: RecordDict, node: NodeData):
        self.settings, self.cfg, self.state, self.node = settings, cfg, state, node

    def train(self, job: LocalJob) -> LocalRound:
        n = len(job.target)
        ledger, plan = spend_round(self.settings, self.cfg, self.state, self.node, n)
        private, dp_optimizer = make_private(job.model, job.optimizer, noise_multiplier=plan.noise_multiplier,
                                             max_grad_norm=plan.max_grad_norm, expected_batch_size=plan.expected_batch_size,
                                             backend=self.settings.backend, secure_mode=self.settings.secure_mode)
        batches = poisson_batches(n, plan.sample_rate, plan.steps, generator=None)
        report = train_local_dp(private, dp_optimizer, job.features, job.target, batches, after_backward=job.after_backward)
        metrics = {WEIGHT_KEY: n, EPSILON_KEY: ledger.epsilon(), DELTA_KEY: ledger.delta}
        return LocalRound(report, metrics, {PRIVACY_KEY: card.reply_record(self.node.name, ledger)})


def node_privacy(settings: DpSgdSettings | None, cfg, state: RecordDict, node: NodeData) -> PlainRound | DPSGDRound:
    """The node's privacy round: one ``train(job)`` call either way. ``settings``: the run's
    :meth:`DpSgdSettings.from_config` (None without DP-SGD), built once per run config by the caller."""
    return PlainRound() if settings is None else DPSGDRound(settings, cfg, state, node)


def ledger_path(node: NodeData) -> Path | None:
    """The node's ledger file (deployment: in its state directory), or None in simulation."""
    return node.state_dir / LEDGER_FILENAME if node.state_dir is not None else None


def plan_round(settings: DpSgdSettings, cfg, state: RecordDict, ledger: PrivacyLedger, n_rows: int) -> RoundPlan:
    """This round's plan; the noise multiplier is fixed on the node's first round of the run."""
    if PLAN_KEY in state:
        stored = state[PLAN_KEY]
        fixed = dataclasses.replace(settings, noise_multiplier=float(stored["noise-multiplier"]), target_epsilon=None)
        return fixed.plan_in_run(cfg, n_rows)
    plan = settings.plan_in_run(cfg, n_rows, prior_history=ledger.history)
    state[PLAN_KEY] = ConfigRecord({"noise-multiplier": float(plan.noise_multiplier)})
    return plan


def spend_round(settings: DpSgdSettings, cfg, state: RecordDict, node: NodeData, n_rows: int,
                floor: PrivacyFloor | None = None) -> tuple[PrivacyLedger, RoundPlan]:
    """Plan the round, check the node's floor and budget, and record the spend; raise
    :class:`BudgetExceeded` or :class:`~astroscale_fl.privacy.floor.FloorRefused`."""
    floor = floor or PrivacyFloor.from_node_config(node.config)
    path = ledger_path(node)
    ledger = open_ledger(settings.accountant, settings.delta_for(n_rows), state=state, path=path)
    plan = plan_round(settings, cfg, state, ledger, n_rows)
    floor.check_noise(plan.noise_multiplier, node.name)
    budget = floor.budget(settings.epsilon_budget)
    reason = ledger.budget_refusal(budget, plan.noise_multiplier, plan.sample_rate, plan.steps)
    if reason:
        if budget != settings.epsilon_budget:
            reason += f" (node config max-epsilon={floor.max_epsilon:g})"
        raise BudgetExceeded(Decline(node.name, reason, ledger.epsilon()))
    ledger.record(plan.noise_multiplier, plan.sample_rate, plan.steps)
    commit_ledger(ledger, state=state, path=path)
    return ledger, plan
