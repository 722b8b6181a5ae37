"""Per-round history of a run, written as ``history.csv`` (atomically, after every round), and
each node's validation metrics per round, ``history_nodes.csv``."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from astroscale_fl.atomic import write_text


@dataclass
class RoundRecord:
    """One federated round as the server saw it."""

    round: int
    train_loss: float = math.nan  # example-weighted mean of the nodes' local training loss
    eval_loss: float = math.nan  # federated evaluation on the nodes' local validation rows
    eval_rmse: float = math.nan
    eval_r2: float = math.nan
    test_rmse: float = math.nan  # centralized evaluation on the held-out test split
    test_r2: float = math.nan
    wall_seconds: float = math.nan
    nodes_sampled: int = 0
    nodes_replied: int = 0
    nodes_failed: int = 0
    nodes_declined: int = 0  # declined to train (privacy budget spent)
    max_epsilon: float = math.nan  # largest lifetime ε any training node reported (DP runs)
    bytes_down: int = 0  # array payload sent to nodes (train + evaluate)
    bytes_up: int = 0  # array payload received from nodes


COLUMNS = [f.name for f in fields(RoundRecord)]


@dataclass
class NodeRecord:
    """One node's evaluation of a round's global model on its local validation rows."""

    round: int
    node: int  # the node id the server addressed
    rows: int
    loss: float
    rmse: float
    r2: float


NODE_COLUMNS = [f.name for f in fields(NodeRecord)]


def write_history(path: str | Path, rows: list[RoundRecord] | list[NodeRecord], columns: list[str] = COLUMNS) -> None:
    """Write rows as CSV (header always present), atomically: ``columns`` is ``NODE_COLUMNS`` for :class:`NodeRecord` rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(row).items()})
    write_text(path, buffer.getvalue())
