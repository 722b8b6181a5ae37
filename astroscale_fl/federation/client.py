"""The ClientApp's work for each message type, independent of Flower's app object.

- ``query`` (statistics round): column statistics of the node's rows, for a federated fit
  of the preprocessing pipeline;
- ``train``: local training of the received global model on the node's rows;
- ``evaluate``: the global model on the node's local validation rows, returned as sums so
  the server can pool RMSE and R² exactly.

Each node keeps a local validation share out of training: the rows whose id hashes below
:data:`~astroscale_fl.data.holdout.LOCAL_VAL_FRACTION` (:func:`~astroscale_fl.data.holdout.is_local_val`).
Each handler reads the message's run with :func:`~astroscale_fl.federation.messages.read_run` (parsed
once per run, typed) and reaches the node's rows through :func:`~astroscale_fl.data.node_data.node_data`
(one object per run and node).
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

import numpy as np
import pandas as pd
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from omegaconf import DictConfig, OmegaConf

from astroscale_fl.config import to_json
from astroscale_fl.data import holdout
from astroscale_fl.data.node_data import Columns, NodeData, NodeTensors, node_data
from astroscale_fl.data.tasks import get_task
from astroscale_fl.federation import local_objectives as objectives
from astroscale_fl.federation import protocol
from astroscale_fl.federation.messages import NodeRun, config_digest, read_pipeline, read_run, read_run_config
from astroscale_fl.federation.node_cache import NodeCache
from astroscale_fl.federation.records import load_arrays, model_to_arrays, numpy_to_arrays
from astroscale_fl.learning.models import build_model
from astroscale_fl.learning.steps import GradHook
from astroscale_fl.learning.training import eval_report, make_optimizer, predict
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.privacy.dp_statistics import private_statistics_reply
from astroscale_fl.privacy.floor import PrivacyFloor
from astroscale_fl.privacy.node import LocalJob, node_privacy

CACHE_BYTES = 256 * 2**20  # per process: encoded rows of the recently served nodes that cannot share one encoding
_TENSORS: NodeCache[NodeTensors] = NodeCache(
    CACHE_BYTES, lambda t: sum(x.element_size() * x.nelement() for x in (t.train_x, t.train_y, t.val_x, t.val_y)))


def _key(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def _unfitted_pipeline(task_and_preprocess_json: str, seed: int) -> Pipeline:
    cfg = OmegaConf.create({**json.loads(task_and_preprocess_json), "seed": seed})
    return Pipeline.from_config(get_task(cfg.task), cfg)


def unfitted_pipeline(cfg: DictConfig) -> Pipeline:
    """The run's pipeline before fitting (built once per config: a statistics round asks every node
    for it, and building it reads the config through OmegaConf, ~5 ms). Shared: use it read-only."""
    return _unfitted_pipeline(to_json(cfg, ("task", "preprocess")), int(cfg.seed))


def pipeline_columns(cfg: DictConfig) -> Columns:
    """The columns a node's pipeline reads (inputs, target, row id: all a node needs), and its time column."""
    pipeline = unfitted_pipeline(cfg)
    return Columns((*pipeline.inputs, pipeline.target.target, holdout.ID), pipeline.time_column)  # the id decides the local validation share


