"""The ServerApp's work: fit preprocessing federatedly, run the rounds, export the result.

``run_federation`` is what ``server/app.py`` calls with Flower's Grid, both in simulation
(``astroscale-fl train``) and in deployment (``flwr run .``). It serves Prometheus metrics
(``federation.metrics_port``), writes ``checkpoint.npz`` after every round
(``federation.checkpoint``) and continues a run from one (``federation.resume_from``): the
statistics round is skipped and the checkpoint's preprocessing, model, strategy state and
history are restored.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from astroscale_fl.data.nodes import task_split
from astroscale_fl.data.tasks import display_unit, get_task
from astroscale_fl.errors import ConfigError
from astroscale_fl.export.model_dir import finish_run
from astroscale_fl.federation import checkpoint as ckpt_mod
from astroscale_fl.federation.history import NODE_COLUMNS, NodeRecord, RoundRecord, write_history
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.observability import RunMetrics, serve
from astroscale_fl.federation.protocol import FLOOR_REFUSED_CODE
from astroscale_fl.federation.records import arrays_to_numpy, load_arrays, model_to_arrays, numpy_to_arrays
from astroscale_fl.federation.rounds import (
    FederationError,
    RoundOutcome,
    RoundPolicy,
    federated_statistics,
    run_rounds,
    wait_for_nodes,
)
from astroscale_fl.federation.secagg.scheme import secagg_params
from astroscale_fl.federation.selection import ModelSelector, SelectionSettings, selection_metrics
from astroscale_fl.learning.group_metrics import test_by_groups
from astroscale_fl.learning.models import build_model
from astroscale_fl.learning.training import EvalReport, encode_rows, evaluate, predict
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.preprocessing.reference import NODE_STATISTICS, fit_reference
from astroscale_fl.privacy import dp_statistics
from astroscale_fl.privacy.card import privacy_section


@dataclass
class PreprocessingSource:
    """Where the run's preprocessing came from: the fitted pipeline, the training rows the
    statistics counted (None when unknown) and the model card's ``preprocessing_statistics``."""

    pipeline: Pipeline
    train_rows: int | None
    statistics: dict[str, Any]
    privacy_entries: list[dict] = field(default_factory=list)  # DP statistics: the nodes' ledger records


