"""The ClientApp's work for each message type, independent of Flower's app object.

- ``query`` (statistics round): column statistics of the node's rows, for a federated fit
  of the preprocessing pipeline;
- ``train``: local training of the received global model on the node's rows;
- ``evaluate``: the global model on the node's local validation rows, returned as sums so
  the server can pool RMSE and R² exactly.

Each node keeps a local validation share out of training: the rows whose id hashes below
:data:`~astroscale_fl.data.holdout.LOCAL_VAL_FRACTION` (:func:`~astroscale_fl.data.holdout.is_local_val`).
A simulated node's data is a row selection of the task table (:mod:`astroscale_fl.data.task_table`):
the table is encoded once per pipeline and each message gathers the node's rows from it, so a
thousand-node simulation holds the table once plus one index per node. A deployed node reads its
memory-mapped tensor files.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from omegaconf import DictConfig, OmegaConf

from astroscale_fl.config import to_json
from astroscale_fl.data import holdout, node_arrays, nodes, task_table
from astroscale_fl.data.tasks import get_task
from astroscale_fl.federation import local_objectives as objectives
from astroscale_fl.federation import protocol
from astroscale_fl.federation.messages import config_digest, read_pipeline, read_run_config
from astroscale_fl.federation.node_cache import NodeCache
from astroscale_fl.federation.records import load_arrays, model_to_arrays, numpy_to_arrays
from astroscale_fl.learning.device import resolve_device
from astroscale_fl.learning.models import build_model
from astroscale_fl.learning.steps import GradHook
from astroscale_fl.learning.training import eval_report, make_optimizer, predict
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.privacy.dp_statistics import private_statistics_reply
from astroscale_fl.privacy.floor import PrivacyFloor
from astroscale_fl.privacy.node import LocalJob, node_name, node_privacy
from astroscale_fl.privacy.settings import PrivacySettings, dp_sgd_settings


@dataclass
class NodeTensors:
    """A node's encoded rows on its device: training and local validation shares."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


CACHE_BYTES = 256 * 2**20  # per process: encoded rows of the recently served nodes that cannot share one encoding
_TENSORS: NodeCache[NodeTensors] = NodeCache(
    CACHE_BYTES, lambda t: sum(x.element_size() * x.nelement() for x in (t.train_x, t.train_y, t.val_x, t.val_y)))


