"""The ServerApp's work: fit preprocessing federatedly, run the rounds, export the result.

``run_federation`` is what ``server/app.py`` calls with Flower's Grid, both in simulation
(``astroscale-fl train``) and in deployment (``flwr run .``).
"""

from __future__ import annotations

import time
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from omegaconf import DictConfig, OmegaConf

from astroscale_fl.atomic import atomic_directory, write_json
from astroscale_fl.data import task_split
from astroscale_fl.export import build_card, export_model
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import load_arrays, model_to_arrays
from astroscale_fl.federation.rounds import federated_statistics, run_rounds, wait_for_nodes
from astroscale_fl.history import RoundRecord, write_history
from astroscale_fl.models import build_model
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.tasks import get_task
from astroscale_fl.training import evaluate


def run_federation(grid: Grid, cfg: DictConfig, strategy: Strategy, out_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Run a whole federated training and write history.csv, metrics.json and model/ to ``out_dir``."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fed = cfg.federation
    task = get_task(cfg.task.name)
    device = torch.device("cpu")  # the server only aggregates and evaluates; nodes train on cfg.device

    node_ids = wait_for_nodes(grid, int(fed.num_nodes), timeout=float(fed.round_timeout))
    stats = federated_statistics(grid, node_ids, round_config(cfg), timeout=float(fed.round_timeout))
    pipeline = Pipeline.build(task, cfg.preprocess.scaling).fit_statistics(stats)
    log(INFO, "preprocessing fitted from %d nodes' statistics (%d rows)", len(node_ids), int(stats.count[-1]))

    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed)).to(device)
    _, test = task_split(cfg)
    test_x = torch.from_numpy(pipeline.transform_features(test)).to(device)
    test_y = torch.from_numpy(pipeline.transform_target(test)).to(device)

    def central_eval(arrays: ArrayRecord) -> tuple[float, float]:
        load_arrays(model, arrays)
        report = evaluate(model, test_x, test_y, pipeline.target.inverse)
        return report.rmse, report.r2

    initial = model_to_arrays(model)
    initial_rmse, initial_r2 = central_eval(initial)
    rows: list[RoundRecord] = []

    def on_round(row: RoundRecord, _: ArrayRecord) -> None:
        rows.append(row)
        write_history(out_dir / "history.csv", rows)

    strategy.summary()
    arrays, history = run_rounds(
        strategy, grid, initial, int(fed.num_rounds), round_config(cfg, pipeline), central_eval,
        timeout=float(fed.round_timeout), on_round=on_round, show_progress=show_progress,
    )
    load_arrays(model, arrays)
    final = evaluate(model, test_x, test_y, pipeline.target.inverse)
    wall = time.perf_counter() - started
    metrics = {
        "test_rmse": final.rmse,
        "test_r2": final.r2,
        "test_rows": final.examples,
        "initial_test_r2": initial_r2,
        "initial_test_rmse": initial_rmse,
        "wall_seconds": wall,
        "rounds": len(history),
        "bytes_down": sum(r.bytes_down for r in history),
        "bytes_up": sum(r.bytes_up for r in history),
        "nodes_failed": sum(r.nodes_failed for r in history),
        "train_rows": int(stats.count[-1]),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    params = strategy.params() if hasattr(strategy, "params") else {}
    example = test.iloc[0]
    card = build_card(task, cfg, pipeline, {k: metrics[k] for k in ("test_rmse", "test_r2", "test_rows", "train_rows")}, params, extra={
        "example": {"inputs": [float(example[n]) for n in task.input_names], "target": float(example[task.target]), "id": str(test["id"].iloc[0])},
    })
    model_dir = export_model(out_dir / "model", model, pipeline, card)
    write_json(out_dir / "metrics.json", metrics)
    if cfg.output.publish:
        publish(model_dir, Path(cfg.output.models_dir) / task.name / "latest")
    log(INFO, "done: test R²=%.4f RMSE=%.4f in %.1f s -> %s", final.r2, final.rmse, wall, out_dir)
    return metrics


def publish(model_dir: Path, target: Path) -> Path:
    """Copy an exported model to ``target`` (e.g. models/<task>/latest), replacing it atomically."""
    import shutil

    with atomic_directory(target) as tmp:
        for item in model_dir.iterdir():
            shutil.copy2(item, tmp / item.name)
    return target

