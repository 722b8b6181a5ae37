"""The task's training table, shared by every simulated node: a node's data is a row selection.

In simulation each node's partition is an index array (positions in the task's training split,
:func:`node_rows`), never a copy of the rows. The training split is held once per process as
numpy columns (:func:`task_columns`), and, per fitted pipeline, encoded once as one float32
table (:func:`encoded_table`): features, target, and per row whether it passes validation, is a
training outlier and belongs to its node's local validation share. A node's training and
validation rows are then :meth:`EncodedTable.selection` of its partition, and its tensors are
gathered from the shared table while it handles a message: an idle node costs its index only.

The encoded values equal encoding each node's rows on their own, because every step of such
a pipeline works row by row. Pipelines that do not (``ffill`` / ``bfill`` / ``interpolate``
imputation along ``preprocess.order_by`` within a node, a per-node isolation forest) encode each
node's selection on its own instead (:func:`row_local`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from astroscale_fl.data import nodes
from astroscale_fl.data.holdout import ID, is_local_val, validation_share
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.preprocessing.steps import Imputer, IsolationForestFilter

Columns = dict[str, np.ndarray]


def row_local(pipeline: Pipeline) -> bool:
    """Whether every step of ``pipeline`` encodes a row from that row alone (then one shared
    encoding serves every node): not a node's own isolation forest (a shared one is row-local)."""
    return not any((isinstance(s, IsolationForestFilter) and s.forest is None) or (isinstance(s, Imputer) and s.method in ("ffill", "bfill", "interpolate"))
                   for s in pipeline.steps)


def node_rows(task_json: str, partition_json: str, seed: int, partition: int, num_partitions: int) -> np.ndarray:
    """Positions of a simulated node's rows in the task's training split (its ``partition`` of
    ``num_partitions``). ``task_json`` / ``partition_json``: the run config's ``task`` / ``partition``
    sections as JSON (``config.to_json(cfg, ("task",))``), which with the run's ``seed`` fix the table."""
    return nodes.partition_rows(task_json, seed, partition_json, num_partitions)[partition]


def task_columns(task_json: str, seed: int, columns: tuple[str, ...], time_column: str | None = None) -> Columns:
    """The training split's ``columns`` (those it has) as numpy arrays, converted once per process
    as the pipeline reads them (float64; the row id and a time column as they are)."""
    return _task_columns(task_json, seed, tuple(columns), time_column)


@functools.lru_cache(maxsize=4)
def _task_columns(task_json: str, seed: int, columns: tuple[str, ...], time_column: str | None) -> Columns:
    train = nodes.training_frame(task_json, seed)
    out: Columns = {}
    for name in columns:
        if name not in train.columns:
            continue
        if name in (ID, time_column):
            out[name] = train[name].to_numpy()
            continue
        try:
            out[name] = np.asarray(train[name], dtype=np.float64)
        except (TypeError, ValueError):  # not numeric: the pipeline reports it when it reads the column
            out[name] = np.asarray(train[name])
    return out


def select(columns: Columns, rows: np.ndarray) -> Columns:
    """The ``rows`` of ``columns`` (a gathered batch, alive only while it is used)."""
    return {name: values[rows] for name, values in columns.items()}


@dataclass
class EncodedTable:
    """The training split encoded once with a fitted pipeline (row-local steps only)."""

    features: np.ndarray  # (rows, features) float32; rows failing validation hold zeros
    target: np.ndarray  # (rows,) float32
    valid: np.ndarray  # (rows,) passes validation
    outlier: np.ndarray  # (rows,) dropped from training (preprocess.outlier_action=drop)
    local_val: np.ndarray  # (rows,) in its node's local validation share (by row id)
    _on_device: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def selection(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A node's (training, local validation) positions from its partition ``rows``: what
        :meth:`astroscale_fl.data.node_data.SimulatedNode.split` then encoding each share would keep."""
        is_val = validation_share(self.local_val[rows])
        valid = self.valid[rows]
        return rows[~is_val & valid & ~self.outlier[rows]], rows[is_val & valid]

    def gather(self, rows: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A node's (train_x, train_y, val_x, val_y) on ``device``, gathered by its partition ``rows``."""
        x, y = self.on(device)
        train, val = self.selection(rows)
        train, val = torch.from_numpy(train).to(device), torch.from_numpy(val).to(device)
        return x[train], y[train], x[val], y[val]

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, target) as tensors on ``device`` (the CPU's share the numpy memory)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (torch.from_numpy(self.features).to(device), torch.from_numpy(self.target).to(device))
        return self._on_device[key]


_ENCODED: dict[tuple, EncodedTable] = {}
_KEEP = 2  # encoded tables kept per process (a run uses one pipeline; a sweep moves on)


def encoded_table(task_json: str, seed: int, pipeline: Pipeline, pipeline_key: str) -> EncodedTable:
    """The training split encoded with ``pipeline`` (fitted; :func:`row_local`), once per
    (task, seed, pipeline state) and process."""
    columns = (*pipeline.inputs, pipeline.target.target, ID)
    key = (task_json, seed, columns, pipeline_key)
    table = _ENCODED.get(key)
    if table is None:
        table = _encode(task_columns(task_json, seed, columns, pipeline.time_column), pipeline, seed)
        while len(_ENCODED) >= _KEEP:
            _ENCODED.pop(next(iter(_ENCODED)))
        _ENCODED[key] = table
    return table


def _encode(raw: Columns, pipeline: Pipeline, seed: int) -> EncodedTable:
    valid = ~pipeline.quarantine(raw)[0]
    rows = select(raw, np.flatnonzero(valid))
    features = np.zeros((len(valid), len(pipeline.features)), dtype=np.float32)
    target = np.zeros(len(valid), dtype=np.float32)
    features[valid] = pipeline.transform_features(rows, validated=True)
    target[valid] = pipeline.transform_target(rows)
    local_val = is_local_val({ID: raw[ID]}, seed)
    return EncodedTable(features, target, valid, pipeline.outlier_rows(raw), local_val)
