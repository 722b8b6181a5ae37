"""From config to rows: the task frame, its held-out test split, and each node's share.

In simulation a node's rows are its partition of the training split. In deployment a SuperNode
reads only its own data directory. Which one a node is, its node config says, read by
:func:`astroscale_fl.data.node_data.node_data`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from astroscale_fl.config import to_json
from astroscale_fl.data import split
from astroscale_fl.data.checks import QUARANTINE_ATTR
from astroscale_fl.data.node_dirs import NODE_DATA_DIR, node_table_path
from astroscale_fl.data.split import assign_nodes, train_test_split
from astroscale_fl.data.tables import read_table
from astroscale_fl.data.tasks import get_task
from astroscale_fl.errors import DataError


@functools.lru_cache(maxsize=4)
def _split(task_json: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    task_cfg = OmegaConf.create(json.loads(task_json)["task"])
    frame = get_task(task_cfg).load(task_cfg)
    quarantine = frame.attrs.pop(QUARANTINE_ATTR, None)
    return (*train_test_split(frame, float(task_cfg.test_fraction), seed), quarantine)


def task_split(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) rows of the configured task; cached per process."""
    return _split(to_json(cfg, ("task",)), int(cfg.seed))[:2]


def task_quarantine(cfg: DictConfig) -> pd.DataFrame | None:
    """Rows of the task table rejected for values that are not numbers (``row``, ``column``, ``value``, ``reason``)."""
    return _split(to_json(cfg, ("task",)), int(cfg.seed))[2]


def resolve_num_nodes(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``federation.num_nodes`` set: a ``null`` left by :func:`astroscale_fl.run_config.validate`
    (a partition column without a known list of values) becomes the number of distinct values
    of that column in the training rows (:func:`split.default_num_nodes`)."""
    if cfg.federation.num_nodes is not None:
        return cfg
    train, _ = task_split(cfg)

    def distinct_values(column: str) -> int:
        if column not in train.columns:
            raise DataError(f"partition.column: {column!r} is not a column of the task data; columns are {list(train.columns)}")
        return int(train[column].astype(str).nunique())

    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["federation"]["num_nodes"] = split.default_num_nodes(cfg, distinct_values)
    out = OmegaConf.create(resolved)
    OmegaConf.set_readonly(out, True)
    return out


def partition_frame(cfg: DictConfig, node: int, num_nodes: int, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Rows of training partition ``node`` out of ``num_nodes`` (in the training split's order);
    only ``columns`` (those the table has) when given: a narrow table is much faster to slice."""
    task_json, seed = to_json(cfg, ("task",)), int(cfg.seed)
    train = _training_columns(task_json, seed, columns)
    rows = partition_rows(task_json, seed, to_json(cfg, ("partition",)), num_nodes)[node]
    return train.iloc[rows].reset_index(drop=True)


def training_frame(task_json: str, seed: int) -> pd.DataFrame:
    """The task's training split (cached per process; ``task_json``: :func:`astroscale_fl.config.to_json` of ``task``)."""
    return _split(task_json, seed)[0]


@functools.lru_cache(maxsize=4)
def _training_columns(task_json: str, seed: int, columns: tuple[str, ...] | None) -> pd.DataFrame:
    train = _split(task_json, seed)[0]
    return train if columns is None else train[[c for c in columns if c in train.columns]]


@functools.lru_cache(maxsize=4)
def partition_rows(task_json: str, seed: int, partition_json: str, num_nodes: int) -> list[np.ndarray]:
    """Training-row positions of every partition (in the training split's order), computed once
    for all the nodes of a simulation: each simulated node's data is its selection."""
    train = _split(task_json, seed)[0]
    task_cfg = OmegaConf.create(json.loads(task_json)["task"])
    partition_cfg = OmegaConf.create(json.loads(partition_json)["partition"])
    nodes = assign_nodes(train, partition_cfg, num_nodes, seed, get_task(task_cfg).partition_columns)
    order = np.argsort(nodes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(nodes, minlength=num_nodes))[:-1])


def read_node_dir(data_dir: str | Path) -> pd.DataFrame:
    """A deployed node's training rows (:func:`node_table_path`)."""
    path = node_table_path(data_dir)
    if not path.is_file() and not path.is_dir():
        raise DataError(f"node data not found: {path} (expected a Parquet table written by `astroscale-fl node-data`, "
                        f"or a folder {Path(data_dir) / NODE_DATA_DIR} of Parquet files)")
    return read_table(path, "node data") if path.is_dir() else pd.read_parquet(path)
