"""The ServerApp's work: fit preprocessing federatedly, run the rounds, export the result.

``run_federation`` is what ``server/app.py`` calls with Flower's Grid, both in simulation
(``astroscale-fl train``) and in deployment (``flwr run .``). It serves Prometheus metrics
(``federation.metrics_port``), writes ``checkpoint.npz`` after every round
(``federation.checkpoint``) and continues a run from one (``federation.resume_from``): the
statistics round is skipped and the checkpoint's preprocessing, model, strategy state and
history are restored.
"""

from __future__ import annotations

import re
import time
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from astroscale_fl import checkpoint as ckpt_mod
from astroscale_fl.errors import ConfigError
from astroscale_fl.data import task_split
from astroscale_fl.export import finish_run
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import arrays_to_numpy, load_arrays, model_to_arrays, numpy_to_arrays
from astroscale_fl.federation.rounds import FederationError, RoundPolicy, federated_statistics, run_rounds, wait_for_nodes
from astroscale_fl.history import RoundRecord, write_history
from astroscale_fl.models import build_model
from astroscale_fl.observability import RunMetrics, serve
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.privacy import dp_statistics
from astroscale_fl.privacy.card import privacy_section
from astroscale_fl.reference import NODE_STATISTICS, fit_reference
from astroscale_fl.tasks import get_task
from astroscale_fl.training import encode_rows, evaluate