@dataclass
class RunRecord:
    """What a run accumulates round by round; checkpointed as the checkpoint's ``extra``."""

    train_rows: int | None
    statistics: dict[str, Any]
    initial_test_r2: float
    initial_test_rmse: float
    rows: list[RoundRecord] = field(default_factory=list)
    declined: dict[str, int] = field(default_factory=dict)  # round -> nodes declined
    rejected: dict[str, int] = field(default_factory=dict)  # round -> replies rejected
    privacy_entries: list[dict] = field(default_factory=list)
    privacy_declines: list[dict] = field(default_factory=list)  # {round, node, reason, epsilon, code}
    selection: dict[str, Any] = field(default_factory=dict)  # ModelSelector.state_dict()
    node_rows: list[dict] = field(default_factory=list)  # history_nodes.csv (NodeRecord as dicts)

    def add(self, outcome: RoundOutcome) -> None:
        """Record a finished round."""
        row = outcome.record
        self.rows.append(row)
        self.declined[str(row.round)] = len(outcome.declines)
        self.rejected[str(row.round)] = len(outcome.rejections)
        self.privacy_entries.extend(outcome.privacy_entries)
        self.privacy_declines.extend({"round": row.round, **dataclasses.asdict(d)} for d in outcome.declines)
        self.node_rows.extend(dataclasses.asdict(n) for n in outcome.node_evaluations)

    def extra(self) -> dict[str, Any]:
        """The checkpoint's ``extra`` (everything but the rows, which it keeps as history)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "rows"}

    def restore(self, resumed: ckpt_mod.Checkpoint) -> None:
        """Continue from a checkpoint: its rows and its per-round counts."""
        self.rows = list(resumed.history)
        for key in ("declined", "rejected", "privacy_entries", "privacy_declines", "train_rows", "statistics",
                    "initial_test_r2", "initial_test_rmse", "selection", "node_rows"):
            if key in resumed.extra:
                setattr(self, key, resumed.extra[key])
        for row in self.rows:  # history.csv holds declines; the checkpoint's extra is the authority
            row.nodes_declined = int(self.declined.get(str(row.round), row.nodes_declined))


def run_federation(grid: Grid, cfg: DictConfig, strategy: Strategy, out_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Run a whole federated training and write history.csv, metrics.json and model/ to ``out_dir``:
    preprocessing source -> rounds -> finish."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fed = cfg.federation
    resumed = _load_resume(cfg)
    _check_round_settings(fed)
    run_metrics = RunMetrics()
    run_metrics.describe(cfg.strategy.name, cfg.task.name, cfg.model.name)
    if serve(run_metrics, int(fed.metrics_port), str(fed.metrics_host)):
        log(INFO, "Prometheus metrics on http://%s:%d/metrics", fed.metrics_host, fed.metrics_port)

    node_ids = wait_for_nodes(grid, int(fed.num_nodes), timeout=float(fed.round_timeout))
    source = preprocessing_source(grid, cfg, node_ids, resumed)
    evaluator = CentralEvaluator(cfg, source.pipeline)
    selector = ModelSelector(SelectionSettings.from_config(fed))
    arrays, record = federated_rounds(grid, cfg, strategy, source, evaluator, out_dir, resumed, run_metrics, show_progress, selector)
    return finish(cfg, strategy, source, evaluator, arrays, record, out_dir, resumed, started, selector)


def _load_resume(cfg: DictConfig) -> ckpt_mod.Checkpoint | None:
    """The checkpoint ``federation.resume_from`` names (checked against this config), or None."""
    fed = cfg.federation
    if not fed.resume_from:
        return None
    resumed = ckpt_mod.load(fed.resume_from)
    ckpt_mod.check_compatible(resumed, OmegaConf.to_container(cfg, resolve=True), fed.resume_from)
    log(INFO, "resuming from %s after round %d", ckpt_mod.checkpoint_path(fed.resume_from), resumed.round)
    return resumed


def _check_round_settings(fed: DictConfig) -> None:
    if fed.min_replies < 1:
        raise ConfigError(f"federation.min_replies: expected an integer >= 1, got {fed.min_replies}")
    if fed.max_update_norm is not None and not fed.max_update_norm > 0:
        raise ConfigError(f"federation.max_update_norm: expected a positive number or null, got {fed.max_update_norm}")


def preprocessing_source(grid: Grid, cfg: DictConfig, node_ids: list[int], resumed: ckpt_mod.Checkpoint | None) -> PreprocessingSource:
    """The run's pipeline: from the checkpoint (resume), a public reference table, or a
    federated statistics round over ``node_ids``."""
    task = get_task(cfg.task)
    if resumed is not None:
        return PreprocessingSource(Pipeline.from_state(resumed.pipeline), resumed.extra.get("train_rows"),
                                   resumed.extra.get("statistics", NODE_STATISTICS))
    if cfg.preprocess.reference:
        pipeline, statistics = fit_reference(task, cfg, cfg.preprocess.reference)
        log(INFO, "preprocessing fitted on the public reference %s; no statistics round", statistics["path"])
        return PreprocessingSource(pipeline, None, statistics)  # no statistics round: row counts not asked for
    stats_epsilon = dp_statistics.check_statistics_round(cfg, task, Pipeline.from_config(task, cfg))
    if stats_epsilon is None and cfg.privacy.name != "none":
        log(WARNING, "the statistics round releases exact per-node aggregates that %s does not cover; set "
            "privacy.statistics_epsilon, or preprocess.reference to a public table", cfg.privacy.name)
    entries: list[dict] = []
    stats = federated_statistics(grid, node_ids, round_config(cfg), timeout=float(cfg.federation.round_timeout),
                                 privacy_entries=entries)
    pipeline = Pipeline.from_config(task, cfg).fit_statistics(stats)
    train_rows = max(0, int(round(float(stats.count[-1]))))  # noisy under DP statistics
    log(INFO, "preprocessing fitted from %d nodes' statistics (%d rows)", len(node_ids), train_rows)
    if stats_epsilon is None:
        return PreprocessingSource(pipeline, train_rows, NODE_STATISTICS)
    return PreprocessingSource(pipeline, train_rows, dp_statistics.card_section(entries, stats_epsilon), entries)


class CentralEvaluator:
    """The server's model on the held-out test split (the server only aggregates and evaluates,
    on the CPU; nodes train on ``cfg.device``)."""

    def __init__(self, cfg: DictConfig, pipeline: Pipeline):
        self.pipeline = pipeline
        self.model = build_model(cfg.model, len(pipeline.features), int(cfg.seed)).to(torch.device("cpu"))
        _, self.test = task_split(cfg)
        self.test_x, self.test_y = encode_rows(pipeline, self.test, torch.device("cpu"))

    def evaluate(self, arrays: ArrayRecord | None = None) -> EvalReport:
        """Test metrics of ``arrays`` loaded into the model (of the model as it is when None)."""
        if arrays is not None:
            load_arrays(self.model, arrays)
        return evaluate(self.model, self.test_x, self.test_y, self.pipeline.target.inverse)

    def by_groups(self, cfg: DictConfig) -> dict[str, Any]:
        """``test_by_node`` / ``test_by_<column>`` of the model as it is (:mod:`~astroscale_fl.learning.group_metrics`)."""
        inverse = self.pipeline.target.inverse
        y_true, y_pred = inverse(self.test_y.double().numpy()), inverse(predict(self.model, self.test_x))
        return test_by_groups(cfg, self.test, y_true, y_pred, get_task(cfg.task).partition_columns)

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        report = self.evaluate(arrays)
        return report.rmse, report.r2


def federated_rounds(grid: Grid, cfg: DictConfig, strategy: Strategy, source: PreprocessingSource, evaluator: CentralEvaluator,
                     out_dir: Path, resumed: ckpt_mod.Checkpoint | None, run_metrics: RunMetrics,
                     show_progress: bool, selector: ModelSelector) -> tuple[ArrayRecord, RunRecord]:
    """The train / evaluate rounds (continuing a checkpoint), writing history.csv and the
    checkpoint after every round; the final arrays and what the rounds recorded. ``selector``
    follows the validation score (the model to export; early stopping)."""
    fed = cfg.federation
    initial = model_to_arrays(evaluator.model)
    initial_rmse, initial_r2 = evaluator(initial)
    record = RunRecord(source.train_rows, source.statistics, initial_r2, initial_rmse)
    record.privacy_entries.extend(source.privacy_entries)  # the DP statistics release, in the nodes' ledgers
    start_round = 1
    if resumed is not None:
        initial = numpy_to_arrays(resumed.model)
        if hasattr(strategy, "load_state_dict"):
            strategy.load_state_dict(resumed.strategy)
        record.restore(resumed)
        best_is_last = record.selection.get("best_round") == resumed.round  # saved as the model itself
        selector.load_state_dict(record.selection, resumed.model if best_is_last else resumed.best_model)
        start_round = resumed.round + 1
        run_metrics.restore(record.rows, {int(k): int(v) for k, v in record.rejected.items()})
        write_history(out_dir / "history.csv", record.rows)
        write_history(out_dir / "history_nodes.csv", [NodeRecord(**n) for n in record.node_rows], NODE_COLUMNS)
    config_dict = OmegaConf.to_container(cfg, resolve=True)

    def on_round(outcome: RoundOutcome, arrays: ArrayRecord) -> None:
        record.add(outcome)
        row = outcome.record
        model = arrays_to_numpy(arrays)
        selector.observe(row.round, getattr(row, selector.settings.metric), model)
        record.selection = selector.state_dict()
        write_history(out_dir / "history.csv", record.rows)
        write_history(out_dir / "history_nodes.csv", [NodeRecord(**n) for n in record.node_rows], NODE_COLUMNS)
        if fed.checkpoint:
            state = strategy.state_dict() if hasattr(strategy, "state_dict") else {}
            best = selector.best_model if selector.best_round != row.round else OrderedDict()
            ckpt_mod.save(out_dir, ckpt_mod.Checkpoint(row.round, model, state, record.rows, source.pipeline.state_dict(),
                                                       config_dict, record.extra(), best))

    strategy.summary()
    policy = RoundPolicy(timeout=float(fed.round_timeout), min_replies=int(fed.min_replies),
                         max_update_norm=None if fed.max_update_norm is None else float(fed.max_update_norm),
                         evaluate_in_train=bool(fed.evaluate_in_train))
    arrays, _ = run_rounds(
        strategy, grid, initial, _rounds_within_budget(strategy, int(fed.num_rounds), start_round), round_config(cfg, source.pipeline),
        evaluator, on_round=on_round, show_progress=show_progress, policy=policy, start_round=start_round, metrics=run_metrics,
        stop=lambda: selector.stop_reason() if selector.should_stop() else None,
    )
    return arrays, record


def finish(cfg: DictConfig, strategy: Strategy, source: PreprocessingSource, evaluator: CentralEvaluator, arrays: ArrayRecord,
           record: RunRecord, out_dir: Path, resumed: ckpt_mod.Checkpoint | None, started: float,
           selector: ModelSelector) -> dict[str, Any]:
    """Test metrics of the selected round's model, metrics.json, the model card and model/
    (:func:`export.finish_run`)."""
    final = evaluator.evaluate(numpy_to_arrays(selector.chosen_model(arrays_to_numpy(arrays))))
    wall = time.perf_counter() - started
    history = record.rows
    metrics = {
        "test_rmse": final.rmse,
        "test_r2": final.r2,
        "test_rows": final.examples,
        **selection_metrics(selector, history, int(cfg.federation.num_rounds)),
        **evaluator.by_groups(cfg),
        "initial_test_r2": record.initial_test_r2,
        "initial_test_rmse": record.initial_test_rmse,
        "wall_seconds": wall,
        "rounds": len(history),
        "bytes_down": sum(r.bytes_down for r in history),
        "bytes_up": sum(r.bytes_up for r in history),
        "nodes_failed": sum(r.nodes_failed for r in history),
        "nodes_declined": sum(int(v) for v in record.declined.values()),
        "replies_rejected": sum(int(v) for v in record.rejected.values()),
        "resumed_from_round": None if resumed is None else resumed.round,
        "train_rows": record.train_rows,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    privacy = privacy_summary(cfg, record.privacy_entries, record.privacy_declines, record.statistics)
    if hasattr(strategy, "node_level_section"):  # privacy=dp_fedavg: the server's node-level ledger
        privacy["card"]["node_level"] = strategy.node_level_section()
        privacy["node_level_epsilon"] = privacy["card"]["node_level"]["epsilon"]
    metrics["privacy"] = privacy
    params = strategy.params() if hasattr(strategy, "params") else {}
    finish_run(out_dir, get_task(cfg.task), cfg, source.pipeline, evaluator.model, metrics, evaluator.test, params,
               card_extra={"privacy": privacy["card"], **_secure_aggregation_card(cfg)})
    unit, factor = display_unit(cfg.task.name)
    log(INFO, "done: test R²=%.4f RMSE=%.4g%s in %.1f s -> %s", final.r2, final.rmse * factor, f" {unit}" if unit else "",
        wall, out_dir)
    return metrics


def _secure_aggregation_card(cfg: DictConfig) -> dict[str, Any]:
    """The card's ``secure_aggregation`` entry (and SecAgg+'s parameters)."""
    if cfg.federation.secure_aggregation == "none":
        return {"secure_aggregation": "none"}
    return {"secure_aggregation": "secaggplus", "secaggplus": secagg_params(cfg).as_dict()}


def _rounds_within_budget(strategy: Strategy, num_rounds: int, start_round: int) -> int:
    """The last round to run: ``num_rounds``, or earlier where the node-level ε budget ends."""
    if not hasattr(strategy, "affordable_rounds"):
        return num_rounds
    allowed = strategy.affordable_rounds(num_rounds - start_round + 1)
    if allowed == 0 and num_rounds >= start_round:
        raise FederationError(f"privacy.node_epsilon_budget: not even one more round fits (node-level epsilon so far "
                              f"{strategy.ledger.epsilon():.4g})")
    if start_round - 1 + allowed < num_rounds:
        log(WARNING, "privacy.node_epsilon_budget: the run stops after round %d of %d (node-level budget)",
            start_round - 1 + allowed, num_rounds)
    return start_round - 1 + allowed


def privacy_summary(cfg: DictConfig, entries: list[dict], declines: list[dict],
                    statistics: dict[str, Any]) -> dict[str, Any]:
    """The run's privacy outcome: the model card section (recomputable ε per node, and where the
    preprocessing statistics came from), the largest ε, which nodes stopped (declined for budget)
    at what ε, and which refused rounds weaker than their own privacy floor (``FLOOR_REFUSED_CODE``:
    ``floor_refused_nodes``, listed apart, since such a node has spent nothing and is not "stopped")."""
    refusals = [d for d in declines if d.get("code") == FLOOR_REFUSED_CODE]  # {round, node, reason, epsilon, code}
    floor_refused: dict[str, dict] = {}
    for refusal in refusals:
        node = str(refusal.get("node", "?"))
        floor_refused.setdefault(node, {"node": node, "first_refused_round": refusal["round"], "rounds_refused": 0,
                                        "reason": refusal["reason"]})["rounds_refused"] += 1
    if floor_refused:
        log(INFO, "privacy: node(s) %s refused rounds below their privacy floor", ", ".join(sorted(floor_refused)))
    if cfg.privacy.name == "none" and not statistics.get("covered_by_dp"):
        return {"card": {"name": "none"}, "max_epsilon": None, "stopped_nodes": [],
                "floor_refused_nodes": list(floor_refused.values())}
    section = {"name": cfg.privacy.name, **privacy_section(entries, mechanism=cfg.privacy.name if cfg.privacy.name != "none" else "dp_statistics"),
               "preprocessing_statistics": statistics}
    spent = {n["node"]: n["epsilon"] for n in section["nodes"]}
    stopped: dict[str, dict] = {}
    for decline in declines:  # protocol.Decline as the node sent it, with the round and the reply's code
        if decline.get("code") == FLOOR_REFUSED_CODE:
            continue
        node = str(decline.get("node", "?"))
        stopped.setdefault(node, {"node": node, "first_declined_round": decline["round"],
                                  "epsilon": spent.get(node, decline.get("epsilon")), "reason": decline["reason"]})
    if stopped:
        log(INFO, "privacy: node(s) %s stopped at their ε budget", ", ".join(sorted(stopped)))
    return {"card": section, "max_epsilon": section["max_epsilon"], "stopped_nodes": list(stopped.values()),
            "floor_refused_nodes": list(floor_refused.values())}

