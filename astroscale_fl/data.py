"""From config to rows: the task frame, its held-out test split, and each node's share.

In simulation a node's rows are its partition of the training split (``partition-id`` of
``num-partitions`` in the node config). In deployment a SuperNode's node config names its own
data directory (``data-dir``), and the ClientApp reads only that directory.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from astroscale_fl import config
from astroscale_fl.errors import DataError
from astroscale_fl.split import node_rows, train_test_split
from astroscale_fl.tasks import get_task

NODE_DATA_FILE = "train.parquet"


@functools.lru_cache(maxsize=4)
def _split(task_json: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    task_cfg = OmegaConf.create(json.loads(task_json))
    frame = get_task(task_cfg).load(task_cfg)
    return train_test_split(frame, float(task_cfg.test_fraction), seed)


def task_split(cfg: DictConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) rows of the configured task; cached per process."""
    task_json = json.dumps(OmegaConf.to_container(cfg.task, resolve=True), sort_keys=True)
    return _split(task_json, int(cfg.seed))


def resolve_num_nodes(cfg: DictConfig) -> DictConfig:
    """``cfg`` with ``federation.num_nodes`` set: a ``null`` left by :func:`config.validate`
    (a partition column without a known list of values) becomes the number of distinct values
    of that column in the training rows (:func:`config.default_num_nodes`)."""
    if cfg.federation.num_nodes is not None:
        return cfg
    train, _ = task_split(cfg)

    def distinct_values(column: str) -> int:
        if column not in train.columns:
            raise DataError(f"partition.column: {column!r} is not a column of the task data; columns are {list(train.columns)}")
        return int(train[column].astype(str).nunique())

    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["federation"]["num_nodes"] = config.default_num_nodes(cfg, distinct_values)
    out = OmegaConf.create(resolved)
    OmegaConf.set_readonly(out, True)
    return out


def partition_frame(cfg: DictConfig, node: int, num_nodes: int) -> pd.DataFrame:
    """Rows of training partition ``node`` out of ``num_nodes``."""
    train, _ = task_split(cfg)
    return node_rows(train, cfg.partition, num_nodes, node, int(cfg.seed), get_task(cfg.task).partition_columns)


def read_node_dir(data_dir: str | Path) -> pd.DataFrame:
    """A deployed node's training rows: ``<data-dir>/train.parquet``."""
    path = Path(data_dir) / NODE_DATA_FILE
    if not path.is_file():
        raise DataError(f"node data not found: {path} (expected a Parquet table written by `astroscale-fl node-data`)")
    return pd.read_parquet(path)


def node_frame(cfg: DictConfig, node_config: dict) -> pd.DataFrame:
    """The rows a ClientApp trains on, from its node config (deployment or simulation)."""
    if "data-dir" in node_config:
        return read_node_dir(str(node_config["data-dir"]))
    if "partition-id" in node_config:
        return partition_frame(cfg, int(node_config["partition-id"]), int(node_config["num-partitions"]))
    raise DataError("node config names no data: expected data-dir=<dir> (deployment) or partition-id (simulation)")
