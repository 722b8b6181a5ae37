"""In-process simulation engine: a Flower Grid whose nodes are Contexts served by our ClientApp.

``federation.backend=inprocess`` (the default) runs the ServerApp's ``main`` against
:class:`InProcessGrid`. Each simulated node is what a SuperNode gives a ClientApp: a Flower
``Context`` with its own ``node_config`` (``partition-id`` / ``num-partitions``, as Flower's
simulation sets them) and its own ``state`` persisting across the run's rounds, and every
instruction reaches the ClientApp object itself (``client_app(message, context)``) as a real
``Message`` (its own copy of the content, a message id, a reply that answers it). Errors a
handler raises come back as error replies, as a SuperNode reports them.

The nodes of a round run concurrently on a thread pool sized to the cores (torch releases
the GIL in its kernels), each with one torch thread, so results do not depend on how many
threads reduce a sum. Nothing is started per job: a Hydra multirun reuses the process, the
imports and the pool. A node costs a Context (a few hundred bytes) until it is first
addressed; its rows are read only while it handles a message (see federation.client).

Training messages of a round go through one method, :meth:`InProcessGrid.run_train`, and
evaluate messages through :meth:`InProcessGrid.run_evaluate`: the seams where a grouped
(vectorised) execution can replace node-by-node training and evaluation.
"""

from __future__ import annotations

import copy
import gc
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from omegaconf import DictConfig

from astroscale_fl.data.node_data import NUM_PARTITIONS_KEY, PARTITION_KEY
from astroscale_fl.federation.grouped import run_evaluate_grouped, run_train_grouped

FIRST_NODE_ID = 1_000  # node i is FIRST_NODE_ID + i, in both backends (see ray_backend)
RUN_ID = 1
Work = list[tuple[Message, Context]]  # messages with the Context of the node each is addressed to
TrainRunner = Callable[["InProcessGrid", Work], list[Message]]  # also the type of an evaluate runner


def simulation_node_configs(num_nodes: int) -> list[dict]:
    """Node configs as Flower's simulation gives them: ``partition-id`` of ``num-partitions``."""
    return [{PARTITION_KEY: i, NUM_PARTITIONS_KEY: num_nodes} for i in range(num_nodes)]


