"""Preprocessing as fit/transform steps with inspectable, serialisable state.

Each step follows the scikit-learn transformer shape: ``fit(frame)`` learns state from
training rows, ``transform(frame)`` applies it, ``state_dict()`` returns the learned state as
plain JSON-able data and ``from_state(state)`` rebuilds a fitted step. A :class:`Pipeline`
chains steps and serialises as one JSON document stored in the exported model.

Steps work on *columns*: a mapping of column name to a 1-D numpy array (a pandas DataFrame
works as input too). Working on plain arrays keeps a one-star prediction as cheap as a batch.

Steps that learn state learn it from :class:`~astroscale_fl.statistics.ColumnStatistics`
(``fit_statistics``); ``fit(frame)`` computes those statistics from the rows first. So a
pipeline fitted on one table and one fitted federatedly (statistics merged across nodes,
no rows shared) go through the same code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from astroscale_fl.derived import DERIVED_FEATURES
from astroscale_fl.errors import ConfigError, DataError
from astroscale_fl.statistics import ColumnStatistics

Columns = dict[str, np.ndarray]


def as_columns(frame: Mapping[str, Any] | pd.DataFrame, names: list[str]) -> Columns:
    """float64 arrays of ``names`` from a DataFrame or a mapping of column -> values."""
    return {name: np.asarray(frame[name], dtype=np.float64).reshape(-1) for name in names}


class Step:
    """Base class of a preprocessing step (columns in, columns out)."""

    kind: ClassVar[str]

    def fit(self, frame) -> Step:
        return self

    def transform(self, frame) -> Columns:
        raise NotImplementedError

    def fit_transform(self, frame) -> Columns:
        return self.fit(frame).transform(frame)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Step:
        step = cls.__new__(cls)
        step.__dict__.update(state)
        return step


class RangeValidator(Step):
    """Mark values outside each column's physical range (or non-finite) as missing.

    ``invalid_counts`` records, per column, how many training values were out of range.
    """

    kind = "range_validator"

    def __init__(self, ranges: dict[str, tuple[float, float]]):
        self.ranges = {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()}
        self.invalid_counts: dict[str, int] = {}

    def invalid_mask(self, frame) -> Columns:
        """Per column: True where a value is missing, non-finite or out of range."""
        out = {}
        for name, (lo, hi) in self.ranges.items():
            values = np.asarray(frame[name], dtype=np.float64)
            with np.errstate(invalid="ignore"):
                out[name] = ~(np.isfinite(values) & (values >= lo) & (values <= hi))
        return out

    def fit(self, frame) -> RangeValidator:
        self.invalid_counts = {k: int(v.sum()) for k, v in self.invalid_mask(frame).items()}
        return self

    def transform(self, frame) -> Columns:
        columns = dict(frame) if isinstance(frame, dict) else {k: np.asarray(frame[k]) for k in frame.keys()}
        for name, bad in self.invalid_mask(frame).items():
            columns[name] = np.where(bad, np.nan, np.asarray(frame[name], dtype=np.float64))
        return columns


class DerivedFeatures(Step):
    """Append derived feature columns (formulas in :mod:`astroscale_fl.derived`)."""

    kind = "derived_features"

    def __init__(self, names: list[str]):
        unknown = [n for n in names if n not in DERIVED_FEATURES]
        if unknown:
            raise ConfigError(f"unknown derived feature(s) {unknown}; expected some of {sorted(DERIVED_FEATURES)}")
        self.names = list(names)

    def transform(self, frame) -> Columns:
        columns = dict(frame) if isinstance(frame, dict) else {k: np.asarray(frame[k]) for k in frame.keys()}
        for name in self.names:
            columns[name] = np.asarray(DERIVED_FEATURES[name](columns), dtype=np.float64)
        return columns


class MedianImputer(Step):
    """Replace missing values by the column median learned at fit time."""

    kind = "median_imputer"

    def __init__(self, columns: list[str]):
        self.columns = list(columns)
        self.medians: dict[str, float] = {}

    def fit(self, frame) -> MedianImputer:
        return self.fit_statistics(ColumnStatistics.compute(frame, self.columns))

    def fit_statistics(self, stats: ColumnStatistics) -> MedianImputer:
        medians = _select(stats, self.columns, stats.quantile(0.5))
        self.medians = {k: (v if np.isfinite(v) else 0.0) for k, v in medians.items()}
        return self

    def transform(self, frame) -> Columns:
        columns = dict(frame) if isinstance(frame, dict) else {k: np.asarray(frame[k]) for k in frame.keys()}
        for name in self.columns:
            values = np.asarray(columns[name], dtype=np.float64)
            columns[name] = np.where(np.isnan(values), self.medians[name], values)
        return columns


class Scaler(Step):
    """Centre and scale columns: ``robust`` (median, IQR) or ``standard`` (mean, std).

    A column with zero spread keeps a scale of 1, as scikit-learn does: dividing by ~0
    would blow the column up and wreck training. Scaled values are clipped to ``[-clip, clip]``
    (``clip=None``: no clipping): catalogue columns such as photometric errors have tails
    hundreds of IQRs long, which destabilise plain SGD (SCAFFOLD's local steps).
    """

    kind = "scaler"
    METHODS = ("robust", "standard")

    def __init__(self, columns: list[str], method: str = "robust", clip: float | None = 10.0):
        if method not in self.METHODS:
            raise ConfigError(f"preprocess.scaling: expected one of {list(self.METHODS)}, got {method!r}")
        if clip is not None and clip <= 0:
            raise ConfigError(f"preprocess.clip: expected a positive number or null, got {clip}")
        self.columns = list(columns)
        self.method = method
        self.clip = None if clip is None else float(clip)
        self.center: dict[str, float] = {}
        self.scale: dict[str, float] = {}

    def fit(self, frame) -> Scaler:
        return self.fit_statistics(ColumnStatistics.compute(frame, self.columns))

    def fit_statistics(self, stats: ColumnStatistics) -> Scaler:
        if self.method == "robust":
            center, spread = stats.quantile(0.5), stats.quantile(0.75) - stats.quantile(0.25)
        else:
            center, spread = stats.mean(), stats.std()
        center = np.where(np.isfinite(center), center, 0.0)
        spread = np.where(np.isfinite(spread) & (spread > 1e-12), spread, 1.0)
        self.center = _select(stats, self.columns, center)
        self.scale = _select(stats, self.columns, spread)
        return self

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Scaler:
        return super().from_state({"clip": None, **state})  # models exported before clipping existed

    def transform(self, frame) -> Columns:
        columns = dict(frame) if isinstance(frame, dict) else {k: np.asarray(frame[k]) for k in frame.keys()}
        for name in self.columns:
            scaled = (np.asarray(columns[name], dtype=np.float64) - self.center[name]) / self.scale[name]
            columns[name] = scaled if self.clip is None else np.clip(scaled, -self.clip, self.clip)
        return columns


class TargetScaler(Step):
    """Standardise the target for training; ``inverse`` maps model outputs back to its units."""

    kind = "target_scaler"

    def __init__(self, target: str):
        self.target = target
        self.mean = 0.0
        self.std = 1.0

    def fit(self, frame) -> TargetScaler:
        return self.fit_statistics(ColumnStatistics.compute(frame, [self.target]))

    def fit_statistics(self, stats: ColumnStatistics) -> TargetScaler:
        self.mean = _select(stats, [self.target], stats.mean())[self.target]
        std = _select(stats, [self.target], stats.std())[self.target]
        self.std = std if std > 1e-12 else 1.0
        return self

    def transform(self, frame) -> Columns:
        return {self.target: (np.asarray(frame[self.target], dtype=np.float64) - self.mean) / self.std}

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.std + self.mean


def _select(stats: ColumnStatistics, columns: list[str], values: np.ndarray) -> dict[str, float]:
    """``{column: value}`` for ``columns`` out of per-column ``values`` of ``stats``."""
    index = {name: i for i, name in enumerate(stats.columns)}
    missing = [c for c in columns if c not in index]
    if missing:
        raise DataError(f"statistics lack column(s) {missing}")
    return {c: float(values[index[c]]) for c in columns}


STEP_TYPES: dict[str, type[Step]] = {
    cls.kind: cls for cls in (RangeValidator, DerivedFeatures, MedianImputer, Scaler, TargetScaler)
}


class Pipeline:
    """Feature steps (raw inputs -> model features) plus the target scaler.

    ``inputs`` are the raw columns a user supplies, ``features`` the columns the model sees.
    """

    def __init__(self, inputs: list[str], features: list[str], steps: list[Step], target: TargetScaler):
        self.inputs = list(inputs)
        self.features = list(features)
        self.steps = steps
        self.target = target

    @classmethod
    def build(cls, task, scaling: str = "robust", clip: float | None = 10.0) -> Pipeline:
        """The default pipeline of a task: validate ranges, derive, impute, scale (and clip)."""
        inputs = task.input_names
        features = inputs + list(task.derived)
        steps: list[Step] = [
            RangeValidator({f.name: (f.low, f.high) for f in task.inputs}),
            DerivedFeatures(list(task.derived)),
            MedianImputer(features),
            Scaler(features, scaling, clip),
        ]
        return cls(inputs, features, steps, TargetScaler(task.target))

    @classmethod
    def from_config(cls, task, cfg) -> Pipeline:
        """The default pipeline of a task with the run config's ``preprocess`` settings."""
        return cls.build(task, cfg.preprocess.scaling, cfg.preprocess.clip)

    def _check_columns(self, frame, columns: list[str]) -> None:
        present = frame.columns if isinstance(frame, pd.DataFrame) else frame.keys()
        missing = [c for c in columns if c not in present]
        if missing:
            raise DataError(f"missing input column(s) {missing}; expected {columns}")

    @property
    def statistics_columns(self) -> list[str]:
        """Columns whose statistics fit the pipeline: the model features and the target."""
        return self.features + [self.target.target]

    def statistics_frame(self, frame) -> Columns:
        """The validated, derived columns whose statistics fit the pipeline (before imputation)."""
        self._check_columns(frame, self.inputs + [self.target.target])
        current: Columns = as_columns(frame, self.inputs + [self.target.target])
        for step in self.steps:
            if isinstance(step, (MedianImputer, Scaler)):
                break
            current = step.transform(current)
        return current

    def compute_statistics(self, frame) -> ColumnStatistics:
        """A node's share of a federated fit: statistics of its validated, derived columns."""
        return ColumnStatistics.compute(self.statistics_frame(frame), self.statistics_columns)

    def fit_statistics(self, stats: ColumnStatistics) -> Pipeline:
        """Fit every learning step from (possibly merged) column statistics."""
        for step in self.steps:
            if isinstance(step, RangeValidator):
                step.invalid_counts = _select(stats, list(step.ranges), stats.missing)
            elif isinstance(step, (MedianImputer, Scaler)):
                step.fit_statistics(stats)
        self.target.fit_statistics(stats)
        return self

    def fit(self, frame) -> Pipeline:
        """Fit on the rows of one table (target included)."""
        return self.fit_statistics(self.compute_statistics(frame))

    def transform_features(self, frame) -> np.ndarray:
        """Raw inputs (DataFrame or mapping of column -> values) -> float32 matrix (rows x features)."""
        self._check_columns(frame, self.inputs)
        current: Columns = as_columns(frame, self.inputs)
        for step in self.steps:
            current = step.transform(current)
        return np.stack([current[name] for name in self.features], axis=1).astype(np.float32)

    def transform_target(self, frame) -> np.ndarray:
        """Target column -> standardised float32 vector."""
        return self.target.transform(frame)[self.target.target].astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "features": self.features,
            "steps": [{"kind": s.kind, "state": s.state_dict()} for s in self.steps],
            "target": self.target.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Pipeline:
        steps = [STEP_TYPES[s["kind"]].from_state(s["state"]) for s in state["steps"]]
        target = TargetScaler.from_state(state["target"])
        return cls(state["inputs"], state["features"], steps, target)  # type: ignore[arg-type]
