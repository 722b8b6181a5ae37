"""Row identity and the hold-out rules: which rows are test rows and which a node keeps for local
validation, decided by row id alone (never by which rows were read together, or in what order).

A row's id is its ``id`` column (a task frame, a node's table), else its position. A row is a test
row when ``hash_unit(id, seed, TEST_SALT) < task.test_fraction``, and in a node's local
validation share when ``hash_unit(id, seed, VAL_SALT) < LOCAL_VAL_FRACTION`` (splitmix64 of the
id), so neither depends on how a table is cut into batches or files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from astroscale_fl.preprocessing.stream import ROW

ID = "id"
TEST_SALT = 0x7E57
LOCAL_VAL_FRACTION = 0.1
VAL_SALT = 0x5A1


def hash_unit(row_ids: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per row id, fixed by (seed, salt): splitmix64 of the id
    (string ids are first hashed with pandas' stable ``hash_array``).

    Test split, node partitions and local validation shares compare it with a fraction, so a
    row's assignment depends on its id alone, never on which rows were read with it."""
    ids = np.asarray(row_ids)
    if ids.dtype.kind == "f" and np.isfinite(ids).all() and (ids == np.round(ids)).all():
        ids = ids.astype(np.int64)  # 3.0 and 3 are one id
    if ids.dtype.kind in "iu":
        x = ids.astype(np.uint64, copy=True)
    else:
        x = pd.util.hash_array(ids.astype(str).astype(object) if ids.dtype.kind != "O" else ids).astype(np.uint64)
    with np.errstate(over="ignore"):
        x += np.uint64((seed * 0x9E3779B97F4A7C15 + salt * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def row_ids(frame: pd.DataFrame) -> np.ndarray:
    """The rows' ids: the ``id`` column of a task frame, else row positions."""
    return frame["id"].to_numpy() if "id" in frame.columns else np.arange(len(frame))


def is_test_row(ids: np.ndarray, seed: int, test_fraction: float) -> np.ndarray:
    """True for the rows held out for the test split (by row id)."""
    return hash_unit(ids, seed, TEST_SALT) < test_fraction


def is_local_val(batch: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """True for rows in the node's local validation share (by row id)."""
    ids = batch[ID] if ID in batch else batch[ROW]
    return hash_unit(ids, seed, VAL_SALT) < LOCAL_VAL_FRACTION


def validation_share(is_val: np.ndarray) -> np.ndarray:
    """A node's local validation share from its rows' :func:`is_local_val`: none at all when the
    node has fewer than 2 rows or every row would be held out (it would have nothing to train on)."""
    return np.zeros(len(is_val), dtype=bool) if len(is_val) < 2 or is_val.all() else is_val
