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

from astroscale_fl import data
from astroscale_fl.device import resolve_device
from astroscale_fl.federation import local_objectives as objectives
from astroscale_fl.federation import protocol
from astroscale_fl.federation.messages import read_pipeline, read_run_config
from astroscale_fl.federation.records import load_arrays, model_to_arrays, numpy_to_arrays
from astroscale_fl.models import build_model
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.privacy.node import LocalJob, node_privacy
from astroscale_fl.tasks import get_task
from astroscale_fl.training import GradHook, evaluate, make_optimizer

LOCAL_VAL_FRACTION = 0.1


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
        rng = np.random.default_rng([int(cfg.seed), 0x5A1])
        is_val = rng.random(len(frame)) < LOCAL_VAL_FRACTION
        if is_val.all() or len(frame) < 2:
            is_val[:] = False
        _FRAMES[key] = (frame.loc[~is_val].reset_index(drop=True), frame.loc[is_val].reset_index(drop=True))
    return _FRAMES[key]


def node_tensors(cfg: DictConfig, node_config: dict, pipeline: Pipeline, pipeline_key: str, device: torch.device) -> NodeTensors:
    """Encode the node's rows with the global pipeline, once per (node, pipeline, device)."""
    key = _key(repr(sorted(node_config.items())), str(cfg.task), str(cfg.partition), str(cfg.seed), pipeline_key, str(device))
    if key not in _TENSORS:
        from astroscale_fl.deploy.cache import cached_arrays

        def compute() -> dict[str, np.ndarray]:
            train, val = node_split(cfg, node_config)
            return {"train_x": pipeline.transform_features(train), "train_y": pipeline.transform_target(train),
                    "val_x": pipeline.transform_features(val), "val_y": pipeline.transform_target(val)}

        # deployment: Flower starts a fresh process per message; keep encoded rows in <data-dir>/.astroscale-cache
        cache_key = _key(str(cfg.task), str(cfg.partition), str(cfg.seed), str(LOCAL_VAL_FRACTION), pipeline_key)
        arrays = cached_arrays(node_config.get("data-dir"), cache_key, compute)
        _TENSORS.clear()  # one node's tensors at a time per process keeps memory flat
        _TENSORS[key] = NodeTensors(*(torch.from_numpy(arrays[k]).to(device) for k in ("train_x", "train_y", "val_x", "val_y")))
    return _TENSORS[key]


def handle_query(msg: Message, node_config: dict, state: RecordDict | None = None) -> RecordDict:
    """Statistics round: this node's column statistics (no rows leave the node); under
    ``privacy.statistics_epsilon`` through the Gaussian mechanism (``state``: the node's ledger)."""
    cfg = read_run_config(msg.content[protocol.CONFIG_KEY])
    task = get_task(cfg.task)
    train, _ = node_split(cfg, node_config)
    if cfg.privacy.get("statistics_epsilon") is not None:
        from astroscale_fl.privacy.dp_statistics import private_statistics_reply

        pipeline = Pipeline.from_config(task, cfg)
        return private_statistics_reply(cfg, task, pipeline, train, RecordDict() if state is None else state, node_config)
    stats = Pipeline.from_config(task, cfg).compute_statistics(train)
    return RecordDict({
        protocol.STATS_KEY: numpy_to_arrays(stats.to_arrays()),
        protocol.COLUMNS_KEY: ConfigRecord({protocol.COLUMN_NAMES_KEY: list(stats.columns)}),
        protocol.METRICS_KEY: MetricRecord({protocol.WEIGHT_KEY: len(train)}),
    })


def _prepare(msg: Message, node_config: dict) -> tuple[DictConfig, torch.nn.Module, NodeTensors, Pipeline]:
    config = msg.content[protocol.CONFIG_KEY]
    cfg = read_run_config(config)
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
    cfg, model, tensors, _ = _prepare(msg, node_config)
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
    if scaffold is not None:
        reply[protocol.CONTROL_DELTA_KEY] = scaffold.finish(reply[protocol.ARRAYS_KEY], trained.report.steps)
    return reply


def handle_evaluate(msg: Message, node_config: dict) -> RecordDict:
    """Evaluate the global model on the node's local validation rows, as poolable sums."""
    _, model, tensors, pipeline = _prepare(msg, node_config)
    x, y = (tensors.val_x, tensors.val_y) if len(tensors.val_y) else (tensors.train_x, tensors.train_y)
    report = evaluate(model, x, y, pipeline.target.inverse)
    y_true = pipeline.target.inverse(y.double().cpu().numpy())
    return RecordDict({protocol.METRICS_KEY: MetricRecord({
        protocol.WEIGHT_KEY: report.examples,
        protocol.LOSS_KEY: report.loss,
        protocol.SSE_KEY: report.rmse**2 * report.examples,
        protocol.SUM_Y_KEY: float(y_true.sum()),
        protocol.SUM_Y2_KEY: float((y_true**2).sum()),
    })})


def _node_salt(node_config: dict) -> int:
    """A stable per-node integer, so nodes shuffle differently under one seed."""
    ident = str(node_config.get("partition-id", node_config.get("data-dir", "")))
    return int(hashlib.sha256(ident.encode()).hexdigest()[:8], 16)