def run_federation(grid: Grid, cfg: DictConfig, strategy: Strategy, out_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Run a whole federated training and write history.csv, metrics.json and model/ to ``out_dir``."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fed = cfg.federation
    task = get_task(cfg.task)
    device = torch.device("cpu")  # the server only aggregates and evaluates; nodes train on cfg.device

    config_dict = OmegaConf.to_container(cfg, resolve=True)
    resumed = None
    if fed.resume_from:
        resumed = ckpt_mod.load(fed.resume_from)
        ckpt_mod.check_compatible(resumed, config_dict, fed.resume_from)
        log(INFO, "resuming from %s after round %d", ckpt_mod.checkpoint_path(fed.resume_from), resumed.round)
    if fed.min_replies < 1:
        raise ConfigError(f"federation.min_replies: expected an integer >= 1, got {fed.min_replies}")
    if fed.max_update_norm is not None and not fed.max_update_norm > 0:
        raise ConfigError(f"federation.max_update_norm: expected a positive number or null, got {fed.max_update_norm}")

    metrics_obj = RunMetrics()
    metrics_obj.describe(cfg.strategy.name, cfg.task.name, cfg.model.name)
    if serve(metrics_obj, int(fed.metrics_port), str(fed.metrics_host)):
        log(INFO, "Prometheus metrics on http://%s:%d/metrics", fed.metrics_host, fed.metrics_port)

    stats_entries: list[dict] = []
    node_ids = wait_for_nodes(grid, int(fed.num_nodes), timeout=float(fed.round_timeout))
    if resumed is not None:
        pipeline = Pipeline.from_state(resumed.pipeline)
        train_rows = resumed.extra.get("train_rows")
        statistics = resumed.extra.get("statistics", NODE_STATISTICS)
    elif cfg.preprocess.reference:
        pipeline, statistics = fit_reference(task, cfg, cfg.preprocess.reference)
        train_rows = None  # no statistics round: the nodes' row counts are not asked for
        log(INFO, "preprocessing fitted on the public reference %s; no statistics round", statistics["path"])
    else:
        stats_epsilon = dp_statistics.statistics_epsilon(cfg.privacy)
        if stats_epsilon is not None:
            dp_statistics.StatisticsRelease.for_pipeline(task, Pipeline.from_config(task, cfg))  # ranges exist, or a one-line error
        elif cfg.privacy.name != "none":
            log(WARNING, "the statistics round releases exact per-node aggregates that %s does not cover; set "
                "privacy.statistics_epsilon, or preprocess.reference to a public table", cfg.privacy.name)
        stats = federated_statistics(grid, node_ids, round_config(cfg), timeout=float(fed.round_timeout),
                                     privacy_entries=stats_entries)
        pipeline = Pipeline.from_config(task, cfg).fit_statistics(stats)
        train_rows = max(0, int(round(float(stats.count[-1]))))
        statistics = NODE_STATISTICS if stats_epsilon is None else dp_statistics.card_section(stats_entries, stats_epsilon)
        log(INFO, "preprocessing fitted from %d nodes' statistics (%d rows)", len(node_ids), train_rows)

    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed)).to(device)
    _, test = task_split(cfg)
    test_x, test_y = encode_rows(pipeline, test, device)

    def central_eval(arrays: ArrayRecord) -> tuple[float, float]:
        load_arrays(model, arrays)
        report = evaluate(model, test_x, test_y, pipeline.target.inverse)
        return report.rmse, report.r2

    initial = model_to_arrays(model)
    initial_rmse, initial_r2 = central_eval(initial)
    rows: list[RoundRecord] = []
    extra = {"train_rows": train_rows, "statistics": statistics, "initial_test_r2": initial_r2, "initial_test_rmse": initial_rmse, "declined": {}, "rejected": {},
             "privacy_entries": list(stats_entries), "privacy_declines": []}
    start_round = 1
    if resumed is not None:
        initial = numpy_to_arrays(resumed.model)
        if hasattr(strategy, "load_state_dict"):
            strategy.load_state_dict(resumed.strategy)
        rows = list(resumed.history)
        for row in rows:  # per-round counts that history.csv does not hold
            row.nodes_declined = int(resumed.extra.get("declined", {}).get(str(row.round), 0))
            row.nodes_rejected = int(resumed.extra.get("rejected", {}).get(str(row.round), 0))
        extra.update({k: v for k, v in resumed.extra.items() if k in extra})
        start_round = resumed.round + 1
        metrics_obj.restore(rows)
        write_history(out_dir / "history.csv", rows)

    def on_round(row: RoundRecord, arrays: ArrayRecord) -> None:
        rows.append(row)
        extra["declined"][str(row.round)] = int(getattr(row, "nodes_declined", 0))
        extra["rejected"][str(row.round)] = int(getattr(row, "nodes_rejected", 0))
        extra["privacy_entries"].extend(getattr(row, "privacy_entries", []))
        extra["privacy_declines"].extend({"round": row.round, "reason": r} for r in getattr(row, "declines", []))
        write_history(out_dir / "history.csv", rows)
        if fed.checkpoint:
            state = strategy.state_dict() if hasattr(strategy, "state_dict") else {}
            ckpt_mod.save(out_dir, ckpt_mod.Checkpoint(row.round, arrays_to_numpy(arrays), state, rows, pipeline.state_dict(),
                                                       config_dict, extra))

    strategy.summary()
    policy = RoundPolicy(timeout=float(fed.round_timeout), min_replies=int(fed.min_replies),
                         max_update_norm=None if fed.max_update_norm is None else float(fed.max_update_norm))
    arrays, _ = run_rounds(
        strategy, grid, initial, _rounds_within_budget(strategy, int(fed.num_rounds), start_round), round_config(cfg, pipeline), central_eval,
        on_round=on_round, show_progress=show_progress, policy=policy, start_round=start_round, metrics=metrics_obj,
    )
    history = rows
    load_arrays(model, arrays)
    final = evaluate(model, test_x, test_y, pipeline.target.inverse)
    wall = time.perf_counter() - started
    metrics = {
        "test_rmse": final.rmse,
        "test_r2": final.r2,
        "test_rows": final.examples,
        "initial_test_r2": extra["initial_test_r2"],
        "initial_test_rmse": extra["initial_test_rmse"],
        "wall_seconds": wall,
        "rounds": len(history),
        "bytes_down": sum(r.bytes_down for r in history),
        "bytes_up": sum(r.bytes_up for r in history),
        "nodes_failed": sum(r.nodes_failed for r in history),
        "nodes_declined": sum(int(v) for v in extra["declined"].values()),
        "replies_rejected": sum(int(v) for v in extra["rejected"].values()),
        "resumed_from_round": None if resumed is None else resumed.round,
        "train_rows": train_rows,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    privacy = privacy_summary(cfg, extra["privacy_entries"], extra["privacy_declines"], statistics)
    if hasattr(strategy, "node_level_section"):  # privacy=dp_fedavg: the server's node-level ledger
        privacy["card"]["node_level"] = strategy.node_level_section()
        privacy["node_level_epsilon"] = privacy["card"]["node_level"]["epsilon"]
    metrics["privacy"] = privacy
    params = strategy.params() if hasattr(strategy, "params") else {}
    finish_run(out_dir, task, cfg, pipeline, model, metrics, test, params, card_extra={"privacy": privacy["card"], **_secure_aggregation_card(cfg)})
    log(INFO, "done: test R²=%.4f RMSE=%.4f in %.1f s -> %s", final.r2, final.rmse, wall, out_dir)
    return metrics


def _secure_aggregation_card(cfg: DictConfig) -> dict[str, Any]:
    """The card's ``secure_aggregation`` entry (and SecAgg+'s parameters)."""
    if cfg.federation.secure_aggregation == "none":
        return {"secure_aggregation": "none"}
    from astroscale_fl.federation.secagg.protocol import SecAggPlusParams

    return {"secure_aggregation": "secaggplus", "secaggplus": SecAggPlusParams.from_config(cfg.federation.secaggplus).as_dict()}


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
    preprocessing statistics came from), the largest ε, and which nodes stopped (declined for
    budget) at what ε."""
    if cfg.privacy.name == "none" and not statistics.get("covered_by_dp"):
        return {"card": {"name": "none"}, "max_epsilon": None, "stopped_nodes": []}
    section = {"name": cfg.privacy.name, **privacy_section(entries, mechanism=cfg.privacy.name if cfg.privacy.name != "none" else "dp_statistics"),
               "preprocessing_statistics": statistics}
    spent = {n["node"]: n["epsilon"] for n in section["nodes"]}
    stopped: dict[str, dict] = {}
    for decline in declines:
        match = re.match(r"node (\S+) declines", decline["reason"])
        node = match.group(1) if match else "?"
        stopped.setdefault(node, {"node": node, "first_declined_round": decline["round"],
                                  "epsilon": spent.get(node), "reason": decline["reason"]})
    if stopped:
        log(INFO, "privacy: node(s) %s stopped at their ε budget", ", ".join(sorted(stopped)))
    return {"card": section, "max_epsilon": section["max_epsilon"], "stopped_nodes": list(stopped.values())}

