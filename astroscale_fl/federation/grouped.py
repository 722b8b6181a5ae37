"""A round's training messages trained together (``federation.vectorize``), each node answered.

:func:`train_grouped` takes the round's ``(Message, Context)`` pairs, sets up each node exactly
as :func:`astroscale_fl.federation.client.handle_train` does - its rows, its seeded batch order,
its strategy terms (FedProx' mu, SCAFFOLD's ``c - c_i`` read from its ``Context.state``), its
DP round planned and spent in its own ledger - then trains every node that shares the global
model and the training settings in one :func:`astroscale_fl.learning.vectorized.train_stacked` call, and
builds each node's reply as the handler does (its model, metrics, SCAFFOLD control delta with
``c_i`` saved in its state, DP ledger record). Messages it cannot group - vectorize off, a model
that does not stack, the Opacus DP backend, secure-mode noise, a node alone in its group on the
CPU, a node whose set-up raises (a spent privacy budget, say), SecAgg+ rounds (the ClientApp masks the reply) - return ``None`` and are served
one by one through the ClientApp by the caller, so their replies and errors are the handler's own.
On CUDA even a lone node trains here: the stacked trainer replays its step (DP included) from a
CUDA graph.

Grouped results equal node-by-node training to float rounding, not bit for bit (batched matmuls
sum in another order): a run is bit-reproducible across repeats either way, but compare it bit for
bit with the Ray backend (which trains node by node) with ``federation.vectorize=false``.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from dataclasses import dataclass

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict

from astroscale_fl.federation import client, protocol
from astroscale_fl.federation import local_objectives as objectives
from astroscale_fl.federation.messages import config_digest, read_pipeline, read_run_config
from astroscale_fl.federation.records import load_arrays, model_to_arrays
from astroscale_fl.federation.secagg import node as secagg_node
from astroscale_fl.learning.training import TrainReport, shuffled_batches
from astroscale_fl.learning.vectorized import LocalOptimizer, NodeWork, StackedDP, stackable, train_stacked
from astroscale_fl.privacy import PrivacySettings, card, poisson_batches
from astroscale_fl.privacy import node as dp_node
from astroscale_fl.privacy.floor import PrivacyFloor
from astroscale_fl.privacy.ghost import ghost_supported


@dataclass
class Member:
    """One node's share of a group: what its handler would have set up."""

    msg: Message
    context: Context
    work: NodeWork
    key: tuple
    model: torch.nn.Module  # a model of the run's architecture (values not yet the received ones)
    cfg: object
    optimizer: LocalOptimizer
    mu: float = 0.0
    scaffold: objectives.ScaffoldRound | None = None  # c, c_i (from the node's state), local_lr
    privacy: tuple | None = None  # (ledger, plan) once spent
    privacy_settings: PrivacySettings | None = None
    run: _RunSettings | None = None
    evaluation: MetricRecord | None = None  # one message per round: the received model on the node's validation rows


@dataclass(frozen=True)
class _RunSettings:
    """What grouping reads from a run config, read once per config (OmegaConf reads are slow)."""

    vectorize: bool
    cuda_graph: bool
    max_grad_norm: float | None


_RUN_SETTINGS: dict[str, _RunSettings] = {}


def _run_settings(cfg) -> tuple[str, _RunSettings]:
    digest = config_digest(cfg)
    if digest not in _RUN_SETTINGS:
        clip = float(cfg.privacy.max_grad_norm) if cfg.privacy.name != "none" else None
        _RUN_SETTINGS[digest] = _RunSettings(bool(cfg.federation.vectorize), bool(cfg.train.cuda_graph), clip)
    return digest, _RUN_SETTINGS[digest]


def _eligible(run: _RunSettings, privacy: PrivacySettings | None, model: torch.nn.Module) -> bool:
    """Whether the node can train in a group (else its handler trains it alone)."""
    if not run.vectorize or not stackable(model):
        return False
    return privacy is None or not (privacy.backend == "opacus" or privacy.secure_mode or not ghost_supported(model))


def _setup(msg: Message, context: Context) -> Member | None:
    """The node's training set-up (no privacy spent yet), or None when it cannot be grouped."""
    if secagg_node.RECORD in msg.content.config_records:
        return None  # SecAgg+: the ClientApp masks the reply
    config = msg.content[protocol.CONFIG_KEY]
    cfg = read_run_config(config)
    local = client.local_settings(cfg)
    digest, run = _run_settings(cfg)
    pipeline, pipeline_key = read_pipeline(config)
    model = client._fresh_model(cfg, len(pipeline.features), local.device)
    if not _eligible(run, local.privacy, model):
        return None
    node_config = dict(context.node_config)
    PrivacyFloor.from_node_config(node_config).check_run(cfg, dp_node.node_name(node_config))  # raises: the handler declines
    tensors = client.node_tensors(cfg, node_config, pipeline, pipeline_key, local.device)
    evaluation = None
    if protocol.EVAL_ROUND_KEY in config:
        received = copy.deepcopy(model)
        load_arrays(received, msg.content[protocol.ARRAYS_KEY])
        evaluation = client._evaluation_metrics(received, tensors, pipeline)
    wanted = protocol.local_objectives(config)
    mu = wanted.proximal.mu if wanted.proximal is not None else 0.0
    scaffold, correction = None, None
    if wanted.scaffold is not None:
        store = objectives.ControlVariateStore(context.state, context.run_id, node_config.get("data-dir"))
        scaffold = objectives.ScaffoldRound(model, wanted.scaffold, msg.content, store)
        correction = {n: torch.as_tensor(scaffold.server_c[n] - scaffold.node_c[n], dtype=p.dtype, device=local.device)
                      for n, p in model.named_parameters()}
        optimizer = LocalOptimizer("sgd", scaffold.local_lr)
    else:
        optimizer = LocalOptimizer(local.optimizer, local.lr, local.momentum, local.weight_decay)
    arrays_digest = hashlib.sha256(b"".join(a.data for a in msg.content[protocol.ARRAYS_KEY].values())).hexdigest()
    key = (arrays_digest, digest, optimizer, mu, scaffold is not None)
    work = NodeWork(tensors.train_x, tensors.train_y, [], correction)
    return Member(msg, context, work, key, model, cfg, optimizer, mu, scaffold, None, local.privacy, run, evaluation)


