"""Validation and learning steps: range check, imputer, outliers, scalers, target scaler.

``transform(columns)`` applies a step to a mapping of column name -> 1-D float64 array,
``state_dict()`` returns its state as plain JSON data, ``from_state(state)`` (validated by
:mod:`.schema`) rebuilds it. Steps that learn state learn it with ``fit_statistics`` from
:class:`~.statistics.ColumnStatistics`, which merge across record batches and nodes, so fitting
on one table, federatedly or on a public reference is one code path.

Row-wise steps (validation, derived features) run before the statistics are taken; learning
steps (imputer, outliers, scaler) after.
"""

from __future__ import annotations

import numpy as np

from astroscale_fl.errors import ConfigError, DataError
from astroscale_fl.preprocessing.base import Columns, Step, select
from astroscale_fl.preprocessing.chunks import CHUNK_ROWS, parallel_map, threads
from astroscale_fl.preprocessing.forest import CompleteForest, export_forest
from astroscale_fl.preprocessing.statistics import ColumnStatistics


class RangeValidator(Step):
    """Physical ranges per column. In training, rows with a finite value outside its range (or
    +-inf) go to the quarantine (:meth:`failures`); in prediction the value becomes missing."""

    kind = "range_validator"

    def __init__(self, ranges: dict[str, tuple[float, float]]):
        self.ranges = {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()}
        self.invalid_counts: dict[str, int] = {}

    def _inside(self, values: np.ndarray, lo: float, hi: float) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            inside = (values >= lo) & (values <= hi)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            inside &= np.abs(values) != np.inf
        return inside

    def failures(self, columns: Columns, finite: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(row fails, index into ``ranges`` of the first failing column or -1) per row; a row whose
        ``finite`` value (e.g. the target) is NaN or infinite also fails, with index ``len(ranges)``.

        Walks the rows in cache-sized chunks, spread over threads: per chunk and column two
        comparisons into reused buffers; only a chunk with a failing row pays for finding which
        column failed."""
        n = len(next(iter(columns.values()))) if columns else len(finite) if finite is not None else 0
        first = np.full(n, -1, dtype=np.int32)  # a column index: int32 is plenty, and half the memory
        checks = [(j, np.asarray(columns[name]), lo, hi) for j, (name, (lo, hi)) in enumerate(self.ranges.items())]
        starts = range(0, n, CHUNK_ROWS)
        workers = max(1, min(threads(), len(starts)))
        parallel_map(lambda part: _first_failures(checks, finite, first, starts[part::workers]), range(workers), n)
        return first >= 0, first

    def transform(self, columns: Columns) -> Columns:
        out = dict(columns)
        for name, (lo, hi) in self.ranges.items():
            inside = self._inside(columns[name], lo, hi)
            if not inside.all():
                out[name] = np.where(inside, columns[name], np.nan)
        return out


def _first_failures(checks, finite: np.ndarray | None, first: np.ndarray, starts) -> None:
    """:meth:`RangeValidator.failures` for the chunks at ``starts`` (one thread)."""
    bad, scratch = np.empty(CHUNK_ROWS, dtype=bool), np.empty(CHUNK_ROWS, dtype=bool)
    with np.errstate(invalid="ignore"):
        for start in starts:
            stop = min(start + CHUNK_ROWS, len(first))
            rows = slice(start, stop)
            out, spare = bad[: stop - start], scratch[: stop - start]
            if finite is not None and not np.isfinite(finite[rows], out=out).all():
                first[rows][~out] = len(checks)  # the last label: any failing column below overrides it
            failed = [j for j, values, lo, hi in checks if _outside(values[rows], lo, hi, out, spare).any()]
            for j in reversed(failed):  # the first failing column wins
                _, values, lo, hi = checks[j]
                first[rows][_outside(values[rows], lo, hi, out, spare)] = j


def _outside(values: np.ndarray, lo: float, hi: float, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``out`` = True where a value is outside [lo, hi] or infinite (NaN is not: it is missing)."""
    np.less(values, lo, out=out)
    out |= np.greater(values, hi, out=scratch)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # an open bound: +-inf does not compare outside it
        out |= np.isinf(values, out=scratch)
    return out


class Imputer(Step):
    """Fill missing values: ``median`` / ``mean`` (learned), or ``ffill`` / ``bfill`` / ``interpolate``
    along ``order_by`` within the rows transformed together (a record batch of a node's table);
    gaps those cannot fill (at a batch's edges) take the learned median."""

    kind = "imputer"
    learns = True
    METHODS = ("median", "mean", "ffill", "bfill", "interpolate")

    def __init__(self, columns: list[str], method: str = "median", order_by: str | None = None):
        if method not in self.METHODS:
            raise ConfigError(f"preprocess.impute: expected one of {list(self.METHODS)}, got {method!r}")
        if method in ("ffill", "bfill", "interpolate") and not order_by:
            raise ConfigError(f"preprocess.order_by: preprocess.impute={method} needs a column to order rows by (e.g. an epoch)")
        self.columns, self.method, self.order_by = list(columns), method, order_by
        self.fill: dict[str, float] = {}

    def fit_statistics(self, stats: ColumnStatistics) -> Imputer:
        values = stats.mean() if self.method == "mean" else stats.quantile(0.5)
        self.fill = {k: (v if np.isfinite(v) else 0.0) for k, v in select(stats, self.columns, values).items()}
        return self

    def transform(self, columns: Columns) -> Columns:
        out = dict(columns)
        order = None
        if self.method in ("ffill", "bfill", "interpolate"):
            order = np.argsort(np.asarray(columns[self.order_by], dtype=np.float64), kind="stable")
        for name in self.columns:
            values = columns[name]
            if order is not None:
                filled = np.empty_like(values)
                filled[order] = _fill_ordered(values[order], self.method)
                values = filled
            out[name] = np.where(np.isnan(values), self.fill[name], values)
        return out


def _fill_ordered(values: np.ndarray, method: str) -> np.ndarray:
    """Forward fill, backward fill or linear interpolation (by position) of NaNs in order."""
    valid = ~np.isnan(values)
    if valid.all() or not valid.any():
        return values
    positions = np.arange(values.size)
    if method == "interpolate":
        known = positions[valid]
        out = np.interp(positions, known, values[valid])
        out[(positions < known[0]) | (positions > known[-1])] = np.nan  # no extrapolation
        return out
    if method == "ffill":
        last = np.maximum.accumulate(np.where(valid, positions, -1))
        return np.where(last >= 0, values[np.maximum(last, 0)], np.nan)
    nxt = np.minimum.accumulate(np.where(valid, positions, values.size)[::-1])[::-1]
    return np.where(nxt < values.size, values[np.minimum(nxt, values.size - 1)], np.nan)


class OutlierFilter(Step):
    """Outliers by ``zscore`` (|x - mean| / std > t) or ``iqr`` (outside [Q1 - t IQR, Q3 + t IQR]),
    from the merged statistics. ``clip`` clips values to the bounds, ``flag`` appends an
    ``outlier`` column (1 where any column is outside), ``drop`` removes training rows
    (:meth:`outlier_rows`) and never a row in prediction."""

    kind = "outliers"
    learns = True
    METHODS = ("zscore", "iqr")
    ACTIONS = ("drop", "clip", "flag")

    def __init__(self, columns: list[str], method: str, threshold: float, action: str):
        if method not in self.METHODS:
            raise ConfigError(f"preprocess.outliers: expected one of none, {', '.join(self.METHODS)}, isolation_forest; got {method!r}")
        if action not in self.ACTIONS:
            raise ConfigError(f"preprocess.outlier_action: expected one of {list(self.ACTIONS)}, got {action!r}")
        if not float(threshold) > 0:
            raise ConfigError(f"preprocess.outlier_threshold: expected a positive number, got {threshold}")
        self.columns, self.method, self.threshold, self.action = list(columns), method, float(threshold), action
        self.low: dict[str, float] = {}
        self.high: dict[str, float] = {}

    def fit_statistics(self, stats: ColumnStatistics) -> OutlierFilter:
        t = self.threshold
        if self.method == "zscore":
            center, spread = stats.mean(), stats.std()
            low, high = center - t * spread, center + t * spread
        else:
            q1, q3 = stats.quantile(0.25), stats.quantile(0.75)
            low, high = q1 - t * (q3 - q1), q3 + t * (q3 - q1)
        self.low = {k: (v if np.isfinite(v) else -np.inf) for k, v in select(stats, self.columns, low).items()}
        self.high = {k: (v if np.isfinite(v) else np.inf) for k, v in select(stats, self.columns, high).items()}
        return self

    def outlier_rows(self, columns: Columns) -> np.ndarray:
        """True where any column is outside its bounds."""
        flags = np.zeros(len(columns[self.columns[0]]), dtype=bool) if self.columns else np.zeros(0, bool)
        for name in self.columns:
            values = columns[name]
            flags |= (values < self.low[name]) | (values > self.high[name])
        return flags

    def transform(self, columns: Columns) -> Columns:
        out = dict(columns)
        if self.action == "flag":
            out["outlier"] = self.outlier_rows(columns).astype(np.float64)
        elif self.action == "clip":
            for name in self.columns:
                out[name] = np.clip(columns[name], self.low[name], self.high[name])
        return out


class IsolationForestFilter(Step):
    """Rows a scikit-learn isolation forest scores as anomalous (score > ``threshold``, Liu et al.
    2008: ~0.5 normal, -> 1 anomalous): ``drop`` removes them from training (prediction never
    drops a row), ``flag`` appends an ``outlier`` column (1 where anomalous).

    Where the forest comes from decides what it reveals:

    - fitted on a table at hand (:meth:`fit_rows`: ``preprocess.reference``, a public table, or the
      one table of a centralised run), ``forest`` holds its trees as arrays
      (:mod:`astroscale_fl.preprocessing.forest`): it is in ``preprocessing.json``, every node and
      the exported model score rows with it, and ``flag`` works in prediction too;
    - otherwise (federated fitting from statistics) each node fits its own forest on its own rows
      (the first :data:`FIT_ROWS` it encodes, after imputation); it never leaves the node and is
      not in ``preprocessing.json``, so only ``drop`` is possible.
    """

    kind = "isolation_forest"
    FIT_ROWS = 65_536
    ACTIONS = ("drop", "flag")

    def __init__(self, columns: list[str], threshold: float, seed: int = 0, action: str = "drop"):
        if not 0.0 < float(threshold) < 1.0:
            raise ConfigError(f"preprocess.outlier_threshold: expected an anomaly score in (0, 1) for isolation_forest (e.g. 0.6), got {threshold}")
        if action not in self.ACTIONS:
            raise ConfigError(f"preprocess.outlier_action: expected one of {list(self.ACTIONS)} for isolation_forest, got {action!r}")
        self.columns, self.threshold, self.seed, self.action = list(columns), float(threshold), int(seed), action
        self.forest: dict | None = None

    def _fit(self, matrix: np.ndarray):
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=100, random_state=self.seed).fit(matrix[: self.FIT_ROWS])

    def fit_rows(self, columns: Columns) -> IsolationForestFilter:
        """Fit the shared forest on a table's rows (after imputation); it goes into ``preprocessing.json``."""
        self.forest = export_forest(self._fit(np.column_stack([columns[c] for c in self.columns])))
        self.__dict__.pop("_scorer", None)
        return self

    def outlier_rows(self, columns: Columns) -> np.ndarray:
        """True where the forest (the shared one, else the node's own, fitted on first use) scores a
        row above the threshold."""
        matrix = np.column_stack([columns[c] for c in self.columns])
        if self.forest is not None:
            scorer = self.__dict__.get("_scorer")
            if scorer is None:
                scorer = self._scorer = CompleteForest(self.forest)
            return scorer.scores(matrix) > self.threshold
        if self.action != "drop":
            raise DataError("preprocess.outlier_action=flag with isolation_forest needs a forest fitted on a table "
                            "(preprocess.reference); a node's own forest stays on the node")
        forest = self.__dict__.get("_forest")
        if forest is None:
            forest = self._forest = self._fit(matrix)
        return -forest.score_samples(matrix) > self.threshold

    def transform(self, columns: Columns) -> Columns:
        if self.action != "flag":
            return columns
        return {**columns, "outlier": self.outlier_rows(columns).astype(np.float64)}

    @classmethod
    def from_state(cls, state: dict) -> IsolationForestFilter:
        return super().from_state({"action": "drop", "forest": None, **state})  # files from before shared forests


