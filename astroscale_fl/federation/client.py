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
from astroscale_fl.federation.messages import read_pipeline, read_run_config
from astroscale_fl.federation.records import arrays_to_numpy, load_arrays, model_to_arrays, numpy_to_arrays
from astroscale_fl.models import build_model
from astroscale_fl.privacy import PrivacySettings, card, make_private, poisson_batches, train_local_dp
from astroscale_fl.privacy import node as dp_node
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.tasks import get_task
from astroscale_fl.training import evaluate, make_optimizer, shuffled_batches, train_local

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
    cfg = read_run_config(msg.content["config"])
    task = get_task(cfg.task)
    train, _ = node_split(cfg, node_config)
    if cfg.privacy.get("statistics_epsilon") is not None:
        from astroscale_fl.privacy.dp_statistics import private_statistics_reply

        pipeline = Pipeline.from_config(task, cfg)
        return private_statistics_reply(cfg, task, pipeline, train, RecordDict() if state is None else state, node_config)
    stats = Pipeline.from_config(task, cfg).compute_statistics(train)
    return RecordDict({
        "stats": numpy_to_arrays(stats.to_arrays()),
        "columns": ConfigRecord({"names": list(stats.columns)}),
        "metrics": MetricRecord({"num-examples": len(train)}),
    })


def _prepare(msg: Message, node_config: dict) -> tuple[DictConfig, torch.nn.Module, NodeTensors, Pipeline]:
    config = msg.content["config"]
    cfg = read_run_config(config)
    torch.set_num_threads(int(cfg.federation.client_threads))
    device = resolve_device(cfg.device)
    pipeline, pipeline_key = read_pipeline(config)
    tensors = node_tensors(cfg, node_config, pipeline, pipeline_key, device)
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed)).to(device)
    load_arrays(model, msg.content["arrays"])
    return cfg, model, tensors, pipeline


def handle_train(msg: Message, context: Context) -> RecordDict:
    """Train the received global model on this node's rows; return it and the example count.

    The round config says which strategy terms apply: FedProx' ``proximal-mu`` adds the
    proximal gradient; SCAFFOLD's ``control`` record switches to corrected plain SGD and adds
    the control-variate delta to the reply.
    """
    from strategies.fedprox import MU_KEY
    from strategies.scaffold import CONTROL_DELTA_KEY, CONTROL_KEY, LOCAL_LR_KEY

    node_config = dict(context.node_config)
    config = msg.content["config"]
    cfg, model, tensors, _ = _prepare(msg, node_config)
    server_round = int(config["server-round"])
    generator = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + server_round * 7919 + _node_salt(node_config))
    batches = shuffled_batches(len(tensors.train_y), int(cfg.train.batch_size), int(cfg.train.local_epochs), generator)
    hooks: list[objectives.GradHook] = []
    if MU_KEY in config:
        hooks.append(objectives.proximal_gradient(model, float(config[MU_KEY])))
    scaffold = CONTROL_KEY in msg.content.array_records
    if scaffold:
        local_lr = float(config[LOCAL_LR_KEY])
        optimizer = torch.optim.SGD(model.parameters(), lr=local_lr)
        global_arrays = arrays_to_numpy(msg.content["arrays"])
        server_c = objectives.read_control(msg.content[CONTROL_KEY])
        store = objectives.ControlVariateStore(context.state, context.run_id, node_config.get("data-dir"))
        node_c = store.load(server_c)
        hooks.append(objectives.control_correction(model, server_c, node_c))
    else:
        optimizer = make_optimizer(model.parameters(), cfg.train.optimizer, cfg.train.lr, cfg.train.momentum, cfg.train.weight_decay)
    settings = PrivacySettings.from_config(cfg.privacy)
    if settings is None:
        report = train_local(model, optimizer, tensors.train_x, tensors.train_y, batches, after_backward=objectives.combine(hooks))
        metrics = {"num-examples": report.examples, "train_loss": report.loss}
        privacy_record = None
    else:
        report, metrics, privacy_record = _train_private(settings, cfg, context, model, optimizer, tensors, hooks)
    reply = RecordDict({"arrays": model_to_arrays(model), "metrics": MetricRecord(metrics)})
    if privacy_record is not None:
        reply[card.REPLY_KEY] = privacy_record
    if scaffold:
        new_c = objectives.updated_control(global_arrays, arrays_to_numpy(reply["arrays"]), server_c, node_c, report.steps, local_lr)
        store.save(new_c)
        reply[CONTROL_DELTA_KEY] = numpy_to_arrays({k: (new_c[k] - node_c[k]).astype(np.float32) for k in new_c})
    return reply


def _train_private(settings: PrivacySettings, cfg: DictConfig, context: Context, model: torch.nn.Module,
                   optimizer: torch.optim.Optimizer, tensors: NodeTensors, hooks: list) -> tuple:
    """DP-SGD round: spend in the ledger first (or decline), then train with clipping and noise.

    Strategy terms (FedProx, SCAFFOLD) are added after clip + noise: see astroscale_fl.privacy.dp_sgd.
    The reply carries ε so far and the node's ledger (for the model card); no noiseless loss.
    """
    node_config = dict(context.node_config)
    n = len(tensors.train_y)
    ledger, plan = dp_node.spend_round(settings, cfg, context.state, node_config, n)
    private, dp_optimizer = make_private(model, optimizer, noise_multiplier=plan.noise_multiplier,
                                         max_grad_norm=plan.max_grad_norm, expected_batch_size=plan.expected_batch_size,
                                         backend=settings.backend, secure_mode=settings.secure_mode)
    batches = poisson_batches(n, plan.sample_rate, plan.steps, generator=None)
    report = train_local_dp(private, dp_optimizer, tensors.train_x, tensors.train_y, batches, after_backward=objectives.combine(hooks))
    metrics = {"num-examples": n, "epsilon": ledger.epsilon(), "delta": ledger.delta}
    return report, metrics, card.reply_record(dp_node.node_name(node_config), ledger)


def handle_evaluate(msg: Message, node_config: dict) -> RecordDict:
    """Evaluate the global model on the node's local validation rows, as poolable sums."""
    _, model, tensors, pipeline = _prepare(msg, node_config)
    x, y = (tensors.val_x, tensors.val_y) if len(tensors.val_y) else (tensors.train_x, tensors.train_y)
    report = evaluate(model, x, y, pipeline.target.inverse)
    y_true = pipeline.target.inverse(y.double().cpu().numpy())
    return RecordDict({"metrics": MetricRecord({
        "num-examples": report.examples,
        "loss": report.loss,
        "sse": report.rmse**2 * report.examples,
        "sum_y": float(y_true.sum()),
        "sum_y2": float((y_true**2).sum()),
    })})


def _node_salt(node_config: dict) -> int:
    """A stable per-node integer, so nodes shuffle differently under one seed."""
    ident = str(node_config.get("partition-id", node_config.get("data-dir", "")))
    return int(hashlib.sha256(ident.encode()).hexdigest()[:8], 16)
