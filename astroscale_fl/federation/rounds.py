"""The server's round loop: statistics round, then train / evaluate rounds with a history.

This mirrors ``Strategy.start`` of Flower's Message API (configure -> send and receive ->
aggregate, for training then evaluation, then centralized evaluation) and adds what a
survey centre needs: per-round wall time, nodes sampled / replied / failed / declined, bytes
each way, Prometheus metrics, a checkpoint hook, and resilience:

- replies are awaited with a timeout (``federation.round_timeout``), polling the SuperLink
  every 0.2 s instead of Flower's 3 s; a node that leaves the federation is not waited for;
- a reply that is an error or never arrives counts as *failed*; a node that refuses the round
  (DP: its privacy budget is spent, ``BUDGET_EXCEEDED_CODE``; the round is weaker than its own
  privacy floor, ``FLOOR_REFUSED_CODE``) counts as *declined*; a reply with
  non-finite values or an update norm beyond ``federation.max_update_norm`` is *rejected*
  (counted, logged, never aggregated);
- a round aggregates when at least ``federation.min_replies`` valid replies arrived;
- with ``federation.evaluate_in_train`` (default) a round is one message per node: the
  evaluation of round r's model rides on round r+1's training message
  (:class:`~astroscale_fl.federation.folded_eval.FoldedEvaluation`), and a final evaluate-only
  message covers the last model. History values are the same either way.

Each round is :func:`train_phase` (configure, send and receive, :func:`sort_replies`, aggregate)
then :func:`evaluate_phase`; :func:`run_rounds` returns one typed :class:`RoundOutcome` per
round (its ``history.csv`` row, the accepted replies, the structured declines, the DP ledger
entries and the rejection reasons).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from astroscale_fl.errors import AstroScaleError
from astroscale_fl.federation.folded_eval import FoldedEvaluation
from astroscale_fl.federation.history import NodeRecord, RoundRecord
from astroscale_fl.federation.packing import packed_message, unpack_reply
from astroscale_fl.federation.protocol import (
    ARRAYS_KEY,
    COLUMN_NAMES_KEY,
    COLUMNS_KEY,
    CONFIG_KEY,
    DECLINE_CODES,
    EPSILON_KEY,
    LOSS_KEY,
    METRICS_KEY,
    PRIVACY_KEY,
    QUARANTINED_KEY,
    SSE_KEY,
    STATS_KEY,
    SUM_Y2_KEY,
    SUM_Y_KEY,
    TRAIN_LOSS_KEY,
    WEIGHT_KEY,
    Decline,
)
from astroscale_fl.federation.records import array_view, arrays_to_numpy, record_nbytes
from astroscale_fl.preprocessing import ColumnStatistics
from astroscale_fl.privacy.card import entry_from_record

CentralEval = Callable[[ArrayRecord], tuple[float, float]]  # arrays -> (rmse, r2)
POLL_SECONDS = 0.2


class FederationError(AstroScaleError):
    """The federation cannot proceed (no nodes, every node failed)."""


@dataclass
class RoundPolicy:
    """How a round treats replies."""

    timeout: float = 600.0
    min_replies: int = 1
    max_update_norm: float | None = None
    evaluate_in_train: bool = True  # fold round r's evaluation into round r+1's training messages


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """Wait until ``count`` nodes are connected; return their ids."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of federation.num_nodes={count} nodes connected within {timeout:.0f} s")
        time.sleep(0.5)
    return nodes


