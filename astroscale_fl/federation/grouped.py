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

:func:`evaluate_grouped` does the same for a round's evaluate messages (the nodes not trained this
round): nodes that received the same model evaluate it in one forward pass, each answered with its
own sums; the folded evaluations riding on training messages are grouped with their training.

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
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from astroscale_fl.data.node_data import NodeData, NodeTensors, node_data
from astroscale_fl.federation import client, protocol
from astroscale_fl.federation import local_objectives as objectives
from astroscale_fl.federation.messages import LocalSettings, read_pipeline, read_run
from astroscale_fl.federation.records import array_from_numpy, array_record, load_arrays
from astroscale_fl.federation.secagg import node as secagg_node
from astroscale_fl.learning.steps import TrainReport
from astroscale_fl.learning.training import shuffled_batches
from astroscale_fl.learning.vectorized import LocalOptimizer, NodeWork, StackedDP, stackable, train_stacked
from astroscale_fl.privacy import card
from astroscale_fl.privacy import node as dp_node
from astroscale_fl.privacy.dp_sgd import poisson_batches
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
    run: LocalSettings | None = None  # the run's settings as the node reads them (DP-SGD's: run.privacy)
    tensors: NodeTensors | None = None
    pipeline: object = None
    evaluates: bool = False  # one message per round: evaluate the received model on the node's validation rows first
    evaluation: MetricRecord | None = None
    node: NodeData | None = None  # the node's data (name, salt, state directory)


def _eligible(run: LocalSettings, model: torch.nn.Module) -> bool:
    """Whether the node can train in a group (else its handler trains it alone)."""
    if not run.vectorize or not stackable(model):
        return False
    privacy = run.privacy
    return privacy is None or not (privacy.backend == "opacus" or privacy.secure_mode or not ghost_supported(model))


def arrays_key(record, digests: dict[int, str]) -> str:
    """A digest of a message's model arrays; the messages of a round share one ArrayRecord, so it
    is hashed once per record object (``digests``: the round's memo)."""
    if id(record) not in digests:
        digests[id(record)] = hashlib.sha256(b"".join(a.data for a in record.values())).hexdigest()
    return digests[id(record)]


def _setup(msg: Message, context: Context, digests: dict[int, str]) -> Member | None:
    """The node's training set-up (no privacy spent yet), or None when it cannot be grouped."""
    if secagg_node.RECORD in msg.content.config_records:
        return None  # SecAgg+: the ClientApp masks the reply
    config = msg.content[protocol.CONFIG_KEY]
    node_run = read_run(config)
    cfg, local, digest = node_run.cfg, node_run.settings, node_run.digest
    pipeline, pipeline_key = read_pipeline(config)
    model = client.fresh_model(node_run, len(pipeline.features))
    if not _eligible(local, model):
        return None
    node = node_data(cfg, context.node_config)
    client.check_floor(node_run, node)
    tensors = client.node_tensors(cfg, node, pipeline, pipeline_key, local.device)
    wanted = protocol.local_objectives(config)
    mu = wanted.proximal.mu if wanted.proximal is not None else 0.0
    scaffold, correction = None, None
    if wanted.scaffold is not None:
        store = objectives.ControlVariateStore(context.state, context.run_id, node.data_dir)
        scaffold = objectives.ScaffoldRound(model, wanted.scaffold, msg.content, store)
        correction = {n: torch.as_tensor(scaffold.server_c[n] - scaffold.node_c[n], dtype=p.dtype, device=local.device)
                      for n, p in model.named_parameters()}
        optimizer = LocalOptimizer("sgd", scaffold.local_lr)
    else:
        optimizer = LocalOptimizer(local.optimizer, local.lr, local.momentum, local.weight_decay)
    key = (arrays_key(msg.content[protocol.ARRAYS_KEY], digests), digest, pipeline_key, optimizer, mu, scaffold is not None)
    work = NodeWork(tensors.train_x, tensors.train_y, [], correction)
    return Member(msg, context, work, key, model, cfg, optimizer, mu, scaffold, None, local, tensors, pipeline,
                  protocol.EVAL_ROUND_KEY in config, node=node)


def _batches(member: Member) -> None:
    """Draw the node's batches as its handler would (seeded shuffle, or Poisson after the DP spend)."""
    cfg, node = member.cfg, member.node
    n = len(member.work.target)
    local = member.run
    if local.privacy is None:
        server_round = int(member.msg.content[protocol.CONFIG_KEY][protocol.SERVER_ROUND_KEY])
        generator = client.batch_generator(local.seed, server_round, node)
        member.work.batches = list(shuffled_batches(n, local.batch_size, local.local_epochs, generator))
    else:
        ledger, plan = dp_node.spend_round(local.privacy, cfg, member.context.state, node, n)
        member.privacy = (ledger, plan)
        member.work.batches = list(poisson_batches(n, plan.sample_rate, plan.steps, generator=None))


