"""The server's round loop: statistics round, then train / evaluate rounds with a history.

This mirrors ``Strategy.start`` of Flower's Message API (configure -> send and receive ->
aggregate, for training then evaluation, then centralized evaluation) and adds what a
survey centre needs to see: per-round wall time, nodes sampled / replied / failed, bytes
each way, and a progress bar.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from astroscale_fl.errors import AstroScaleError
from astroscale_fl.federation.records import record_nbytes
from astroscale_fl.history import RoundRecord
from astroscale_fl.statistics import ColumnStatistics

CentralEval = Callable[[ArrayRecord], tuple[float, float]]  # arrays -> (rmse, r2)


class FederationError(AstroScaleError):
    """The federation cannot proceed (no nodes, every node failed)."""


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """Wait until ``count`` nodes are connected; return their ids."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise FederationError(f"only {len(nodes)} of federation.num_nodes={count} nodes connected within {timeout:.0f} s")
        time.sleep(0.5)
    return nodes


def federated_statistics(grid: Grid, node_ids: list[int], config: ConfigRecord, timeout: float) -> ColumnStatistics:
    """Statistics round: every node sends column statistics of its rows; merge them."""
    messages = [Message(RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=n) for n in node_ids]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    parts = []
    for reply in replies:
        if reply.has_error():
            log(INFO, "statistics round: node %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        columns = list(reply.content["columns"]["names"])
        arrays = {k: v.numpy() for k, v in reply.content["stats"].items()}
        parts.append(ColumnStatistics.from_arrays(columns, arrays))
    if not parts:
        reasons = "; ".join(r.error.reason for r in replies if r.has_error())[:500]
        raise FederationError(f"statistics round: no node replied ({reasons or 'timeout'})")
    return ColumnStatistics.merge(parts)


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    num_rounds: int,
    config: ConfigRecord,
    central_eval: CentralEval | None,
    timeout: float,
    on_round: Callable[[RoundRecord, ArrayRecord], None] | None = None,
    show_progress: bool = True,
) -> tuple[ArrayRecord, list[RoundRecord]]:
    """Run ``num_rounds`` rounds of ``strategy``; return the final arrays and the history."""
    history: list[RoundRecord] = []
    progress = Progress(
        TextColumn("[bold]federated rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), disable=not show_progress,
    )
    with progress:
        task = progress.add_task("rounds", total=num_rounds, status="")
        for server_round in range(1, num_rounds + 1):
            start = time.perf_counter()
            row = RoundRecord(round=server_round)
            train_msgs = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid))
            row.nodes_sampled = len(train_msgs)
            row.bytes_down += sum(record_nbytes(m.content) for m in train_msgs)
            replies = list(grid.send_and_receive(train_msgs, timeout=timeout))
            ok = [r for r in replies if not r.has_error()]
            row.nodes_replied, row.nodes_failed = len(ok), len(train_msgs) - len(ok)
            for reply in replies:
                if reply.has_error():
                    log(INFO, "round %d: node %s failed: %s", server_round, reply.metadata.src_node_id, reply.error.reason)
            row.bytes_up += sum(record_nbytes(r.content) for r in ok)
            new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
            if new_arrays is None:
                raise FederationError(f"round {server_round}: no node returned a model ({row.nodes_failed} failed)")
            arrays = new_arrays
            if train_metrics is not None and "train_loss" in train_metrics:
                row.train_loss = float(train_metrics["train_loss"])

            eval_msgs = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(config)), grid))
            row.bytes_down += sum(record_nbytes(m.content) for m in eval_msgs)
            eval_metrics = strategy.aggregate_evaluate(server_round, list(grid.send_and_receive(eval_msgs, timeout=timeout)))
            if eval_metrics is not None:
                row.eval_loss, row.eval_rmse, row.eval_r2 = (float(eval_metrics[k]) for k in ("loss", "rmse", "r2"))
            if central_eval is not None:
                row.test_rmse, row.test_r2 = central_eval(arrays)
            row.wall_seconds = time.perf_counter() - start
            history.append(row)
            if on_round is not None:
                on_round(row, arrays)
            progress.update(task, advance=1, status=f"test R²={row.test_r2:.4f} loss={row.train_loss:.4f}")
    return arrays, history