def send_and_receive(grid: Grid, messages: Iterable[Message], timeout: float, poll: float = POLL_SECONDS) -> tuple[list[Message], list[int]]:
    """Push ``messages`` and collect replies until all came, ``timeout`` passed, or the missing
    nodes left the federation. Returns (replies sorted by node id, node ids that never replied)."""
    messages = list(messages)
    if not messages:
        return [], []
    if not getattr(grid, "in_process", False):  # through a real transport: one Array per message
        messages = [packed_message(m) for m in messages]
    ids = list(grid.push_messages(messages))
    sent = {mid: m for mid, m in zip(ids, messages) if mid}
    pending = {mid: m.metadata.dst_node_id for mid, m in sent.items()}
    missing = [m.metadata.dst_node_id for mid, m in zip(ids, messages) if not mid]
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    last_node_check = time.monotonic()
    while pending:
        got = [unpack_reply(r, sent[r.metadata.reply_to_message_id]) if r.metadata.reply_to_message_id in sent else r
               for r in grid.pull_messages(list(pending))]
        for reply in got:
            pending.pop(reply.metadata.reply_to_message_id, None)
        replies.extend(got)
        if not pending:
            break
        now = time.monotonic()
        if now >= deadline:
            break
        if now - last_node_check > 5.0:  # nodes that left (deactivated or expired heartbeat) will never reply
            last_node_check = now
            online = set(grid.get_node_ids())
            for mid, node in list(pending.items()):
                if node not in online:
                    log(WARNING, "node %s left the federation; not waiting for its reply", node)
                    pending.pop(mid)
                    missing.append(node)
        time.sleep(min(poll, max(0.0, deadline - now)))
    missing.extend(pending.values())
    replies.sort(key=lambda r: (r.metadata.src_node_id, r.metadata.message_id))
    return replies, sorted(missing)


