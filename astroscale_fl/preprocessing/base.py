"""The shape every preprocessing step has (scikit-learn transformer style, JSON state)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from astroscale_fl.errors import DataError
from astroscale_fl.preprocessing.statistics import ColumnStatistics

Columns = dict[str, np.ndarray]


class Step:
    """Base class of a preprocessing step (columns in, columns out)."""

    kind: ClassVar[str]
    learns: ClassVar[bool] = False

    def transform(self, columns: Columns) -> Columns:
        raise NotImplementedError

    def fit_statistics(self, stats: ColumnStatistics) -> Step:
        return self

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Step:
        step = cls.__new__(cls)
        step.__dict__.update(state)  # already checked field by field by schema.validate_step
        return step


def select(stats: ColumnStatistics, columns: list[str], values: np.ndarray) -> dict[str, float]:
    """``{column: value}`` for ``columns`` out of per-column ``values`` of ``stats``."""
    index = {name: i for i, name in enumerate(stats.columns)}
    missing = [c for c in columns if c not in index]
    if missing:
        raise DataError(f"statistics lack column(s) {missing}")
    return {c: float(values[index[c]]) for c in columns}