def _batches(member: Member) -> None:
    """Draw the node's batches as its handler would (seeded shuffle, or Poisson after the DP spend)."""
    cfg, node_config = member.cfg, dict(member.context.node_config)
    n = len(member.work.target)
    if member.privacy_settings is None:
        local = client.local_settings(cfg)
        server_round = int(member.msg.content[protocol.CONFIG_KEY][protocol.SERVER_ROUND_KEY])
        generator = client.batch_generator(local.seed, server_round, node_config)
        member.work.batches = list(shuffled_batches(n, local.batch_size, local.local_epochs, generator))
    else:
        ledger, plan = dp_node.spend_round(member.privacy_settings, cfg, member.context.state, node_config, n)
        member.privacy = (ledger, plan)
        member.work.batches = list(poisson_batches(n, plan.sample_rate, plan.steps, generator=None))


def _reply(member: Member, params: dict[str, torch.Tensor], report: TrainReport) -> Message:
    """The node's reply, as its handler builds it; SCAFFOLD's new ``c_i`` is saved in its state."""
    with torch.no_grad():
        for name, p in member.model.named_parameters():
            p.copy_(params[name])
    reply = RecordDict({protocol.ARRAYS_KEY: model_to_arrays(member.model)})  # member.model: the group's scratch copy
    if member.privacy is None:
        metrics = {protocol.WEIGHT_KEY: report.examples, protocol.TRAIN_LOSS_KEY: report.loss}
    else:
        ledger, _ = member.privacy
        metrics = {protocol.WEIGHT_KEY: report.examples, protocol.EPSILON_KEY: ledger.epsilon(), protocol.DELTA_KEY: ledger.delta}
        reply[protocol.PRIVACY_KEY] = card.reply_record(dp_node.node_name(dict(member.context.node_config)), ledger)
    reply[protocol.METRICS_KEY] = MetricRecord(metrics)
    if member.evaluation is not None:
        reply[protocol.EVAL_METRICS_KEY] = member.evaluation
    if member.scaffold is not None:
        reply[protocol.CONTROL_DELTA_KEY] = member.scaffold.finish(reply[protocol.ARRAYS_KEY], report.steps)
    return Message(content=reply, reply_to=member.msg)


def _train_group(group: list[Member]) -> list[Message]:
    """Train the members (same model, same settings, batches drawn) as one stacked model; their replies."""
    first = group[0]
    start = copy.deepcopy(first.model)  # the shared per-thread model is not ours to keep
    load_arrays(start, first.msg.content[protocol.ARRAYS_KEY])
    scratch = copy.deepcopy(start)
    for member in group:
        member.model = scratch
    dp = None
    if first.privacy is not None:
        plans = [m.privacy[1] for m in group]
        dp = StackedDP(tuple(p.noise_multiplier for p in plans), first.run.max_grad_norm,
                       tuple(p.expected_batch_size for p in plans))
    results = train_stacked(start, [m.work for m in group], first.optimizer, proximal_mu=first.mu, dp=dp,
                            cuda_graph=first.run.cuda_graph)
    return [_reply(member, params, report) for member, (params, report) in zip(group, results, strict=True)]


def train_grouped(work: list[tuple[Message, Context]]) -> list[Message | None]:
    """Replies to the round's training ``work`` in its order; ``None`` where a node must be served alone.

    Groups train on the calling thread with its torch threads (``federation.client_threads``
    under the engine), so results do not depend on the engine's worker count.
    """
    members: list[Member | None] = []
    for msg, context in work:
        try:
            members.append(_setup(msg, context))
        except Exception:  # the handler, run alone, reports it as it always does
            members.append(None)
    groups: dict[tuple, list[int]] = {}
    for i, member in enumerate(members):
        if member is not None:
            groups.setdefault(member.key, []).append(i)
    replies: list[Message | None] = [None] * len(work)
    for indices in groups.values():
        if len(indices) < 2 and members[indices[0]].work.features.device.type != "cuda":
            continue  # alone on the CPU: the handler's own loop is as fast; on CUDA the graphed trainer pays
        ready = []
        for i in indices:
            try:
                _batches(members[i])
                ready.append(i)
            except Exception:  # e.g. a spent budget: nothing was spent; alone, the handler declines or reports it
                if members[i].privacy is not None:
                    raise

        if not ready:
            continue
        for i, reply in zip(ready, _train_group([members[i] for i in ready]), strict=True):
            replies[i] = reply
    return replies


def run_train_grouped(grid, work: list[tuple[Message, Context]]) -> list[Message]:
    """The in-process engine's train runner (``InProcessGrid.train_runner``) under ``federation.vectorize``:
    groups through :func:`train_grouped`, every other message through the grid's ClientApp."""
    replies = train_grouped(work)
    for reply in replies:
        if reply is not None:
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the grid ids the ClientApp's replies
    alone = [i for i, reply in enumerate(replies) if reply is None]
    for i, reply in zip(alone, grid.run_each([work[i] for i in alone]), strict=True):
        replies[i] = reply
    return replies