def federated_statistics(grid: Grid, node_ids: list[int], config: ConfigRecord, timeout: float,
                         privacy_entries: list | None = None) -> ColumnStatistics:
    """Statistics round: every node sends column statistics of its rows; merge them.
    ``privacy_entries`` (if given) receives the ledger record of each DP statistics reply."""
    messages = [Message(RecordDict({CONFIG_KEY: config}), message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    replies, missing = send_and_receive(grid, messages, timeout)
    parts = []
    for node in missing:
        log(INFO, "statistics round: node %s did not reply within %.0f s", node, timeout)
    for reply in replies:
        if reply.has_error():
            log(INFO, "statistics round: node %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        columns = list(reply.content[COLUMNS_KEY][COLUMN_NAMES_KEY])
        if parts and columns != parts[0][0]:
            raise FederationError(f"statistics round: node {reply.metadata.src_node_id} sent columns {columns}, "
                                  f"expected {parts[0][0]}")
        parts.append((columns, dict(arrays_to_numpy(reply.content[STATS_KEY]))))
        metrics = reply.content.metric_records.get(METRICS_KEY)
        quarantined = int(metrics.get(QUARANTINED_KEY, 0)) if metrics is not None else 0
        if quarantined:
            log(INFO, "statistics round: node %s quarantined %d rows failing validation", reply.metadata.src_node_id, quarantined)
        if privacy_entries is not None and PRIVACY_KEY in reply.content.config_records:
            privacy_entries.append(entry_from_record(reply.content[PRIVACY_KEY]))
    if not parts:
        reasons = "; ".join(r.error.reason for r in replies if r.has_error())[:500]
        raise FederationError(f"statistics round: no node replied ({reasons or 'timeout'})")
    return ColumnStatistics.merge_arrays(parts[0][0], [arrays for _, arrays in parts])


def check_reply(content: RecordDict, global_arrays: dict[str, np.ndarray], max_update_norm: float | None) -> str | None:
    """Why a training reply's content must not be aggregated, or None when it is fine.

    Arrays are read in place (no copies): a round checks every reply."""
    views = {}
    for rec_name, record in content.array_records.items():
        for name, array in record.items():
            views[rec_name, name] = values = array_view(array)
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                return f"non-finite values in {rec_name}/{name}"
    for rec_name, record in content.metric_records.items():
        for name, value in record.items():
            if isinstance(value, float):
                if not math.isfinite(value):
                    return f"non-finite metric {rec_name}/{name}"
            elif isinstance(value, list) and any(isinstance(v, float) and not math.isfinite(v) for v in value):
                return f"non-finite metric {rec_name}/{name}"
    if ARRAYS_KEY not in content.array_records:
        return f"no {ARRAYS_KEY!r} ArrayRecord"
    model = content.array_records[ARRAYS_KEY]
    if model.keys() != global_arrays.keys():
        return "model arrays do not match the global model's"
    squared = 0.0
    for name in model:
        values = views[ARRAYS_KEY, name]
        if values.shape != global_arrays[name].shape:
            return f"array {name} has shape {values.shape}, expected {global_arrays[name].shape}"
        if max_update_norm is not None:
            squared += float(np.sum((values.astype(np.float64) - global_arrays[name].astype(np.float64)) ** 2))
    if max_update_norm is not None and math.sqrt(squared) > max_update_norm:
        return f"update norm {math.sqrt(squared):.3g} > federation.max_update_norm={max_update_norm:g}"
    return None


@dataclass
class SortedReplies:
    """A training round's replies, sorted: accepted for aggregation, declined, rejected, failed."""

    accepted: list[Message] = field(default_factory=list)
    declines: list[Decline] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)  # why each rejected reply was not aggregated
    failed: int = 0  # error replies and nodes that never replied
    bytes_up: int = 0


@dataclass
class RoundOutcome:
    """What one round produced: the history row and what ``history.csv`` does not hold."""

    record: RoundRecord
    replies: list[Message]  # accepted training replies (aggregated)
    declines: list[Decline]  # nodes that declined (privacy budget spent)
    privacy_entries: list[dict]  # model-card entries of the DP replies
    rejections: list[str]  # reasons of the replies not aggregated
    node_evaluations: list[NodeRecord] = field(default_factory=list)  # history_nodes.csv rows of this round

    @property
    def bytes_down(self) -> int:
        return self.record.bytes_down

    @property
    def bytes_up(self) -> int:
        return self.record.bytes_up

    @property
    def max_epsilon(self) -> float | None:
        """Largest lifetime ε a training node reported this round (None without DP)."""
        return self.record.max_epsilon if math.isfinite(self.record.max_epsilon) else None


def sort_replies(server_round: int, replies: list[Message], missing: list[int], global_arrays: dict[str, np.ndarray],
                 policy: RoundPolicy) -> SortedReplies:
    """Sort training replies into accepted / declined / failed / rejected, logging each that is not accepted."""
    out = SortedReplies(failed=len(missing))
    for node in missing:
        log(WARNING, "round %d: node %s did not reply within %.0f s", server_round, node, policy.timeout)
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error() and reply.error.code in DECLINE_CODES:
            decline = replace(Decline.from_reason(reply.error.reason), code=int(reply.error.code))
            out.declines.append(decline)
            log(INFO, "round %d: node %s declined: %s", server_round, node, decline)
        elif reply.has_error():
            out.failed += 1
            log(WARNING, "round %d: node %s failed: %s", server_round, node, reply.error.reason)
        else:
            out.bytes_up += record_nbytes(reply.content)
            reason = check_reply(reply.content, global_arrays, policy.max_update_norm)
            if reason is None:
                out.accepted.append(reply)
            else:
                out.rejections.append(reason)
                log(WARNING, "round %d: reply of node %s rejected: %s", server_round, node, reason)
    return out


def train_phase(strategy: Strategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                policy: RoundPolicy, fold: FoldedEvaluation | None = None) -> tuple[ArrayRecord, RoundOutcome]:
    """configure_train -> send and receive -> sort replies -> aggregate_train; the new arrays.

    ``fold``: the previous round's evaluation, sent with (and taken out of) this round's messages."""
    row = RoundRecord(round=server_round)
    global_np = dict(arrays_to_numpy(arrays))
    train_msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid))
    row.nodes_sampled = len(train_msgs)
    row.bytes_down += sum(record_nbytes(m.content) for m in train_msgs)
    if fold is None:
        replies, missing = send_and_receive(grid, train_msgs, policy.timeout)
    else:
        replies, missing = fold.split(*send_and_receive(grid, fold.attach(train_msgs), policy.timeout))
    sorted_ = sort_replies(server_round, replies, missing, global_np, policy)
    row.nodes_replied, row.nodes_failed, row.nodes_declined = len(sorted_.accepted), sorted_.failed, len(sorted_.declines)
    row.bytes_up = sorted_.bytes_up
    if len(sorted_.accepted) < max(1, policy.min_replies):
        raise FederationError(
            f"round {server_round}: {len(sorted_.accepted)} valid replies, fewer than federation.min_replies={policy.min_replies} "
            f"({sorted_.failed} failed, {len(sorted_.declines)} declined, {len(sorted_.rejections)} rejected of {len(train_msgs)} sampled)")
    new_arrays, train_metrics = strategy.aggregate_train(server_round, sorted_.accepted)
    if new_arrays is None:
        raise FederationError(f"round {server_round}: no node returned a model ({row.nodes_failed} failed)")
    if train_metrics is not None and TRAIN_LOSS_KEY in train_metrics:
        row.train_loss = float(train_metrics[TRAIN_LOSS_KEY])
    metric_records = [r.content[METRICS_KEY] for r in sorted_.accepted if METRICS_KEY in r.content.metric_records]
    epsilons = [float(m[EPSILON_KEY]) for m in metric_records if EPSILON_KEY in m]
    row.max_epsilon = max(epsilons) if epsilons else float("nan")
    entries = [entry_from_record(r.content[PRIVACY_KEY]) for r in sorted_.accepted if PRIVACY_KEY in r.content.config_records]
    return new_arrays, RoundOutcome(row, sorted_.accepted, sorted_.declines, entries, sorted_.rejections)


