"""Hold out the test rows, then split the training rows among federation nodes.

Both steps are deterministic for a seed and defined by row id (the ``id`` column): a row is a
test row by its id (:mod:`astroscale_fl.data.holdout`), and the
``iid`` partition deals rows out in the order of another seeded hash of their ids, so neither
depends on the order rows were read in. The held-out test rows are never given to a node; the
server evaluates the global model on them after every round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from astroscale_fl.data.holdout import hash_unit, is_test_row, row_ids
from astroscale_fl.errors import ConfigError, DataError, short_list

SURVEY_COLUMN = "survey"  # the column that names a row's survey (partition=by_survey)

@dataclass(frozen=True)
class PartitionColumns:
    """Which task columns the geometric and label partitions use."""

    dec: str | None = None
    dec_unit: str = "deg"
    magnitude: str | None = None
    target: str | None = None


def train_test_split(frame: pd.DataFrame, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows at random into (train, test) with ``test_fraction`` of them held out."""
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"task.test_fraction: expected a number in (0, 1), got {test_fraction}")
    is_test = is_test_row(row_ids(frame), seed, test_fraction)
    return frame.loc[~is_test].reset_index(drop=True), frame.loc[is_test].reset_index(drop=True)


def assign_iid(frame: pd.DataFrame, num_nodes: int, seed: int, columns: PartitionColumns, **_) -> np.ndarray:
    """Node index per row: rows in the order of a seeded hash of their ids, dealt out in equal shares."""
    nodes = np.empty(len(frame), dtype=np.int64)
    nodes[np.argsort(hash_unit(row_ids(frame), seed, 0x11D), kind="stable")] = np.arange(len(frame)) % num_nodes
    return nodes


def assign_sky(frame: pd.DataFrame, num_nodes: int, seed: int, columns: PartitionColumns, **_) -> np.ndarray:
    """Node index per row: disjoint declination bands of equal sky area, as survey footprints.

    Bands are equal in ``sin(dec)``, so each node owns the same solid angle (and the node
    sizes differ as the stars' distribution on the sky does).
    """
    dec = _column(frame, columns.dec, "sky", "task.dec_column")
    dec_rad = dec if columns.dec_unit == "rad" else np.radians(dec)
    edges = np.linspace(-1.0, 1.0, num_nodes + 1)
    return np.clip(np.searchsorted(edges, np.sin(dec_rad), side="right") - 1, 0, num_nodes - 1)


def assign_depth(frame: pd.DataFrame, num_nodes: int, seed: int, columns: PartitionColumns, **_) -> np.ndarray:
    """Node index per row: equal-count apparent-magnitude bands, node 0 the brightest (shallow)."""
    mag = _column(frame, columns.magnitude, "depth", "task.magnitude_column")
    ranks = np.argsort(np.argsort(mag, kind="stable"), kind="stable")
    return (ranks * num_nodes) // max(len(frame), 1)


