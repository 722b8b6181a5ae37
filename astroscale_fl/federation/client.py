"""The ClientApp's work for each message type, independent of Flower's app object.

- ``query`` (statistics round): column statistics of the node's rows, for a federated fit
  of the preprocessing pipeline;
- ``train``: local training of the received global model on the node's rows;
- ``evaluate``: the global model on the node's local validation rows, returned as sums so
  the server can pool RMSE and R² exactly.

Each node keeps a local validation share (``federation.local_val_fraction``) out of training.
Tensors are cached per process (simulation actors serve many messages) keyed by node and
pipeline, so repeated rounds do not re-read or re-encode data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from omegaconf import DictConfig

from astroscale_fl import data, node_arrays
from astroscale_fl.device import resolve_device
from astroscale_fl.federation import local_objectives as objectives
from astroscale_fl.federation import protocol
from astroscale_fl.federation.messages import read_pipeline, read_run_config
from astroscale_fl.federation.records import load_arrays, model_to_arrays, numpy_to_arrays
from astroscale_fl.models import build_model
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.privacy.floor import PrivacyFloor
from astroscale_fl.privacy.node import LocalJob, node_name, node_privacy
from astroscale_fl.tasks import get_task
from astroscale_fl.training import GradHook, evaluate, make_optimizer

LOCAL_VAL_FRACTION = node_arrays.LOCAL_VAL_FRACTION


@dataclass
class NodeTensors:
    """A node's encoded rows on its device: training and local validation shares."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


_FRAMES: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
_TENSORS: dict[str, NodeTensors] = {}


def _key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def node_split(cfg: DictConfig, node_config: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The node's (training, local validation) rows; seeded and cached per process."""
    key = _key(repr(sorted(node_config.items())), str(cfg.task), str(cfg.partition), str(cfg.seed))
    if key not in _FRAMES:
        frame = data.node_frame(cfg, node_config)
        is_val = node_arrays.is_local_val({"id": frame["id"].to_numpy()}, int(cfg.seed))
        if is_val.all() or len(frame) < 2:
            is_val[:] = False
        _FRAMES[key] = (frame.loc[~is_val].reset_index(drop=True), frame.loc[is_val].reset_index(drop=True))
    return _FRAMES[key]


def node_tensors(cfg: DictConfig, node_config: dict, pipeline: Pipeline, pipeline_key: str, device: torch.device) -> NodeTensors:
    """Encode the node's rows with the global pipeline, once per (node, pipeline, device)."""
    key = _key(repr(sorted(node_config.items())), str(cfg.task), str(cfg.partition), str(cfg.seed), pipeline_key, str(device))
    if key not in _TENSORS:
        # deployment: memory-mapped tensor files in <data-dir>/.astroscale-cache (streamed, reused across messages)
        arrays = node_arrays.node_arrays(cfg, node_config, pipeline, frames=lambda: node_split(cfg, node_config))
        _TENSORS.clear()  # one node's tensors at a time per process keeps memory flat
        _TENSORS[key] = NodeTensors(*(torch.from_numpy(arrays[k]).to(device) for k in ("train_x", "train_y", "val_x", "val_y")))
    return _TENSORS[key]


def handle_query(msg: Message, node_config: dict) -> RecordDict:
    """Statistics round: this node's column statistics (no rows leave the node)."""
    cfg = read_run_config(msg.content[protocol.CONFIG_KEY])
    task = get_task(cfg.task)
    frame_batches = lambda: [{c: v.to_numpy() for c, v in data.node_frame(cfg, node_config).items()}]  # noqa: E731
    stats, rows, quarantined = node_arrays.node_statistics(cfg, node_config, Pipeline.from_config(task, cfg), frame_batches)
    return RecordDict({
        protocol.STATS_KEY: numpy_to_arrays(stats.to_arrays()),
        protocol.COLUMNS_KEY: ConfigRecord({protocol.COLUMN_NAMES_KEY: list(stats.columns)}),
        protocol.METRICS_KEY: MetricRecord({protocol.WEIGHT_KEY: rows, protocol.QUARANTINED_KEY: quarantined}),
    })


def _prepare(msg: Message, node_config: dict, cfg: DictConfig | None = None) -> tuple[DictConfig, torch.nn.Module, NodeTensors, Pipeline]:
    config = msg.content[protocol.CONFIG_KEY]
    cfg = cfg if cfg is not None else read_run_config(config)
    torch.set_num_threads(int(cfg.federation.client_threads))
    device = resolve_device(cfg.device)
    pipeline, pipeline_key = read_pipeline(config)
    tensors = node_tensors(cfg, node_config, pipeline, pipeline_key, device)
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed)).to(device)
    load_arrays(model, msg.content[protocol.ARRAYS_KEY])
    return cfg, model, tensors, pipeline