def evaluate_phase(strategy: Strategy, grid: Grid, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                   policy: RoundPolicy, row: RoundRecord, central_eval: CentralEval | None,
                   eval_msgs: list[Message] | None = None) -> list[NodeRecord]:
    """Federated evaluation (configure_evaluate -> send and receive -> aggregate_evaluate), then
    centralized evaluation; fills ``row``'s evaluation columns and bytes down; each node's evaluation."""
    if eval_msgs is None:
        eval_msgs = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid))
    row.bytes_down += sum(record_nbytes(m.content) for m in eval_msgs)
    eval_replies, eval_missing = send_and_receive(grid, eval_msgs, policy.timeout)
    nodes = record_evaluation(strategy, server_round, eval_replies, eval_missing, policy, row)
    if central_eval is not None:
        row.test_rmse, row.test_r2 = central_eval(arrays)
    return nodes


def record_evaluation(strategy: Strategy, server_round: int, eval_replies: list[Message], eval_missing: list[int],
                      policy: RoundPolicy, row: RoundRecord, nodes: list[int] | None = None) -> list[NodeRecord]:
    """Log the evaluations that failed or never came; aggregate the others into ``row``; each node's
    evaluation. ``nodes``: the node of each reply, where it is not the reply's sender (folded results)."""
    nodes = nodes if nodes is not None else [r.metadata.src_node_id for r in eval_replies]
    for node, reply in zip(nodes, eval_replies):
        if reply.has_error():
            log(WARNING, "round %d: evaluation on node %s failed: %s", server_round, node, reply.error.reason)
    for node in eval_missing:
        log(WARNING, "round %d: node %s did not evaluate within %.0f s", server_round, node, policy.timeout)
    eval_metrics = strategy.aggregate_evaluate(server_round, eval_replies)
    if eval_metrics is not None:
        row.eval_loss, row.eval_rmse, row.eval_r2 = (float(eval_metrics[k]) for k in ("loss", "rmse", "r2"))
    return [node_evaluation(server_round, node, r) for node, r in zip(nodes, eval_replies)
            if not r.has_error() and METRICS_KEY in r.content.metric_records]