def _reply(member: Member, params: dict[str, torch.Tensor], report: TrainReport, state: dict[str, torch.Tensor]) -> Message:
    """The node's reply, as its handler builds it; SCAFFOLD's new ``c_i`` is saved in its state.

    ``state``: the received model's state dict, whose keys and order the handler's ``model_to_arrays``
    gives (buffers, if any, as received)."""
    arrays = array_record({name: array_from_numpy(params.get(name, value).detach().cpu().numpy()) for name, value in state.items()})
    reply = RecordDict({protocol.ARRAYS_KEY: arrays})
    if member.privacy is None:
        metrics = {protocol.WEIGHT_KEY: report.examples, protocol.TRAIN_LOSS_KEY: report.loss}
    else:
        ledger, _ = member.privacy
        metrics = {protocol.WEIGHT_KEY: report.examples, protocol.EPSILON_KEY: ledger.epsilon(), protocol.DELTA_KEY: ledger.delta}
        reply[protocol.PRIVACY_KEY] = card.reply_record(member.node.name, ledger)
    reply[protocol.METRICS_KEY] = MetricRecord(metrics)
    if member.evaluation is not None:
        reply[protocol.EVAL_METRICS_KEY] = member.evaluation
    if member.scaffold is not None:
        reply[protocol.CONTROL_DELTA_KEY] = member.scaffold.finish(arrays, report.steps)
    return Message(content=reply, reply_to=member.msg)


def _received_model(model: torch.nn.Module, arrays: ArrayRecord) -> torch.nn.Module:
    """A copy of ``model`` (a thread's shared one, not ours to change) holding the received arrays."""
    received = copy.deepcopy(model)
    load_arrays(received, arrays)
    return received


def _train_group(group: list[Member]) -> list[Message]:
    """Train the members (same model, same settings, batches drawn) as one stacked model; their replies.

    Members asked to evaluate the received model first do so together, in one forward pass."""
    first = group[0]
    start = _received_model(first.model, first.msg.content[protocol.ARRAYS_KEY])
    evaluating = [m for m in group if m.evaluates]
    if evaluating:
        for member, metrics in zip(evaluating, client.evaluation_metrics(start, [m.tensors for m in evaluating], first.pipeline),
                                   strict=True):
            member.evaluation = metrics
    dp = None
    if first.privacy is not None:
        plans = [m.privacy[1] for m in group]
        dp = StackedDP(tuple(p.noise_multiplier for p in plans), first.run.privacy.max_grad_norm,
                       tuple(p.expected_batch_size for p in plans))
    results = train_stacked(start, [m.work for m in group], first.optimizer, proximal_mu=first.mu, dp=dp,
                            cuda_graph=first.run.cuda_graph, on_host=True)
    state = start.state_dict()
    return [_reply(member, params, report, state) for member, (params, report) in zip(group, results, strict=True)]


def train_grouped(work: list[tuple[Message, Context]]) -> list[Message | None]:
    """Replies to the round's training ``work`` in its order; ``None`` where a node must be served alone.

    Groups train on the calling thread with its torch threads (``federation.client_threads``
    under the engine), so results do not depend on the engine's worker count.
    """
    members: list[Member | None] = []
    digests: dict[int, str] = {}
    for msg, context in work:
        try:
            members.append(_setup(msg, context, digests))
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


def evaluate_grouped(work: list[tuple[Message, Context]]) -> list[Message | None]:
    """Replies to a round's evaluate messages in ``work``'s order; ``None`` where a node must be served alone.

    Nodes that received the same model under the same run and pipeline evaluate it together: one
    copy of the model, one forward pass over all their validation rows, then each node's sums over
    its own rows (:func:`client.evaluation_metrics`), answered with the reply its handler builds.
    """
    digests: dict[int, str] = {}
    groups: dict[tuple, list[tuple[int, NodeTensors]]] = {}
    settings = {}
    for i, (msg, context) in enumerate(work):
        try:
            config = msg.content[protocol.CONFIG_KEY]
            node_run = read_run(config)
            if not node_run.settings.vectorize:
                continue
            pipeline, pipeline_key = read_pipeline(config)
            cfg = node_run.cfg
            tensors = client.node_tensors(cfg, node_data(cfg, context.node_config), pipeline, pipeline_key, node_run.settings.device)
            key = (arrays_key(msg.content[protocol.ARRAYS_KEY], digests), node_run.digest, pipeline_key)
        except Exception:  # the handler, run alone, reports it as it always does
            continue
        groups.setdefault(key, []).append((i, tensors))
        settings.setdefault(key, (node_run, pipeline))
    replies: list[Message | None] = [None] * len(work)
    for key, members in groups.items():
        if len(members) < 2:
            continue
        node_run, pipeline = settings[key]
        first = work[members[0][0]][0]
        model = _received_model(client.fresh_model(node_run, len(pipeline.features)), first.content[protocol.ARRAYS_KEY])
        for (i, _), metrics in zip(members, client.evaluation_metrics(model, [t for _, t in members], pipeline), strict=True):
            replies[i] = Message(RecordDict({protocol.METRICS_KEY: metrics}), reply_to=work[i][0])
    return replies


def run_evaluate_grouped(grid, work: list[tuple[Message, Context]]) -> list[Message]:
    """The in-process engine's evaluate runner under ``federation.vectorize``: groups through
    :func:`evaluate_grouped`, every other message through the grid's ClientApp."""
    return _answer(grid, work, evaluate_grouped(work))


def run_train_grouped(grid, work: list[tuple[Message, Context]]) -> list[Message]:
    """The in-process engine's train runner (``InProcessGrid.train_runner``) under ``federation.vectorize``:
    groups through :func:`train_grouped`, every other message through the grid's ClientApp."""
    return _answer(grid, work, train_grouped(work))


def _answer(grid, work: list[tuple[Message, Context]], replies: list[Message | None]) -> list[Message]:
    """``replies`` completed: ids for the grouped ones, the grid's ClientApp for the ``None`` ones."""
    for reply in replies:
        if reply is not None:
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the grid ids the ClientApp's replies
    alone = [i for i, reply in enumerate(replies) if reply is None]
    for i, reply in zip(alone, grid.run_each([work[i] for i in alone]), strict=True):
        replies[i] = reply
    return replies