def default_workers(threads_per_node: int = 1) -> int:
    """Nodes run at once: the cores this process may use, over each node's torch threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, threads_per_node))


class InProcessGrid(Grid):
    """A Grid over simulated nodes in this process (Flower's ``Grid`` interface).

    ``push_messages`` delivers the messages and runs the nodes' ClientApp before returning
    (concurrently across nodes); ``pull_messages`` hands out the replies. A message to an
    unknown node gets an empty id, as a SuperLink refuses it.
    """

    in_process = True  # messages never leave the process: sent as built, not packed for a transport

    def __init__(self, client_app: ClientApp, node_configs: Sequence[dict], run_id: int = RUN_ID,
                 workers: int | None = None, train_runner: TrainRunner | None = None,
                 evaluate_runner: TrainRunner | None = None):
        self.client_app = client_app
        self.node_configs = list(node_configs)
        self.workers = workers or default_workers()
        self.train_runner = train_runner
        self.evaluate_runner = evaluate_runner
        self._run = Run.create_empty(run_id)
        self._contexts: dict[int, Context] = {}
        self._replies: dict[str, Message] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.messages_served = 0
        _set_task_identity(run_id)

    # -- Grid interface -------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return [FIRST_NODE_ID + i for i in range(len(self.node_configs))]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        ids, work = [], []
        for msg in messages:
            if not self._is_node(msg.metadata.dst_node_id):
                ids.append("")
                continue
            msg.metadata.__dict__["_message_id"] = message_id = uuid.uuid4().hex
            ids.append(message_id)
            work.append((_delivered_copy(msg), self.context(msg.metadata.dst_node_id)))
        for reply in self.execute(work):
            self._replies[reply.metadata.reply_to_message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._replies.pop(mid) for mid in message_ids if mid in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Deliver ``messages`` and return their replies (every node answers before this returns)."""
        return self.pull_messages([mid for mid in self.push_messages(messages) if mid])

    # -- nodes ----------------------------------------------------------------------------

    def _is_node(self, node_id: int) -> bool:
        return 0 <= node_id - FIRST_NODE_ID < len(self.node_configs)

    @property
    def contexts(self) -> dict[int, Context]:
        """The Contexts of the nodes addressed so far, by node id."""
        return dict(self._contexts)

    def context(self, node_id: int) -> Context:
        """The node's Context, created when the node is first addressed and kept for the run."""
        with self._lock:
            if node_id not in self._contexts:
                config = self.node_configs[node_id - FIRST_NODE_ID]
                self._contexts[node_id] = Context(run_id=self._run.run_id, node_id=node_id, node_config=dict(config),
                                                  state=RecordDict(), run_config={})
            return self._contexts[node_id]

    # -- execution ------------------------------------------------------------------------

    def execute(self, work: Work) -> list[Message]:
        """Replies to ``work`` in its order: training messages through :meth:`run_train`, evaluate
        messages through :meth:`run_evaluate`."""
        replies: list[Message | None] = [None] * len(work)
        kinds = [msg.metadata.message_type for msg, _ in work]
        train = [i for i, kind in enumerate(kinds) if kind == MessageType.TRAIN]
        evaluate = [i for i, kind in enumerate(kinds) if kind == MessageType.EVALUATE]
        other = [i for i, kind in enumerate(kinds) if kind not in (MessageType.TRAIN, MessageType.EVALUATE)]
        for indices, runner in ((train, self.run_train), (evaluate, self.run_evaluate), (other, self.run_each)):
            if indices:
                for i, reply in zip(indices, runner([work[i] for i in indices]), strict=True):
                    replies[i] = reply
        self.messages_served += len(work)
        return replies  # type: ignore[return-value]

    def run_train(self, work: Work) -> list[Message]:
        """Serve one round's training messages; replace ``train_runner`` to train them as a group."""
        if self.train_runner is not None:
            return self.train_runner(self, work)
        return self.run_each(work)

    def run_evaluate(self, work: Work) -> list[Message]:
        """Serve one round's evaluate messages; replace ``evaluate_runner`` to evaluate them as a group."""
        if self.evaluate_runner is not None:
            return self.evaluate_runner(self, work)
        return self.run_each(work)

    def run_each(self, work: Work) -> list[Message]:
        """Serve messages node by node, concurrently on the pool, replies in ``work``'s order."""
        if len(work) == 1 or self.workers == 1:
            return [self.serve(msg, ctx) for msg, ctx in work]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="astroscale-node")
        return list(self._pool.map(lambda item: self.serve(*item), work))

    def serve(self, msg: Message, context: Context) -> Message:
        """One node handles one message through the ClientApp; an exception becomes an error reply."""
        try:
            reply = self.client_app(msg, context)
        except Exception as exc:  # noqa: BLE001 -- a SuperNode reports any raising ClientApp as an error reply
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"),
                            reply_to=msg)
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        return reply

    def close(self) -> None:
        """Stop the worker threads (a closed grid starts a new pool if used again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _set_task_identity(run_id: int) -> None:
    """Messages the ServerApp creates take their run and source node from TaskIdentity."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run_id, SUPERLINK_NODE_ID


def _delivered_copy(msg: Message) -> Message:
    """What a node receives: the message with its own records (a SuperNode deserialises a copy).

    Config records are copied (``copy()``: the values were checked when the server set them);
    arrays are shared, since ``Array`` holds immutable bytes.
    """
    content = RecordDict({name: rec.copy() if isinstance(rec, ConfigRecord) else rec for name, rec in msg.content.items()})
    return Message(content=content, metadata=copy.copy(msg.metadata))


def run_inprocess(server_app: ServerApp, client_app: ClientApp, cfg: DictConfig,
                  train_runner: TrainRunner | None = None) -> InProcessGrid:
    """Run ``server_app`` against ``cfg.federation.num_nodes`` in-process nodes; return the grid used.

    Under ``federation.vectorize`` (the default) a round's training messages go to
    :func:`astroscale_fl.federation.grouped.run_train_grouped` unless ``train_runner`` is given,
    and its evaluate messages to :func:`astroscale_fl.federation.grouped.run_evaluate_grouped`.
    """
    evaluate_runner = None
    if bool(cfg.federation.vectorize):
        train_runner = train_runner or run_train_grouped
        evaluate_runner = run_evaluate_grouped
    threads = int(cfg.federation.client_threads)
    grid = InProcessGrid(client_app, simulation_node_configs(int(cfg.federation.num_nodes)),
                         workers=default_workers(threads), train_runner=train_runner, evaluate_runner=evaluate_runner)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the server's evaluation too: same threads as under Ray
    gc.freeze()  # a run makes many small objects (messages, records): full collections need not rescan the imports and tables
    try:
        server_app(grid, Context(run_id=RUN_ID, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                                 run_config={}))
    finally:
        gc.unfreeze()
        grid.close()
        torch.set_num_threads(previous)
    return grid