def node_evaluation(server_round: int, node: int, reply: Message) -> NodeRecord:
    """One node's loss, RMSE and R² on its validation rows, from the sums its evaluation reply carries."""
    metrics = reply.content[METRICS_KEY]
    n, sse = float(metrics[WEIGHT_KEY]), float(metrics[SSE_KEY])
    ss_tot = float(metrics[SUM_Y2_KEY]) - float(metrics[SUM_Y_KEY]) ** 2 / n if n else 0.0
    return NodeRecord(server_round, int(node), int(n), float(metrics[LOSS_KEY]),
                      math.sqrt(sse / n) if n else math.nan, 1.0 - sse / ss_tot if ss_tot > 0 else math.nan)


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    num_rounds: int,
    config: ConfigRecord,
    central_eval: CentralEval | None,
    timeout: float | None = None,
    on_round: Callable[[RoundOutcome, ArrayRecord], None] | None = None,
    show_progress: bool = True,
    policy: RoundPolicy | None = None,
    start_round: int = 1,
    metrics=None,
    stop: Callable[[], str | None] | None = None,
) -> tuple[ArrayRecord, list[RoundOutcome]]:
    """Run rounds ``start_round .. num_rounds`` of ``strategy``; return the final arrays and each round's outcome.

    Each round is :func:`train_phase` then :func:`evaluate_phase`; with ``policy.evaluate_in_train``
    a round's evaluation is folded into the next round's :func:`train_phase` (one message per node
    and round) and its outcome completes then. ``metrics`` (an
    :class:`astroscale_fl.federation.observability.RunMetrics`) is updated as rounds go;
    ``on_round(outcome, arrays)`` runs after each completed round (checkpoints, history.csv).
    ``stop()`` (early stopping) is asked after each completed round: a reason ends the run there. With
    ``policy.evaluate_in_train`` round r's evaluation completes inside round r+1, whose training has then
    already happened: that round is evaluated on its own and completed, and the run ends after it.
    """
    policy = policy or RoundPolicy(timeout=600.0 if timeout is None else timeout)
    outcomes: list[RoundOutcome] = []
    progress = Progress(
        TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), disable=not show_progress,
    )
    with progress:
        task = progress.add_task("rounds", total=num_rounds, completed=start_round - 1, status="")

        def complete(outcome: RoundOutcome, round_arrays: ArrayRecord) -> None:
            row = outcome.record
            outcomes.append(outcome)
            if metrics is not None:
                metrics.round_finished(row, declined=len(outcome.declines), rejected=len(outcome.rejections),
                                       epsilon=outcome.max_epsilon)
            if on_round is not None:
                on_round(outcome, round_arrays)
            detail = f"ε={row.max_epsilon:.2f}" if math.isfinite(row.max_epsilon) else f"loss={row.train_loss:.4f}"
            progress.update(task, advance=1, status=f"test R²={row.test_r2:.4f} {detail}")

        def stopped() -> bool:
            reason = stop() if stop is not None else None
            if reason:
                log(INFO, "%s", reason)
                progress.update(task, status=reason)
            return bool(reason)

        pending: tuple[RoundOutcome, ArrayRecord, FoldedEvaluation] | None = None  # evaluated by the next round's messages
        for server_round in range(start_round, num_rounds + 1):
            if stopped():  # a resumed run whose patience had already run out
                break
            if metrics is not None:
                metrics.round_started(server_round)
            start = time.perf_counter()
            fold = pending[2] if pending is not None else None
            arrays, outcome = train_phase(strategy, grid, server_round, arrays, config, policy, fold)
            if pending is not None:
                done, done_arrays, _ = pending
                eval_replies, eval_missing = fold.finish(lambda msgs: send_and_receive(grid, msgs, policy.timeout))
                done.record.bytes_down += fold.bytes_down
                done.node_evaluations = record_evaluation(strategy, done.record.round, eval_replies, eval_missing, policy, done.record,
                                                          fold.result_nodes)
                complete(done, done_arrays)
                pending = None
                if metrics is not None:
                    metrics.round_started(server_round)  # the completed round set the gauge back to its number
                if stop is not None and stop():  # this round already trained: evaluate it on its own and end
                    outcome.node_evaluations = evaluate_phase(strategy, grid, server_round, arrays, config, policy, outcome.record, central_eval)
                    outcome.record.wall_seconds = time.perf_counter() - start
                    complete(outcome, arrays)
                    stopped()
                    break
            row = outcome.record
            if policy.evaluate_in_train and server_round < num_rounds:
                eval_msgs = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid))
                if eval_msgs:
                    if central_eval is not None:
                        row.test_rmse, row.test_r2 = central_eval(arrays)
                    row.wall_seconds = time.perf_counter() - start
                    pending = (outcome, arrays, FoldedEvaluation(eval_msgs, server_round))
                    continue
                outcome.node_evaluations = evaluate_phase(strategy, grid, server_round, arrays, config, policy, row, central_eval,
                                                          eval_msgs)
            else:
                outcome.node_evaluations = evaluate_phase(strategy, grid, server_round, arrays, config, policy, row, central_eval)
            row.wall_seconds = time.perf_counter() - start
            complete(outcome, arrays)
    return arrays, outcomes
