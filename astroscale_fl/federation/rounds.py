"""The server's round loop: statistics round, then train / evaluate rounds with a history.

This mirrors ``Strategy.start`` of Flower's Message API (configure -> send and receive ->
aggregate, for training then evaluation, then centralized evaluation) and adds what a
survey centre needs: per-round wall time, nodes sampled / replied / failed / declined, bytes
each way, Prometheus metrics, a checkpoint hook, and resilience:

- replies are awaited with a timeout (``federation.round_timeout``), polling the SuperLink
  every 0.2 s instead of Flower's 3 s; a node that leaves the federation is not waited for;
- a reply that is an error or never arrives counts as *failed*; a node that refuses the round
  (DP: its privacy budget is spent, ``BUDGET_EXCEEDED_CODE``) counts as *declined*; a reply with
  non-finite values or an update norm beyond ``federation.max_update_norm`` is *rejected*
  (counted, logged, never aggregated);
- a round aggregates when at least ``federation.min_replies`` valid replies arrived.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from astroscale_fl.errors import AstroScaleError
from astroscale_fl.federation.records import record_nbytes
from astroscale_fl.history import RoundRecord
from astroscale_fl.privacy.card import REPLY_KEY as PRIVACY_KEY
from astroscale_fl.privacy.card import entry_from_record
from astroscale_fl.statistics import ColumnStatistics

CentralEval = Callable[[ArrayRecord], tuple[float, float]]  # arrays -> (rmse, r2)
POLL_SECONDS = 0.2
MODEL_RECORD = "arrays"  # the ArrayRecord holding a reply's model (strategies.fedavg.ARRAYS_KEY)


class FederationError(AstroScaleError):
    """The federation cannot proceed (no nodes, every node failed)."""


@dataclass
class RoundPolicy:
    """How a round treats replies."""

    timeout: float = 600.0
    min_replies: int = 1
    max_update_norm: float | None = None


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
    ids = list(grid.push_messages(messages))
    pending = {mid: m.metadata.dst_node_id for mid, m in zip(ids, messages) if mid}
    missing = [m.metadata.dst_node_id for mid, m in zip(ids, messages) if not mid]
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    last_node_check = time.monotonic()
    while pending:
        got = list(grid.pull_messages(list(pending)))
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
    messages = [Message(RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    replies, missing = send_and_receive(grid, messages, timeout)
    parts = []
    for node in missing:
        log(INFO, "statistics round: node %s did not reply within %.0f s", node, timeout)
    for reply in replies:
        if reply.has_error():
            log(INFO, "statistics round: node %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        columns = list(reply.content["columns"]["names"])
        arrays = {k: v.numpy() for k, v in reply.content["stats"].items()}
        parts.append(ColumnStatistics.from_arrays(columns, arrays))
        if privacy_entries is not None and PRIVACY_KEY in reply.content.config_records:
            privacy_entries.append(entry_from_record(reply.content[PRIVACY_KEY]))
    if not parts:
        reasons = "; ".join(r.error.reason for r in replies if r.has_error())[:500]
        raise FederationError(f"statistics round: no node replied ({reasons or 'timeout'})")
    return ColumnStatistics.merge(parts)


def check_reply(content: RecordDict, global_arrays: dict[str, np.ndarray], max_update_norm: float | None) -> str | None:
    """Why a training reply's content must not be aggregated, or None when it is fine."""
    for rec_name, record in content.array_records.items():
        for name, array in record.items():
            values = array.numpy()
            if values.dtype.kind in "fc" and not np.isfinite(values).all():
                return f"non-finite values in {rec_name}/{name}"
    for rec_name, record in content.metric_records.items():
        for name, value in record.items():
            items = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in items):
                return f"non-finite metric {rec_name}/{name}"
    if MODEL_RECORD not in content.array_records:
        return f"no {MODEL_RECORD!r} ArrayRecord"
    model = content.array_records[MODEL_RECORD]
    if set(model.keys()) != set(global_arrays):
        return "model arrays do not match the global model's"
    squared = 0.0
    for name, array in model.items():
        values = array.numpy()
        if values.shape != global_arrays[name].shape:
            return f"array {name} has shape {values.shape}, expected {global_arrays[name].shape}"
        if max_update_norm is not None:
            squared += float(np.sum((values.astype(np.float64) - global_arrays[name].astype(np.float64)) ** 2))
    if max_update_norm is not None and math.sqrt(squared) > max_update_norm:
        return f"update norm {math.sqrt(squared):.3g} > federation.max_update_norm={max_update_norm:g}"
    return None


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    num_rounds: int,
    config: ConfigRecord,
    central_eval: CentralEval | None,
    timeout: float | None = None,
    on_round: Callable[[RoundRecord, ArrayRecord], None] | None = None,
    show_progress: bool = True,
    policy: RoundPolicy | None = None,
    start_round: int = 1,
    metrics=None,
) -> tuple[ArrayRecord, list[RoundRecord]]:
    """Run rounds ``start_round .. num_rounds`` of ``strategy``; return the final arrays and their history.

    ``metrics`` (an :class:`astroscale_fl.observability.RunMetrics`) is updated as rounds go;
    ``on_round(row, arrays)`` runs after each completed round (checkpoints, history.csv).
    """
    policy = policy or RoundPolicy(timeout=600.0 if timeout is None else timeout)
    history: list[RoundRecord] = []
    progress = Progress(
        TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), disable=not show_progress,
    )
    with progress:
        task = progress.add_task("rounds", total=num_rounds, completed=start_round - 1, status="")
        for server_round in range(start_round, num_rounds + 1):
            if metrics is not None:
                metrics.round_started(server_round)
            start = time.perf_counter()
            row = RoundRecord(round=server_round)
            global_np = {k: v.numpy() for k, v in arrays.items()}
            train_msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid))
            row.nodes_sampled = len(train_msgs)
            row.bytes_down += sum(record_nbytes(m.content) for m in train_msgs)
            replies, missing = send_and_receive(grid, train_msgs, policy.timeout)
            for node in missing:
                log(WARNING, "round %d: node %s did not reply within %.0f s", server_round, node, policy.timeout)
            accepted, declined, rejected, failed = [], 0, 0, len(missing)
            row.declines = []  # (round, reason) of nodes that declined: their budget is spent
            for reply in replies:
                if reply.has_error() and reply.error.code == _budget_code():
                    declined += 1
                    row.declines.append(reply.error.reason)
                    log(INFO, "round %d: node %s declined: %s", server_round, reply.metadata.src_node_id, reply.error.reason)
                    continue
                if reply.has_error():
                    failed += 1
                    log(WARNING, "round %d: node %s failed: %s", server_round, reply.metadata.src_node_id, reply.error.reason)
                    continue
                row.bytes_up += record_nbytes(reply.content)
                reason = check_reply(reply.content, global_np, policy.max_update_norm)
                if reason is not None:
                    rejected += 1
                    log(WARNING, "round %d: reply of node %s rejected: %s", server_round, reply.metadata.src_node_id, reason)
                    continue
                accepted.append(reply)
            row.nodes_replied, row.nodes_failed = len(accepted), failed
            row.nodes_declined, row.nodes_rejected = declined, rejected  # rejected: metrics.json and /metrics only
            if len(accepted) < max(1, policy.min_replies):
                raise FederationError(
                    f"round {server_round}: {len(accepted)} valid replies, fewer than federation.min_replies={policy.min_replies} "
                    f"({failed} failed, {declined} declined, {rejected} rejected of {len(train_msgs)} sampled)")
            new_arrays, train_metrics = strategy.aggregate_train(server_round, accepted)
            if new_arrays is None:
                raise FederationError(f"round {server_round}: no node returned a model ({row.nodes_failed} failed)")
            arrays = new_arrays
            if train_metrics is not None and "train_loss" in train_metrics:
                row.train_loss = float(train_metrics["train_loss"])
            epsilons = [float(r.content["metrics"]["epsilon"]) for r in accepted
                        if "metrics" in r.content.metric_records and "epsilon" in r.content["metrics"]]
            row.max_epsilon = max(epsilons) if epsilons else float("nan")
            row.privacy_entries = [entry_from_record(r.content[PRIVACY_KEY]) for r in accepted
                                   if PRIVACY_KEY in r.content.config_records]

            eval_msgs = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid))
            row.bytes_down += sum(record_nbytes(m.content) for m in eval_msgs)
            eval_replies, eval_missing = send_and_receive(grid, eval_msgs, policy.timeout)
            for reply in eval_replies:
                if reply.has_error():
                    log(WARNING, "round %d: evaluation on node %s failed: %s", server_round, reply.metadata.src_node_id, reply.error.reason)
            for node in eval_missing:
                log(WARNING, "round %d: node %s did not evaluate within %.0f s", server_round, node, policy.timeout)
            eval_metrics = strategy.aggregate_evaluate(server_round, eval_replies)
            if eval_metrics is not None:
                row.eval_loss, row.eval_rmse, row.eval_r2 = (float(eval_metrics[k]) for k in ("loss", "rmse", "r2"))
            if central_eval is not None:
                row.test_rmse, row.test_r2 = central_eval(arrays)
            row.wall_seconds = time.perf_counter() - start
            history.append(row)
            if metrics is not None:
                metrics.round_finished(row, declined=declined, rejected=rejected, epsilon=max(epsilons) if epsilons else None)
            if on_round is not None:
                on_round(row, arrays)
            detail = f"ε={row.max_epsilon:.2f}" if math.isfinite(row.max_epsilon) else f"loss={row.train_loss:.4f}"
            progress.update(task, advance=1, status=f"test R²={row.test_r2:.4f} {detail}")
    return arrays, history


def _budget_code() -> int:
    """``Error.code`` of a node declining a round (privacy budget spent)."""
    try:
        from astroscale_fl.privacy import BUDGET_EXCEEDED_CODE
    except ImportError:  # privacy package absent
        return -1
    return int(BUDGET_EXCEEDED_CODE)
