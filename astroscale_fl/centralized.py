"""``mode=centralized``: the same model trained on the union of the training rows.

The reference for federated runs: same task, split, preprocessing, model, optimiser, batch
size and number of epochs (``federation.num_rounds x train.local_epochs``), but one table.
It writes the same outputs as a federated run (``history.csv`` with one row per epoch,
``metrics.json``, ``model/``).

Model selection and early stopping (``federation.select=best``, ``federation.patience``) work on
epochs as on rounds, scored on a validation share of the training rows: the rows the nodes would
hold out for their own validation (:func:`~astroscale_fl.data.node_arrays.is_local_val`), which
are then not trained on. ``select=last`` without patience trains on every training row, as before.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from astroscale_fl.data.holdout import is_local_val, validation_share
from astroscale_fl.data.nodes import task_split
from astroscale_fl.data.tasks import get_task
from astroscale_fl.export.model_dir import finish_run
from astroscale_fl.federation.history import RoundRecord, write_history
from astroscale_fl.federation.selection import ModelSelector, SelectionSettings, selection_metrics
from astroscale_fl.learning.device import resolve_device
from astroscale_fl.learning.group_metrics import test_by_groups
from astroscale_fl.learning.models import build_model
from astroscale_fl.learning.training import (
    encode_rows,
    evaluate,
    make_optimizer,
    predict,
    shuffled_batches,
    train_local,
)
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.preprocessing.reference import fit_reference


def run_centralized(cfg: DictConfig, out_dir: str | Path, show_progress: bool = True) -> dict[str, Any]:
    """Train on all training rows at once; write history.csv, metrics.json and model/."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(cfg.federation.client_threads))  # small models: more threads only contend
    device = resolve_device(cfg.device)
    task = get_task(cfg.task)
    train, test = task_split(cfg)
    if cfg.preprocess.reference:  # the same preprocessing as a federated run with this reference
        pipeline, _ = fit_reference(task, cfg, cfg.preprocess.reference)
    else:
        pipeline = Pipeline.from_config(task, cfg).fit(train)
    selector = ModelSelector(SelectionSettings.from_config(cfg.federation))
    held_out = _validation_rows(train, int(cfg.seed), selector.settings)
    (train_x, train_y), (test_x, test_y) = encode_rows(pipeline, train[~held_out], device), encode_rows(pipeline, test, device)
    val_x, val_y = encode_rows(pipeline, train[held_out], device)
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed)).to(device)
    optimizer = make_optimizer(model.parameters(), cfg.train.optimizer, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    epochs = int(cfg.federation.num_rounds) * int(cfg.train.local_epochs)
    initial = evaluate(model, test_x, test_y, pipeline.target.inverse)
    rows: list[RoundRecord] = []
    progress = Progress(TextColumn("[bold]centralized epochs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[status]}"), disable=not show_progress)
    with progress:
        bar = progress.add_task("epochs", total=epochs, status="")
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            report = train_local(model, optimizer, train_x, train_y, shuffled_batches(len(train_y), int(cfg.train.batch_size), 1, generator))
            test_report = evaluate(model, test_x, test_y, pipeline.target.inverse)
            row = RoundRecord(round=epoch, train_loss=report.loss, test_rmse=test_report.rmse, test_r2=test_report.r2,
                              wall_seconds=time.perf_counter() - start, nodes_sampled=1, nodes_replied=1)
            if len(val_y):
                val = evaluate(model, val_x, val_y, pipeline.target.inverse)
                row.eval_loss, row.eval_rmse, row.eval_r2 = val.loss, val.rmse, val.r2
            rows.append(row)
            write_history(out_dir / "history.csv", rows)
            selector.observe(epoch, getattr(row, selector.settings.metric), _state(model))
            progress.update(bar, advance=1, status=f"test R²={test_report.r2:.4f}")
            if selector.should_stop():
                progress.update(bar, status=selector.stop_reason())
                break
    model.load_state_dict({k: torch.from_numpy(v) for k, v in selector.chosen_model(_state(model)).items()})
    final = evaluate(model, test_x, test_y, pipeline.target.inverse)
    metrics = {
        "mode": "centralized", "test_rmse": final.rmse, "test_r2": final.r2, "test_rows": final.examples,
        **selection_metrics(selector, rows, epochs),
        **test_by_groups(cfg, test, pipeline.target.inverse(test_y.double().cpu().numpy()),
                         pipeline.target.inverse(predict(model, test_x)), task.partition_columns),
        "initial_test_r2": initial.r2, "initial_test_rmse": initial.rmse, "wall_seconds": time.perf_counter() - started,
        "rounds": len(rows), "bytes_down": 0, "bytes_up": 0, "nodes_failed": 0, "train_rows": len(train),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    finish_run(out_dir, task, cfg, pipeline, model.cpu(), metrics, test, card_extra={"mode": "centralized", "num_nodes": 1})
    return metrics


def _validation_rows(train, seed: int, settings: SelectionSettings) -> np.ndarray:
    """The training rows held out to score epochs (none when nothing is selected or stopped on)."""
    if settings.select == "last" and settings.patience is None:
        return np.zeros(len(train), dtype=bool)
    ids = train["id"].to_numpy() if "id" in train.columns else np.arange(len(train))
    return validation_share(is_local_val({"id": ids}, seed))


def _state(model: torch.nn.Module) -> OrderedDict[str, np.ndarray]:
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in model.state_dict().items())