def _key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def _split_shares(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    is_val = holdout.validation_share(holdout.is_local_val({"id": frame["id"].to_numpy()}, seed))
    return frame.loc[~is_val].reset_index(drop=True), frame.loc[is_val].reset_index(drop=True)


def node_split(cfg: DictConfig, node_config: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The node's (training, local validation) rows, seeded by row id. A simulated node's are
    gathered from the shared task table by its row selection, on each call (nothing is kept)."""
    if "data-dir" in node_config:
        return _split_shares(nodes.node_frame(cfg, node_config), int(cfg.seed))
    return _split_shares(pd.DataFrame(_node_batch(cfg, node_config)), int(cfg.seed))


def _node_batch(cfg: DictConfig, node_config: dict) -> dict:
    """A simulated node's rows of the columns its pipeline reads: a selection of the task table."""
    columns, time_column = _pipeline_columns(cfg)
    seed = local_settings(cfg).seed
    return task_table.select(task_table.task_columns(cfg, seed, columns, time_column), task_table.node_rows(cfg, node_config, seed))


@functools.lru_cache(maxsize=8)
def _unfitted_pipeline(task_and_preprocess_json: str, seed: int) -> Pipeline:
    cfg = OmegaConf.create({**json.loads(task_and_preprocess_json), "seed": seed})
    return Pipeline.from_config(get_task(cfg.task), cfg)


def unfitted_pipeline(cfg: DictConfig) -> Pipeline:
    """The run's pipeline before fitting (built once per config: a statistics round asks every node
    for it, and building it reads the config through OmegaConf, ~5 ms). Shared: use it read-only."""
    return _unfitted_pipeline(to_json(cfg, ("task", "preprocess")), int(cfg.seed))


def _pipeline_columns(cfg: DictConfig) -> tuple[tuple[str, ...], str | None]:
    """The columns a node's pipeline reads (inputs, target, row id: all a node needs), and its time column."""
    pipeline = unfitted_pipeline(cfg)
    return (*pipeline.inputs, pipeline.target.target, holdout.ID), pipeline.time_column  # the id decides the local validation share


def node_tensors(cfg: DictConfig, node_config: dict, pipeline: Pipeline, pipeline_key: str, device: torch.device) -> NodeTensors:
    """The node's rows encoded with the global pipeline, on ``device``.

    A simulated node's are gathered by its row selection from the task table encoded once
    (:func:`astroscale_fl.data.task_table.encoded_table`); a deployed node's come from its
    memory-mapped tensor files; a pipeline that encodes node by node encodes the node's rows
    once per (node, pipeline, device) and keeps them while the byte budget allows.
    """
    if "data-dir" not in node_config and task_table.row_local(pipeline):
        seed = local_settings(cfg).seed
        table = task_table.encoded_table(cfg, seed, pipeline, pipeline_key)
        train, val = (torch.from_numpy(rows).to(device) for rows in table.selection(task_table.node_rows(cfg, node_config, seed)))
        x, y = table.on(device)
        return NodeTensors(x[train], y[train], x[val], y[val])
    key = _key(repr(sorted(node_config.items())), config_digest(cfg), pipeline_key, str(device))

    def encode() -> NodeTensors:
        # deployment: memory-mapped tensor files in <data-dir>/.astroscale-cache (streamed, reused across messages)
        arrays = node_arrays.node_arrays(cfg, node_config, pipeline, frames=lambda: node_split(cfg, node_config))
        return NodeTensors(*(torch.from_numpy(arrays[k]).to(device) for k in ("train_x", "train_y", "val_x", "val_y")))

    return _TENSORS.get(key, encode)


def handle_query(msg: Message, node_config: dict, state: RecordDict | None = None) -> RecordDict:
    """Statistics round: this node's column statistics (no rows leave the node); under
    ``privacy.statistics_epsilon`` through the Gaussian mechanism (``state``: the node's ledger)."""
    cfg = read_run_config(msg.content[protocol.CONFIG_KEY])
    if cfg.privacy.get("statistics_epsilon") is not None:
        train, _ = node_split(cfg, node_config)
        return private_statistics_reply(cfg, get_task(cfg.task), unfitted_pipeline(cfg), train, RecordDict() if state is None else state, node_config)
    frame_batches = lambda: [_node_batch(cfg, node_config)]  # noqa: E731  (simulation: the node's row selection)
    stats, rows, quarantined = node_arrays.node_statistics(cfg, node_config, unfitted_pipeline(cfg), frame_batches)
    return RecordDict({
        protocol.STATS_KEY: numpy_to_arrays(stats.to_arrays()),
        protocol.COLUMNS_KEY: ConfigRecord({protocol.COLUMN_NAMES_KEY: list(stats.columns)}),
        protocol.METRICS_KEY: MetricRecord({protocol.WEIGHT_KEY: rows, protocol.QUARANTINED_KEY: quarantined}),
    })


@dataclass(frozen=True)
class LocalSettings:
    """The run-config values every message's handling reads, read once per run config (an
    OmegaConf attribute costs ~30 µs, and a message reads a dozen)."""

    seed: int
    batch_size: int
    local_epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    threads: int
    device: torch.device
    privacy: PrivacySettings | None
    cuda_graph: bool  # train.cuda_graph


_SETTINGS: dict[str, LocalSettings] = {}


def local_settings(cfg: DictConfig) -> LocalSettings:
    """:class:`LocalSettings` of a run config (memoised by its digest)."""
    digest = config_digest(cfg)
    if digest not in _SETTINGS:
        train = cfg.train
        _SETTINGS[digest] = LocalSettings(int(cfg.seed), int(train.batch_size), int(train.local_epochs), str(train.optimizer),
                                          float(train.lr), float(train.momentum), float(train.weight_decay),
                                          int(cfg.federation.client_threads), resolve_device(cfg.device),
                                          dp_sgd_settings(cfg.privacy), bool(train.cuda_graph))
    return _SETTINGS[digest]


def _prepare(msg: Message, node_config: dict, cfg: DictConfig | None = None) -> tuple[DictConfig, torch.nn.Module, NodeTensors, Pipeline]:
    config = msg.content[protocol.CONFIG_KEY]
    cfg = cfg if cfg is not None else read_run_config(config)
    settings = local_settings(cfg)
    if torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)
    device = settings.device
    pipeline, pipeline_key = read_pipeline(config)
    tensors = node_tensors(cfg, node_config, pipeline, pipeline_key, device)
    model = fresh_model(cfg, len(pipeline.features), device)
    load_arrays(model, msg.content[protocol.ARRAYS_KEY])
    return cfg, model, tensors, pipeline


_MODELS = threading.local()  # per thread: architecture key -> a model reused for each message


def fresh_model(cfg: DictConfig, in_features: int, device: torch.device) -> torch.nn.Module:
    """A model of the run's architecture whose values the message's arrays then overwrite.

    ``build_model`` seeds torch's global generator (~6 ms, and not for threads to race on), so
    each thread builds one per architecture and reuses it; DP-SGD hooks its model (Opacus), so
    it gets a fresh copy of that one instead.
    """
    key = _key(config_digest(cfg, ("model",)), str(in_features), str(device))
    models = _MODELS.__dict__
    if key not in models:
        models[key] = build_model(cfg.model, in_features, int(cfg.seed)).to(device)
    return copy.deepcopy(models[key]) if local_settings(cfg).privacy is not None else models[key]


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
    local = local_settings(cfg)
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
        optimizer = make_optimizer(model.parameters(), local.optimizer, local.lr, local.momentum, local.weight_decay)
    generator = batch_generator(local.seed, server_round, node_config)
    job = LocalJob(model, optimizer, tensors.train_x, tensors.train_y, local.batch_size, local.local_epochs,
                   generator, after_backward=objectives.combine(hooks), cuda_graph=local.cuda_graph)
    trained = node_privacy(local.privacy, cfg, context.state, node_config).train(job)
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
    return evaluation_metrics(model, [tensors], pipeline)[0]


def evaluation_rows(tensors: NodeTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a node evaluates on: its local validation share (its training rows if it has none)."""
    return (tensors.val_x, tensors.val_y) if len(tensors.val_y) else (tensors.train_x, tensors.train_y)


def evaluation_metrics(model: torch.nn.Module, nodes_tensors: list[NodeTensors], pipeline: Pipeline) -> list[MetricRecord]:
    """:func:`_evaluation_metrics` of several nodes with one forward pass over all their rows
    (the model works row by row); each node's sums are then taken over its own rows."""
    shares = [evaluation_rows(t) for t in nodes_tensors]
    if len(shares) == 1:
        return [_metrics_record(predict(model, shares[0][0]), shares[0][1].double().cpu().numpy(), pipeline)]
    scaled_pred = predict(model, torch.cat([x for x, _ in shares]))
    scaled_true = torch.cat([y for _, y in shares]).double().cpu().numpy()
    sizes = np.array([len(y) for _, y in shares])
    node = np.repeat(np.arange(len(shares)), sizes)
    y_true, y_pred = pipeline.target.inverse(scaled_true), pipeline.target.inverse(scaled_pred)

    def per_node(values: np.ndarray) -> list[float]:
        return np.bincount(node, weights=values, minlength=len(shares)).tolist()

    with np.errstate(invalid="ignore", divide="ignore"):  # a node without rows: NaN, as np.mean gives
        losses = (np.bincount(node, weights=(scaled_pred - scaled_true) ** 2, minlength=len(shares)) / sizes).tolist()
    sse = [v if n else float("nan") for v, n in zip(per_node((y_true - y_pred) ** 2), sizes.tolist(), strict=True)]
    return [MetricRecord({protocol.WEIGHT_KEY: n, protocol.LOSS_KEY: loss, protocol.SSE_KEY: e, protocol.SUM_Y_KEY: s1,
                          protocol.SUM_Y2_KEY: s2})
            for n, loss, e, s1, s2 in zip(sizes.tolist(), losses, sse, per_node(y_true), per_node(y_true**2), strict=True)]


def _metrics_record(scaled_pred: np.ndarray, scaled_true: np.ndarray, pipeline: Pipeline) -> MetricRecord:
    """One node's evaluation sums, from :func:`astroscale_fl.learning.training.eval_report`."""
    report = eval_report(scaled_pred, scaled_true, pipeline.target.inverse)
    y_true = pipeline.target.inverse(scaled_true)
    return MetricRecord({
        protocol.WEIGHT_KEY: report.examples,
        protocol.LOSS_KEY: report.loss,
        protocol.SSE_KEY: report.rmse**2 * report.examples,
        protocol.SUM_Y_KEY: float(y_true.sum()),
        protocol.SUM_Y2_KEY: float((y_true**2).sum()),
    })


def batch_generator(seed: int, server_round: int, node_config: dict) -> torch.Generator:
    """The generator of a node's batch order in a round: seeded by run seed, round and node."""
    return torch.Generator().manual_seed(seed * 1_000_003 + server_round * 7919 + _node_salt(node_config))


def _node_salt(node_config: dict) -> int:
    """A stable per-node integer, so nodes shuffle differently under one seed: the partition in
    simulation; in deployment the content of the node's table (not its path, so the same data
    in another folder shuffles the same)."""
    table = None if "partition-id" in node_config else node_arrays.node_table(node_config)
    if table is not None and table.exists():
        ident = node_arrays.content_digest(table)
    else:
        ident = str(node_config.get("partition-id", node_config.get("data-dir", "")))
    return int(hashlib.sha256(ident.encode()).hexdigest()[:8], 16)


def node_epsilon_budget(msg: Message, context: Context) -> float | None:
    """The lifetime ε budget that applies on this node: the centre's, capped by the node's max-epsilon."""
    centre = read_run_config(msg.content[protocol.CONFIG_KEY]).privacy.get("epsilon_budget")
    return PrivacyFloor.from_node_config(dict(context.node_config)).budget(None if centre is None else float(centre))
