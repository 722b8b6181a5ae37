"""Test metrics per node and per group: where a pooled score hides a survey the model serves badly.

metrics.json and the model card gain ``test_by_node`` (the test rows each node would own under
the run's partition rule: its survey or column value, its sky band, its magnitude band, its iid
share) and ``test_by_<column>`` for the task's grouping column (``survey`` when the task has
one, and ``partition.column`` of ``partition=by_column``). Each group: ``rows``, ``rmse``,
``r2`` (in the target's units) and ``bias``, the mean residual prediction - truth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from astroscale_fl.data.split import PARTITIONERS, SURVEY_COLUMN, partition_column
from astroscale_fl.learning.metrics import r2_score, rmse


def group_report(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray) -> dict[str, dict[str, Any]]:
    """rows, RMSE, R² and bias (mean of prediction - truth) of each group, by sorted group name."""
    y_true, y_pred, groups = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64), np.asarray(groups).astype(str)
    out = {}
    for name in np.unique(groups):
        mask = groups == name
        out[str(name)] = {"rows": int(mask.sum()), "rmse": rmse(y_true[mask], y_pred[mask]),
                          "r2": r2_score(y_true[mask], y_pred[mask]), "bias": float(np.mean(y_pred[mask] - y_true[mask]))}
    return out


def grouping_columns(cfg: DictConfig, test: pd.DataFrame) -> list[str]:
    """The task's grouping columns present in the test rows: ``survey``, ``partition.column``."""
    columns = [SURVEY_COLUMN, partition_column(cfg.partition)]
    return [c for c in dict.fromkeys(columns) if c and c in test.columns]


def test_nodes(cfg: DictConfig, test: pd.DataFrame, partition_columns) -> np.ndarray:
    """Each test row's node name under the run's partition (``node-<k>``, or the column's value)."""
    column = partition_column(cfg.partition)
    if column:
        return test[column].astype(str).to_numpy()
    kwargs = {k: v for k, v in dict(cfg.partition).items() if k != "name"}
    nodes = PARTITIONERS[cfg.partition.name](test, int(cfg.federation.num_nodes), int(cfg.seed), partition_columns, **kwargs)
    return np.array([f"node-{k}" for k in nodes])


def test_by_groups(cfg: DictConfig, test: pd.DataFrame, y_true: np.ndarray, y_pred: np.ndarray,
                   partition_columns) -> dict[str, dict[str, dict[str, Any]]]:
    """``test_by_node`` and ``test_by_<column>`` of a model's test predictions (target units)."""
    out = {"test_by_node": group_report(y_true, y_pred, test_nodes(cfg, test, partition_columns))}
    for column in grouping_columns(cfg, test):
        out[f"test_by_{column}"] = group_report(y_true, y_pred, test[column].to_numpy())
    return out
