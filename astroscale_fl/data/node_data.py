"""One door to a node's data: :func:`node_data` turns a node config into a :class:`SimulatedNode`
or a :class:`DeployedNode`, which answer the same questions (name, salt, state directory,
statistics, training / local validation rows, tensors).

This is the only module that reads ``partition-id``, ``num-partitions`` and ``node-name`` from a
node config; ``data-dir`` is read by :func:`astroscale_fl.data.node_dirs.deployed_data_dir`, which
the node's status file also uses before a run config exists.

- A simulated node (``partition-id`` of ``num-partitions``, as Flower's simulation gives them) is
  a row selection of the task table (:mod:`astroscale_fl.data.task_table`).
- A deployed node (``data-dir=<dir>``) reads its table ``<dir>/train.parquet`` (or ``<dir>/train/``)
  and keeps its state in ``<dir>/.astroscale/``; its encoded rows are memory-mapped tensor files
  (:mod:`astroscale_fl.data.node_arrays`).

The local validation share is defined by row id (:mod:`astroscale_fl.data.holdout`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from astroscale_fl.config import to_json
from astroscale_fl.data import holdout, node_arrays, nodes, task_table
from astroscale_fl.data.node_dirs import deployed_data_dir, node_state_dir, node_table_path
from astroscale_fl.errors import DataError
from astroscale_fl.preprocessing import ColumnStatistics, Pipeline

PARTITION_KEY = "partition-id"
NUM_PARTITIONS_KEY = "num-partitions"
NAME_KEY = "node-name"  # an operator's name for the node (else its folder's or partition's)


@dataclass(frozen=True)
class Columns:
    """The columns a node's pipeline reads (inputs, target, row id) and its time column."""

    names: tuple[str, ...]
    time_column: str | None = None


@dataclass
class NodeTensors:
    """A node's encoded rows on its device: training and local validation shares."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def split_shares(frame: pd.DataFrame, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, local validation) rows of a node's frame, by row id."""
    is_val = holdout.validation_share(holdout.is_local_val({"id": frame["id"].to_numpy()}, seed))
    return frame.loc[~is_val].reset_index(drop=True), frame.loc[is_val].reset_index(drop=True)


def _config_key(node_config: dict) -> str:
    """A node config as a cache key (its items, sorted)."""
    return repr(sorted(node_config.items()))


def _salt(ident: str) -> int:
    return int(hashlib.sha256(ident.encode()).hexdigest()[:8], 16)


class _Node:
    """What both kinds of node share: the run config and the raw node config (its other keys,
    such as the privacy floor's, are read by their owners). One object per (run config, node
    config) (:func:`node_data`): what it reads from them is read once."""

    def __init__(self, cfg: DictConfig, config: dict):
        self.cfg, self.config = cfg, config

    @functools.cached_property
    def seed(self) -> int:
        """The run's seed (read once: an OmegaConf attribute costs ~30 µs)."""
        return int(self.cfg.seed)

    @functools.cached_property
    def key(self) -> str:
        """The node config as a cache key."""
        return _config_key(self.config)

    def split(self, columns: Columns) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The node's (training, local validation) rows, seeded by row id."""
        return split_shares(self.frame(columns), self.seed)

    def arrays(self, pipeline: Pipeline, columns: Columns) -> dict[str, np.ndarray]:
        """``train_x``, ``train_y``, ``val_x``, ``val_y`` of the node's rows encoded by ``pipeline``
        (``columns``: what to read of a simulated node's rows)."""
        return node_arrays.frame_arrays(pipeline, *self.split(columns))

    def shared_tensors(self, pipeline: Pipeline, pipeline_key: str, device: torch.device) -> NodeTensors | None:
        """The node's tensors gathered from an encoding shared by all nodes, or None when it has
        none (a deployed node, or a pipeline that encodes node by node: see :meth:`tensors`)."""
        return None

    def tensors(self, pipeline: Pipeline, columns: Columns, device: torch.device) -> NodeTensors:
        """The node's rows encoded on their own with ``pipeline``, on ``device``."""
        arrays = self.arrays(pipeline, columns)
        return NodeTensors(*(torch.from_numpy(arrays[k]).to(device) for k in ("train_x", "train_y", "val_x", "val_y")))