def handle_train(msg: Message, context: Context) -> RecordDict:
    """Train the received global model on this node's rows; return it and the example count.

    The round config's typed local objectives (:func:`protocol.local_objectives`) say which
    strategy terms apply: FedProx' :class:`~protocol.ProximalTerm` adds the proximal
    gradient; SCAFFOLD's :class:`~protocol.ScaffoldCorrection` switches to corrected plain SGD
    and adds the control-variate delta to the reply. The node's privacy round
    (:func:`astroscale_fl.privacy.node.node_privacy`) trains, with or without DP.
    """
    node_config = dict(context.node_config)
    config = msg.content[protocol.CONFIG_KEY]
    cfg = read_run_config(config)
    PrivacyFloor.from_node_config(node_config).check_run(cfg, node_name(node_config))  # before any data is touched
    cfg, model, tensors, pipeline = _prepare(msg, node_config, cfg)
    # one message per round: evaluate the received global model (the previous round's) before training it
    evaluation = _evaluation_metrics(model, tensors, pipeline) if protocol.EVAL_ROUND_KEY in config else None
    server_round = int(config[protocol.SERVER_ROUND_KEY])
    wanted = protocol.local_objectives(config)
    hooks: list[GradHook] = []
    if wanted.proximal is not None:
        hooks.append(objectives.proximal_gradient(model, wanted.proximal.mu))
    scaffold = None
    if wanted.scaffold is not None:
        store = objectives.ControlVariateStore(context.state, context.run_id, node_config.get("data-dir"))
        scaffold = objectives.ScaffoldRound(model, wanted.scaffold, msg.content, store)
        hooks.append(scaffold.hook)
        optimizer = scaffold.optimizer(model)
    else:
        optimizer = make_optimizer(model.parameters(), cfg.train.optimizer, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay)
    generator = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + server_round * 7919 + _node_salt(node_config))
    job = LocalJob(model, optimizer, tensors.train_x, tensors.train_y, int(cfg.train.batch_size), int(cfg.train.local_epochs),
                   generator, after_backward=objectives.combine(hooks))
    trained = node_privacy(cfg, context.state, node_config).train(job)
    reply = RecordDict({protocol.ARRAYS_KEY: model_to_arrays(model), protocol.METRICS_KEY: MetricRecord(trained.metrics),
                        **trained.records})
    if evaluation is not None:
        reply[protocol.EVAL_METRICS_KEY] = evaluation
    if scaffold is not None:
        reply[protocol.CONTROL_DELTA_KEY] = scaffold.finish(reply[protocol.ARRAYS_KEY], trained.report.steps)
    return reply


def handle_evaluate(msg: Message, node_config: dict) -> RecordDict:
    """Evaluate the global model on the node's local validation rows, as poolable sums."""
    _, model, tensors, pipeline = _prepare(msg, node_config)
    return RecordDict({protocol.METRICS_KEY: _evaluation_metrics(model, tensors, pipeline)})


def _evaluation_metrics(model: torch.nn.Module, tensors: NodeTensors, pipeline: Pipeline) -> MetricRecord:
    """The model on the node's local validation rows, as sums the server pools exactly."""
    x, y = (tensors.val_x, tensors.val_y) if len(tensors.val_y) else (tensors.train_x, tensors.train_y)
    report = evaluate(model, x, y, pipeline.target.inverse)
    y_true = pipeline.target.inverse(y.double().cpu().numpy())
    return MetricRecord({
        protocol.WEIGHT_KEY: report.examples,
        protocol.LOSS_KEY: report.loss,
        protocol.SSE_KEY: report.rmse**2 * report.examples,
        protocol.SUM_Y_KEY: float(y_true.sum()),
        protocol.SUM_Y2_KEY: float((y_true**2).sum()),
    })


def _node_salt(node_config: dict) -> int:
    """A stable per-node integer, so nodes shuffle differently under one seed."""
    ident = str(node_config.get("partition-id", node_config.get("data-dir", "")))
    return int(hashlib.sha256(ident.encode()).hexdigest()[:8], 16)


def node_epsilon_budget(msg: Message, context: Context) -> float | None:
    """The lifetime ε budget that applies on this node: the centre's, capped by the node's max-epsilon."""
    centre = read_run_config(msg.content[protocol.CONFIG_KEY]).privacy.get("epsilon_budget")
    return PrivacyFloor.from_node_config(dict(context.node_config)).budget(None if centre is None else float(centre))