def assign_dirichlet(frame: pd.DataFrame, num_nodes: int, seed: int, columns: PartitionColumns,
                     alpha: float = 0.5, bins: int = 10, **_) -> np.ndarray:
    """Label skew: rows binned by target quantile; each bin's rows go to nodes in Dirichlet(alpha) shares.

    Small ``alpha`` gives each node a few target ranges; large ``alpha`` tends to IID.
    """
    target = _column(frame, columns.target, "dirichlet", "task.target")
    rng = np.random.default_rng([seed, 0xD12])
    edges = np.quantile(target, np.linspace(0, 1, bins + 1)[1:-1])
    bin_of = np.searchsorted(edges, target, side="right")
    nodes = np.empty(len(frame), dtype=np.int64)
    for b in range(bins):
        rows = np.flatnonzero(bin_of == b)
        rng.shuffle(rows)
        shares = rng.dirichlet(np.full(num_nodes, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(np.int64)
        for node, part in enumerate(np.split(rows, cuts)):
            nodes[part] = node
    return nodes


def assign_by_column(frame: pd.DataFrame, num_nodes: int, seed: int, columns: PartitionColumns,
                     column: str = "", **_) -> np.ndarray:
    """Node index per row from a column's value: node k owns the k-th of the sorted distinct values."""
    if column not in frame.columns:
        raise ConfigError(f"partition.column: {column!r} is not a column of the task data; columns are {list(frame.columns)}")
    values = frame[column].astype(str).to_numpy()
    distinct, nodes = np.unique(values, return_inverse=True)
    if len(distinct) != num_nodes:
        raise ConfigError(
            f"partition=by_column: column {column!r} has {len(distinct)} distinct values {list(distinct)[:10]}; "
            f"set federation.num_nodes={len(distinct)}"
        )
    return nodes.astype(np.int64)


def assign_by_survey(frame: pd.DataFrame, num_nodes: int, seed: int, columns: PartitionColumns, **_) -> np.ndarray:
    """One node per survey: ``by_column`` on the task's ``survey`` column."""
    return assign_by_column(frame, num_nodes, seed, columns, column=SURVEY_COLUMN)


def partition_column(partition_cfg) -> str | None:
    """The column whose values name the nodes: ``partition.column`` for ``by_column``,
    ``survey`` for ``by_survey``; None for the other partitions."""
    return {"by_column": partition_cfg.get("column"), "by_survey": SURVEY_COLUMN}.get(partition_cfg.name)


def node_names(frame: pd.DataFrame, partition_cfg, num_nodes: int) -> list[str]:
    """Readable node names: the partition column's values (``by_column``, ``by_survey``), else ``node-<k>``."""
    column = partition_column(partition_cfg)
    if column and column in frame.columns:
        return [str(v) for v in np.unique(frame[column].astype(str).to_numpy())]
    return [f"node-{k}" for k in range(num_nodes)]


def _column(frame: pd.DataFrame, name: str | None, partition: str, key: str) -> np.ndarray:
    if not name or name not in frame.columns:
        raise ConfigError(f"partition={partition} needs a column for it in the task data; set {key} (got {name!r})")
    return frame[name].to_numpy(dtype=np.float64)


PARTITIONERS = {"iid": assign_iid, "sky": assign_sky, "depth": assign_depth, "dirichlet": assign_dirichlet, "by_column": assign_by_column,
               "by_survey": assign_by_survey}


def assign_nodes(frame: pd.DataFrame, partition_cfg, num_nodes: int, seed: int, columns: PartitionColumns | None = None) -> np.ndarray:
    """Node index (0..num_nodes-1) for every row of ``frame``, by the configured partition."""
    name = partition_cfg.name
    if name not in PARTITIONERS:
        raise ConfigError(f"partition: unknown partition {name!r}; expected one of {sorted(PARTITIONERS)}")
    kwargs = {k: v for k, v in dict(partition_cfg).items() if k != "name"}
    nodes = PARTITIONERS[name](frame, num_nodes, seed, columns or PartitionColumns(), **kwargs)
    counts = np.bincount(nodes, minlength=num_nodes)
    if (counts == 0).any():
        empty = [int(i) for i in np.flatnonzero(counts == 0)]
        raise DataError(
            f"partition={name}: {len(empty)} node(s) {short_list(empty)} would get no rows ({len(frame)} training rows for "
            f"federation.num_nodes={num_nodes}); use fewer nodes or more data"
        )
    return nodes


DEFAULT_NUM_NODES = 5


def default_num_nodes(cfg: DictConfig, distinct_values: Callable[[str], int] | None = None) -> int | None:
    """The one rule for ``federation.num_nodes: null``: one node per value of the partition
    column (:func:`astroscale_fl.data.split.partition_column`: the task's surveys when it lists them,
    else ``distinct_values(column)`` counted in the data, None while no data is read), else 5.

    :func:`astroscale_fl.run_config.validate` applies it without data; :func:`astroscale_fl.data.nodes.resolve_num_nodes`
    with the training rows.
    """
    column = partition_column(cfg.partition)
    if column is None:
        return DEFAULT_NUM_NODES
    if cfg.partition.name == "by_survey" and "surveys" in cfg.task:
        return len(cfg.task.surveys)
    return distinct_values(column) if distinct_values is not None else None