def node_split(cfg: DictConfig, node: NodeData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The node's (training, local validation) rows, seeded by row id. A simulated node's are
    gathered from the shared task table by its row selection, on each call (nothing is kept)."""
    return node.split(pipeline_columns(cfg))


def node_tensors(cfg: DictConfig, node: NodeData, pipeline: Pipeline, pipeline_key: str, device: torch.device) -> NodeTensors:
    """The node's rows encoded with the global pipeline, on ``device``.

    A simulated node's are gathered by its row selection from the task table encoded once
    (:meth:`~astroscale_fl.data.node_data.SimulatedNode.shared_tensors`); otherwise (a deployed
    node's memory-mapped tensor files, a pipeline that encodes node by node) the node's rows are
    encoded once per (node, pipeline, device) and kept while the byte budget allows.
    """
    shared = node.shared_tensors(pipeline, pipeline_key, device)
    if shared is not None:
        return shared
    key = _key(node.key, config_digest(cfg), pipeline_key, str(device))
    return _TENSORS.get(key, lambda: node.tensors(pipeline, pipeline_columns(cfg), device))


def handle_query(msg: Message, node_config: dict, state: RecordDict | None = None) -> RecordDict:
    """Statistics round: this node's column statistics (no rows leave the node); under
    ``privacy.statistics_epsilon`` through the Gaussian mechanism (``state``: the node's ledger)."""
    cfg = read_run_config(msg.content[protocol.CONFIG_KEY])
    node = node_data(cfg, node_config)
    if cfg.privacy.get("statistics_epsilon") is not None:
        train, _ = node_split(cfg, node)
        return private_statistics_reply(cfg, get_task(cfg.task), unfitted_pipeline(cfg), train, RecordDict() if state is None else state, node)
    stats, rows, quarantined = node.statistics(unfitted_pipeline(cfg), pipeline_columns(cfg))
    return RecordDict({
        protocol.STATS_KEY: numpy_to_arrays(stats.to_arrays()),
        protocol.COLUMNS_KEY: ConfigRecord({protocol.COLUMN_NAMES_KEY: list(stats.columns)}),
        protocol.METRICS_KEY: MetricRecord({protocol.WEIGHT_KEY: rows, protocol.QUARANTINED_KEY: quarantined}),
    })


_FLOOR_PASSED: set[tuple[str, str]] = set()  # (node config key, run digest) pairs whose floor check passed


def check_floor(run: NodeRun, node: NodeData) -> None:
    """Refuse the run if it is weaker than the node's privacy floor (node config), before any data is
    touched. Both are fixed for the run, so a pair that passed is not checked again; a refusal is."""
    if (node.key, run.digest) not in _FLOOR_PASSED:
        PrivacyFloor.from_node_config(node.config).check_run(run.cfg, node.name)
        _FLOOR_PASSED.add((node.key, run.digest))


def _prepare(msg: Message, run: NodeRun, node: NodeData, pipeline: Pipeline, pipeline_key: str) -> tuple[torch.nn.Module, NodeTensors]:
    """The received model and the node's rows, encoded by the message's pipeline, on the run's device."""
    settings = run.settings
    if torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)
    tensors = node_tensors(run.cfg, node, pipeline, pipeline_key, settings.device)
    model = fresh_model(run, len(pipeline.features))
    load_arrays(model, msg.content[protocol.ARRAYS_KEY])
    return model, tensors


_MODELS = threading.local()  # per thread: architecture key -> a model reused for each message


def fresh_model(run: NodeRun, in_features: int) -> torch.nn.Module:
    """A model of the run's architecture, on its device, whose values the message's arrays then overwrite.

    ``build_model`` seeds torch's global generator (~6 ms, and not for threads to race on), so
    each thread builds one per architecture and reuses it; DP-SGD hooks its model (Opacus), so
    it gets a fresh copy of that one instead.
    """
    settings = run.settings
    key = _key(run.model_digest, str(in_features), str(settings.device))
    models = _MODELS.__dict__
    if key not in models:
        models[key] = build_model(run.cfg.model, in_features, settings.seed).to(settings.device)
    return copy.deepcopy(models[key]) if settings.privacy is not None else models[key]


def handle_train(msg: Message, context: Context) -> RecordDict:
    """Train the received global model on this node's rows; return it and the example count.

    The round config's typed local objectives (:func:`protocol.local_objectives`) say which
    strategy terms apply: FedProx' :class:`~protocol.ProximalTerm` adds the proximal
    gradient; SCAFFOLD's :class:`~protocol.ScaffoldCorrection` switches to corrected plain SGD
    and adds the control-variate delta to the reply. The node's privacy round
    (:func:`astroscale_fl.privacy.node.node_privacy`) trains, with or without DP.
    """
    config = msg.content[protocol.CONFIG_KEY]
    run = read_run(config)
    pipeline, pipeline_key = read_pipeline(config)
    node = node_data(run.cfg, context.node_config)
    check_floor(run, node)
    model, tensors = _prepare(msg, run, node, pipeline, pipeline_key)
    local = run.settings
    # one message per round: evaluate the received global model (the previous round's) before training it
    evaluation = _evaluation_metrics(model, tensors, pipeline) if protocol.EVAL_ROUND_KEY in config else None
    server_round = int(config[protocol.SERVER_ROUND_KEY])
    wanted = protocol.local_objectives(config)
    hooks: list[GradHook] = []
    if wanted.proximal is not None:
        hooks.append(objectives.proximal_gradient(model, wanted.proximal.mu))
    scaffold = None
    if wanted.scaffold is not None:
        store = objectives.ControlVariateStore(context.state, context.run_id, node.data_dir)
        scaffold = objectives.ScaffoldRound(model, wanted.scaffold, msg.content, store)
        hooks.append(scaffold.hook)
        optimizer = scaffold.optimizer(model)
    else:
        optimizer = make_optimizer(model.parameters(), local.optimizer, local.lr, local.momentum, local.weight_decay)
    generator = batch_generator(local.seed, server_round, node)
    job = LocalJob(model, optimizer, tensors.train_x, tensors.train_y, local.batch_size, local.local_epochs,
                   generator, after_backward=objectives.combine(hooks), cuda_graph=local.cuda_graph)
    trained = node_privacy(local.privacy, run.cfg, context.state, node).train(job)
    reply = RecordDict({protocol.ARRAYS_KEY: model_to_arrays(model), protocol.METRICS_KEY: MetricRecord(trained.metrics),
                        **trained.records})
    if evaluation is not None:
        reply[protocol.EVAL_METRICS_KEY] = evaluation
    if scaffold is not None:
        reply[protocol.CONTROL_DELTA_KEY] = scaffold.finish(reply[protocol.ARRAYS_KEY], trained.report.steps)
    return reply


def handle_evaluate(msg: Message, node_config: dict) -> RecordDict:
    """Evaluate the global model on the node's local validation rows, as poolable sums."""
    config = msg.content[protocol.CONFIG_KEY]
    run = read_run(config)
    pipeline, pipeline_key = read_pipeline(config)
    model, tensors = _prepare(msg, run, node_data(run.cfg, node_config), pipeline, pipeline_key)
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


def batch_generator(seed: int, server_round: int, node: NodeData) -> torch.Generator:
    """The generator of a node's batch order in a round: seeded by run seed, round and the node's
    :attr:`~astroscale_fl.data.node_data.SimulatedNode.salt` (its partition in simulation, its
    table's content in deployment)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + server_round * 7919 + node.salt)


def node_epsilon_budget(msg: Message, context: Context) -> float | None:
    """The lifetime ε budget that applies on this node: the centre's, capped by the node's max-epsilon."""
    centre = read_run_config(msg.content[protocol.CONFIG_KEY]).privacy.get("epsilon_budget")
    return PrivacyFloor.from_node_config(dict(context.node_config)).budget(None if centre is None else float(centre))
