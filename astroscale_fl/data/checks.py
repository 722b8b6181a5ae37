"""Garbage training data must not train silently: checks on a task table before it is used.

Called where the task table is built (:mod:`astroscale_fl.data.tasks`):

- :func:`check_task_columns`: the target is not also an input (``task.features``);
- :func:`coerce_numeric`: a user table's feature and target columns become float64; a column
  where more than ``task.max_bad_fraction`` of the values do not parse as numbers (or are
  ±inf) stops the run with one line naming the column, the count and an example row; a smaller
  share of bad rows is moved to the quarantine (with the reason) instead of being imputed;
- :func:`check_task_frame`: no input is entirely NaN / ±inf, the target has finite values,
  and the error for an empty table says why it is empty (no rows, or the filter removed all).

Rows are named as 1-based data rows of the file (the first row after a CSV header is row 1).
Empty cells are *missing* (imputed later), not bad; text and ±inf are bad.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from astroscale_fl.errors import ConfigError, DataError, short_list

log = logging.getLogger(__name__)

DEFAULT_MAX_BAD_FRACTION = 0.01
#: ``frame.attrs`` key holding the rejected rows (``row``, ``column``, ``value``, ``reason``)
QUARANTINE_ATTR = "quarantine"


def check_task_columns(features: list[str], target: str) -> None:
    """A feature listed twice, or a target that is also a feature (a model would read its answer)."""
    repeated = sorted({f for f in features if features.count(f) > 1})
    if repeated:
        raise ConfigError(f"task.features: {short_list(repeated)} listed more than once; list each input column once")
    if target in features:
        raise ConfigError(f"task.target {target!r} is also listed in task.features; a model would be given its answer "
                          f"as an input: remove it from task.features")


def _row_number(index_label) -> str:
    """The 1-based data row of a table index label (pandas labels rows from 0)."""
    return str(int(index_label) + 1) if isinstance(index_label, (int, np.integer)) else repr(index_label)


def _parse(raw: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values as float64, mask of values that are not numbers, mask of ±inf)."""
    values = pd.to_numeric(raw, errors="coerce").astype(np.float64).to_numpy()
    unparseable = np.isnan(values) & raw.notna().to_numpy()
    if unparseable.any():  # blank cells are missing values, not garbage
        where = np.flatnonzero(unparseable)
        unparseable[where] = raw.iloc[where].astype(str).str.strip().ne("").to_numpy()
    return values, unparseable, np.isinf(values)


def _describe_bad(raw: pd.Series, unparseable: np.ndarray, inf: np.ndarray) -> str:
    first = int(np.flatnonzero(unparseable | inf)[0])
    value = raw.iloc[first]
    return f"e.g. row {_row_number(raw.index[first])} = {str(value)[:40]!r}"


def _target_problem(raw: pd.Series, values: np.ndarray, unparseable: np.ndarray, inf: np.ndarray) -> str:
    if unparseable.any() and not np.isfinite(values).any():
        return f"holds text, not numbers ({_describe_bad(raw, unparseable, inf)})"
    if inf.all():
        return "every value is ±inf"
    if inf.any() and not np.isfinite(values).any():
        return "has no finite value (only empty cells and ±inf)"
    return "every value is empty / NaN"


def check_has_rows(table: pd.DataFrame, source: str) -> None:
    """A table with a header and no rows is an error of its own (not "the filter removed all")."""
    if len(table) == 0:
        raise DataError(f"{source}: no data rows (the file holds a header only: {short_list(table.columns)})")


def coerce_numeric(table: pd.DataFrame, features: list[str], target: str, source: str,
                   max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION) -> pd.DataFrame:
    """``table`` with ``features`` and ``target`` as float64; bad rows quarantined or an error.

    Raises :class:`DataError` when a column has no finite value, or when more than
    ``max_bad_fraction`` of its values are text or ±inf. Rows with a smaller share of bad
    values are dropped and recorded in ``frame.attrs["quarantine"]``; empty cells stay NaN.
    """
    frame = table.copy()
    bad_rows = np.zeros(len(frame), dtype=bool)
    rejected: list[pd.DataFrame] = []
    for column in [*features, target]:
        raw = frame[column]
        values, unparseable, inf = _parse(raw)
        role = "task.target" if column == target else "feature"
        if len(frame) and not np.isfinite(values).any():
            what = _target_problem(raw, values, unparseable, inf) if column == target else (
                "holds text, not numbers (" + _describe_bad(raw, unparseable, inf) + ")" if unparseable.any()
                else "every value is ±inf" if inf.all() else "every value is empty / NaN / ±inf" if inf.any()
                else "every value is empty / NaN")
            raise DataError(f"{source}: {role} {column!r}: {what}; it cannot be learned from")
        bad = unparseable | inf
        count = int(bad.sum())
        if count and count > max_bad_fraction * len(frame):
            kinds = " and ".join(k for k, n in (("not numbers", unparseable.sum()), ("±inf", inf.sum())) if n)
            raise DataError(f"{source}: {role} {column!r} has {count} of {len(frame)} values that are {kinds} "
                            f"({count / len(frame):.1%} > task.max_bad_fraction={max_bad_fraction:g}; "
                            f"{_describe_bad(raw, unparseable, inf)})")
        if count:
            reason = np.where(unparseable[bad], f"{column}: not a number", f"{column}: ±inf")
            rejected.append(pd.DataFrame({"row": [_row_number(i) for i in raw.index[bad]], "column": column,
                                          "value": raw[bad].astype(str).to_numpy(), "reason": reason}))
            bad_rows |= bad
        frame[column] = values
    out = frame.loc[~bad_rows]
    if rejected:
        quarantine = pd.concat(rejected, ignore_index=True)
        log.warning("%s: %d row(s) with values that are not numbers or ±inf moved to the quarantine (e.g. row %s, %s)",
                    source, int(bad_rows.sum()), quarantine["row"].iloc[0], quarantine["reason"].iloc[0])
        out.attrs[QUARANTINE_ATTR] = quarantine
    return out


def check_task_frame(frame: pd.DataFrame, task_name: str, inputs: list[str], target: str, filter_expr: str | None) -> None:
    """The task frame has rows, and every input and the target has at least one finite value."""
    if frame.empty:
        why = (f"task.filter {filter_expr!r} removed every row, or no row has a finite target {target!r}" if filter_expr
               else f"no row has a finite target {target!r}")
        raise DataError(f"task {task_name}: no rows to learn from ({why})")
    for column in [*inputs, target]:
        if column in frame and not np.isfinite(frame[column].to_numpy(dtype=np.float64)).any():
            raise DataError(f"task {task_name}: {'target' if column == target else 'feature'} {column!r} "
                            f"is entirely NaN / ±inf in the {len(frame)} selected rows; it cannot be learned from")