class Scaler(Step):
    """Centre and scale columns: ``robust`` (median, IQR), ``standard`` (mean, std) or ``minmax``
    (to [0, 1]), then clip to ``[-clip, clip]`` (``clip=None``: no clipping).

    A column with zero spread keeps a scale of 1, as scikit-learn does. Clipping matters:
    catalogue columns such as photometric errors have tails hundreds of IQRs long, which
    destabilise plain SGD.
    """

    kind = "scaler"
    learns = True
    METHODS = ("robust", "standard", "minmax")

    def __init__(self, columns: list[str], method: str = "robust", clip: float | None = 10.0):
        if method not in self.METHODS:
            raise ConfigError(f"preprocess.scaling: expected one of {list(self.METHODS)}, got {method!r}")
        if clip is not None and not clip > 0:
            raise ConfigError(f"preprocess.clip: expected a positive number or null, got {clip}")
        self.columns, self.method = list(columns), method
        self.clip = None if clip is None else float(clip)
        self.center: dict[str, float] = {}
        self.scale: dict[str, float] = {}

    def fit_statistics(self, stats: ColumnStatistics) -> Scaler:
        if self.method == "robust":
            center, spread = stats.quantile(0.5), stats.quantile(0.75) - stats.quantile(0.25)
        elif self.method == "standard":
            center, spread = stats.mean(), stats.std()
        else:
            center, spread = stats.minimum, stats.maximum - stats.minimum
        center = np.where(np.isfinite(center), center, 0.0)
        spread = np.where(np.isfinite(spread) & (spread > 1e-12), spread, 1.0)
        self.center = select(stats, self.columns, center)
        self.scale = select(stats, self.columns, spread)
        return self

    def transform(self, columns: Columns) -> Columns:
        out = dict(columns)
        for name in self.columns:
            scaled = (columns[name] - self.center[name]) / self.scale[name]
            out[name] = scaled if self.clip is None else np.clip(scaled, -self.clip, self.clip, out=scaled)
        return out


class TargetScaler(Step):
    """Standardise the target for training; ``inverse`` maps model outputs back to its units."""

    kind = "target_scaler"
    learns = True

    def __init__(self, target: str):
        self.target = target
        self.mean = 0.0
        self.std = 1.0

    def fit_statistics(self, stats: ColumnStatistics) -> TargetScaler:
        self.mean = select(stats, [self.target], stats.mean())[self.target]
        std = select(stats, [self.target], stats.std())[self.target]
        self.mean = self.mean if np.isfinite(self.mean) else 0.0
        self.std = std if np.isfinite(std) and std > 1e-12 else 1.0
        return self

    def transform(self, columns: Columns) -> Columns:
        return {self.target: (np.asarray(columns[self.target], dtype=np.float64) - self.mean) / self.std}

    def inverse(self, values: np.ndarray) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.std + self.mean