class SimulatedNode(_Node):
    """A simulated node: its partition (``partition-id`` of ``num-partitions``) of the task's
    training split, a row selection of the task table shared by every node of the process."""

    data_dir = None
    state_dir = None  # nothing outlives the process

    @property
    def name(self) -> str:
        """A name for the node that stays the same across restarts (not Flower's node id)."""
        return str(self.config.get(NAME_KEY, f"partition-{self.config.get(PARTITION_KEY, 0)}"))

    @functools.cached_property
    def salt(self) -> int:
        """A stable per-node integer, so nodes shuffle differently under one seed: its partition."""
        return _salt(str(self.config.get(PARTITION_KEY, "")))

    @functools.cached_property
    def task_json(self) -> str:
        """The run's ``task`` section as JSON: with the seed, what fixes the task table."""
        return to_json(self.cfg, ("task",))

    @functools.cached_property
    def _rows(self) -> np.ndarray:
        if PARTITION_KEY not in self.config:
            raise DataError("node config names no data: expected data-dir=<dir> (deployment) or partition-id (simulation)")
        return task_table.node_rows(self.task_json, to_json(self.cfg, ("partition",)), self.seed,
                                    int(self.config[PARTITION_KEY]), int(self.config[NUM_PARTITIONS_KEY]))

    def rows(self) -> np.ndarray:
        """Positions of the node's rows in the task's training split (its partition; an index, not a copy)."""
        return self._rows

    def batch(self, columns: Columns) -> dict[str, np.ndarray]:
        """The node's rows of ``columns``: a selection of the task table."""
        return task_table.select(task_table.task_columns(self.task_json, self.seed, columns.names, columns.time_column), self.rows())

    def frame(self, columns: Columns) -> pd.DataFrame:
        """The node's rows of ``columns`` as a frame (gathered on each call: nothing is kept)."""
        return pd.DataFrame(self.batch(columns))

    def statistics(self, pipeline: Pipeline, columns: Columns) -> tuple[ColumnStatistics, int, int]:
        """(statistics of the training share's valid rows, training rows, quarantined rows)."""
        return node_arrays.statistics(pipeline, [self.batch(columns)], self.seed)

    def shared_tensors(self, pipeline: Pipeline, pipeline_key: str, device: torch.device) -> NodeTensors | None:
        """The node's tensors gathered by its row selection from the task table encoded once
        (:func:`~astroscale_fl.data.task_table.encoded_table`), when ``pipeline`` encodes row by row."""
        if not task_table.row_local(pipeline):
            return None
        return NodeTensors(*task_table.encoded_table(self.task_json, self.seed, pipeline, pipeline_key).gather(self.rows(), device))


class DeployedNode(_Node):
    """A deployed node: the table in its data directory (``data-dir``), its state in
    ``<data-dir>/.astroscale/``, its encoded rows in memory-mapped tensor files."""

    def __init__(self, cfg: DictConfig, config: dict, data_dir: str):
        super().__init__(cfg, config)
        self.data_dir = data_dir

    @property
    def name(self) -> str:
        """A name for the node that stays the same across restarts: ``node-name``, else its folder's name."""
        return str(self.config[NAME_KEY]) if NAME_KEY in self.config else Path(self.data_dir).resolve().name

    @property
    def state_dir(self) -> Path:
        """What the node keeps across restarts (ledger, SCAFFOLD control variate, status)."""
        return node_state_dir(self.data_dir)

    @property
    def table(self) -> Path:
        """The node's table: a Parquet file or a folder of them."""
        return node_table_path(self.data_dir)

    @property
    def salt(self) -> int:
        """A stable per-node integer: the content of the node's table (not its path, so the same
        data in another folder shuffles the same; an edited table is read again, see
        :func:`~astroscale_fl.data.node_arrays.content_digest`)."""
        table = self.table
        return _salt(node_arrays.content_digest(table) if table.exists() else self.data_dir)

    def frame(self, columns: Columns | None = None) -> pd.DataFrame:
        """The node's whole table, read into memory."""
        return nodes.read_node_dir(self.data_dir)

    def statistics(self, pipeline: Pipeline, columns: Columns | None = None) -> tuple[ColumnStatistics, int, int]:
        """(statistics of the training share's valid rows, training rows, quarantined rows), streamed."""
        return node_arrays.table_statistics(self.cfg, self.table, pipeline)

    def arrays(self, pipeline: Pipeline, columns: Columns | None = None) -> dict[str, np.ndarray]:
        """``train_x``, ``train_y``, ``val_x``, ``val_y``: memory-mapped tensor files under
        ``<data-dir>/.astroscale-cache`` (streamed, reused across messages)."""
        return node_arrays.table_arrays(self.cfg, self.data_dir, self.table, pipeline)


NodeData = SimulatedNode | DeployedNode


_NODES: dict[tuple[int, str], tuple[DictConfig, NodeData]] = {}
_KEEP = 4096  # nodes kept per process: a thousand-node simulation's, for its run


def node_data(cfg: DictConfig, node_config: dict) -> NodeData:
    """The node a node config describes: deployed when it names a ``data-dir``, else simulated.

    The same object for the same run config object and node config (a node process parses each
    run's config once, so a run is one config object), so what the node derives from them (its
    rows, its task key, a simulated node's salt) is derived once per run."""
    config = dict(node_config)
    key = (id(cfg), _config_key(config))
    hit = _NODES.get(key)
    if hit is not None and hit[0] is cfg:
        return hit[1]
    data_dir = deployed_data_dir(config)
    node = SimulatedNode(cfg, config) if data_dir is None else DeployedNode(cfg, config, data_dir)
    if len(_NODES) >= _KEEP:
        _NODES.clear()
    _NODES[key] = (cfg, node)  # holds cfg, so its id is not reused while the entry lives
    return node
