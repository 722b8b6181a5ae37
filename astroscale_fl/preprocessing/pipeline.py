"""The preprocessing pipeline of a task: raw input columns -> float32 model features.

Row-wise steps (validation, derived features) run first; the statistics a fit needs are taken
on their output (:meth:`Pipeline.compute_statistics`, one record batch or one node at a time,
merged with :meth:`ColumnStatistics.merge`); the learning steps (imputer, outliers, scaler, target
scaler) are then fitted from the merged statistics (:meth:`Pipeline.fit_statistics`). One table,
a federation and a public reference all go through these two calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd

from astroscale_fl.errors import ConfigError, DataError
from astroscale_fl.preprocessing import chunks, derived, schema
from astroscale_fl.preprocessing.base import Columns, Step
from astroscale_fl.preprocessing.chunks import CHUNK_ROWS, parallel_map
from astroscale_fl.preprocessing.features import (
    DerivedFeatures,
    DistanceFeature,
    InteractionFeatures,
    PolynomialFeatures,
    TemporalFeatures,
)
from astroscale_fl.preprocessing.statistics import ColumnStatistics
from astroscale_fl.preprocessing.steps import (
    Imputer,
    IsolationForestFilter,
    OutlierFilter,
    RangeValidator,
    Scaler,
    TargetScaler,
)

FEATURES = ("distance_pc", "polynomial", "interactions", "temporal")
STEP_TYPES: dict[str, type[Step]] = {cls.kind: cls for cls in (
    RangeValidator, DerivedFeatures, DistanceFeature, PolynomialFeatures, InteractionFeatures, TemporalFeatures,
    Imputer, OutlierFilter, IsolationForestFilter, Scaler, TargetScaler)}


@dataclass(frozen=True)
class Options:
    """The ``preprocess`` settings that shape a pipeline (defaults: validate, median, robust, clip 10)."""

    validate: bool = True
    impute: str = "median"
    order_by: str | None = None
    scaling: str = "robust"
    clip: float | None = 10.0
    outliers: str = "none"
    outlier_threshold: float = 3.0
    outlier_action: str = "drop"
    features: tuple[str, ...] = ()
    feature_columns: tuple[str, ...] | None = None
    polynomial_degree: int = 2
    min_parallax_snr: float = 5.0
    parallax_column: str = "parallax"
    parallax_error_column: str = "parallax_error"
    time_column: str | None = None
    seed: int = 0  # of the node's isolation forest

    @classmethod
    def from_config(cls, section) -> Options:
        """Options from a ``cfg.preprocess`` section (keys it lacks keep their defaults)."""
        names = {f.name for f in fields(cls)}
        values = {k: section.get(k) for k in names if section is not None and k in section}
        for key in ("features", "feature_columns"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)


def as_columns(frame: Mapping[str, Any] | pd.DataFrame, names: list[str], time_column: str | None = None) -> Columns:
    """float64 arrays of ``names`` (a time column as MJD) from a DataFrame or mapping of column -> values."""
    out = {}
    for name in names:
        if name == time_column:
            out[name] = derived.to_mjd(np.asarray(frame[name]).reshape(-1))
        else:
            out[name] = np.asarray(frame[name], dtype=np.float64).reshape(-1)
    return out


def _rows(frame, keep: np.ndarray | None):
    """The ``keep`` rows of a DataFrame or mapping of column -> values (all of them when None)."""
    if keep is None or keep.all():
        return frame
    return frame.loc[keep] if isinstance(frame, pd.DataFrame) else {k: np.asarray(v)[keep] for k, v in frame.items()}


def _drops_rows(step) -> bool:
    """Whether ``step`` removes outlying training rows (``preprocess.outlier_action=drop``)."""
    return isinstance(step, (OutlierFilter, IsolationForestFilter)) and step.action == "drop"


def _impute_scale_clip(steps, clip: float | None, out: np.ndarray, starts, offsets, keep: np.ndarray | None) -> None:
    """Impute + scale + clip fused, one cache-sized chunk of rows at a time: chunk ``starts[i]`` of
    the input rows fills ``out`` from row ``offsets[i]`` (``keep``: the chunk's rows to use).

    Each column is computed over the whole chunk into a row of a float32 block (contiguous
    writes), and the block's kept rows are copied out transposed, so rows are selected once per
    chunk rather than once per column."""
    scratch = np.empty(CHUNK_ROWS)
    block = np.empty((len(steps), CHUNK_ROWS), dtype=np.float32)
    for start, offset in zip(starts, offsets):
        for j, (values, center, inverse_scale, filled) in enumerate(steps):
            chunk = values[start: start + CHUNK_ROWS]
            part = scratch[: len(chunk)]
            np.subtract(chunk, center, out=part)
            part *= inverse_scale
            if clip is not None:
                np.clip(part, -clip, clip, out=part)
                filled = min(max(filled, -clip), clip)
            np.copyto(part, filled, where=np.isnan(part))
            block[j, : len(part)] = part
        rows = block[:, : len(part)].T
        _copy_rows(rows, None if keep is None else keep[start: start + CHUNK_ROWS], out, offset)


def _copy_rows(rows: np.ndarray, mask: np.ndarray | None, out: np.ndarray, offset: int) -> None:
    """``out[offset:]`` = the ``mask`` rows of ``rows``: the runs between the few dropped rows are
    copied slice by slice (a boolean row selection of a 2-D array is ~10x slower); many dropped rows
    fall back to one selection."""
    if mask is None or mask.all():
        out[offset: offset + len(rows)] = rows
        return
    dropped = np.flatnonzero(~mask)
    if dropped.size > len(rows) // 256:
        out[offset: offset + len(rows) - dropped.size] = rows[mask]
        return
    begin = 0
    for stop in [*dropped.tolist(), len(rows)]:
        if stop > begin:
            out[offset: offset + stop - begin] = rows[begin: stop]
            offset += stop - begin
        begin = stop + 1


class Pipeline:
    """Feature steps (raw inputs -> model features) plus the target scaler.

    ``inputs`` are the raw columns a user supplies, ``features`` the columns the model sees.
    """

    def __init__(self, inputs: list[str], features: list[str], steps: list[Step], target: TargetScaler, validate: bool = True):
        self.inputs, self.features, self.steps, self.target = list(inputs), list(features), steps, target
        self.validate = bool(validate)
        learning = [i for i, s in enumerate(steps) if isinstance(s, (Imputer, OutlierFilter, IsolationForestFilter, Scaler))]
        self._split = learning[0] if learning else len(steps)

    @classmethod
    def build(cls, task, scaling: str = "robust", clip: float | None = 10.0, options: Options | None = None) -> Pipeline:
        """The pipeline of a task: validate, derive, impute, (outliers), scale (and clip)."""
        opts = options or Options(scaling=scaling, clip=clip)
        inputs = list(task.input_names)
        features = inputs + list(task.derived)
        steps: list[Step] = [RangeValidator({f.name: (f.low, f.high) for f in task.inputs}), DerivedFeatures(list(task.derived))]

        def need(column: str | None, key: str) -> None:
            if not column:
                raise ConfigError(f"{key}: expected a column name")
            if column not in inputs:
                inputs.append(column)

        unknown = [f for f in opts.features if f not in FEATURES]
        if unknown:
            raise ConfigError(f"preprocess.features: unknown feature(s) {unknown}; expected some of {list(FEATURES)}")
        chosen = list(opts.feature_columns) if opts.feature_columns else list(task.input_names)
        bad = [c for c in chosen if c not in task.input_names]
        if bad:
            raise ConfigError(f"preprocess.feature_columns: {bad} are not inputs of the task; inputs are {task.input_names}")
        if "distance_pc" in opts.features:
            need(opts.parallax_column, "preprocess.parallax_column")
            need(opts.parallax_error_column, "preprocess.parallax_error_column")
            steps.append(DistanceFeature(opts.parallax_column, opts.parallax_error_column, opts.min_parallax_snr))
            features.append("distance_pc")
        if "temporal" in opts.features:
            need(opts.time_column, "preprocess.time_column")
            steps.append(TemporalFeatures(opts.time_column))
            features += steps[-1].outputs
        for kind, step_type in (("polynomial", PolynomialFeatures), ("interactions", InteractionFeatures)):
            if kind in opts.features:
                steps.append(step_type(chosen, opts.polynomial_degree) if kind == "polynomial" else step_type(chosen))
                features += steps[-1].outputs
        if opts.order_by:
            need(opts.order_by, "preprocess.order_by")
        learned = list(features)
        steps.append(Imputer(learned, opts.impute, opts.order_by))
        if opts.outliers == "isolation_forest":
            if opts.outlier_action not in IsolationForestFilter.ACTIONS:
                raise ConfigError("preprocess.outlier_action: preprocess.outliers=isolation_forest supports drop or flag "
                                  f"(a forest has no bounds to clip to), got {opts.outlier_action!r}")
            steps.append(IsolationForestFilter(learned, opts.outlier_threshold, opts.seed, opts.outlier_action))
        elif opts.outliers != "none":
            steps.append(OutlierFilter(learned, opts.outliers, opts.outlier_threshold, opts.outlier_action))
        steps.append(Scaler(learned, opts.scaling, opts.clip))
        if opts.outliers != "none" and opts.outlier_action == "flag":
            features.append("outlier")
        return cls(inputs, features, steps, TargetScaler(task.target), opts.validate)

    @classmethod
    def from_config(cls, task, cfg) -> Pipeline:
        """The task's pipeline with the run config's ``preprocess`` settings."""
        options = Options.from_config(cfg.preprocess)
        return cls.build(task, options=Options(**{**options.__dict__, "seed": int(cfg.get("seed", 0))}))

    @property
    def time_column(self) -> str | None:
        return next((s.column for s in self.steps if isinstance(s, TemporalFeatures)), None)

    def _columns(self, frame, names: list[str]) -> Columns:
        present = frame.columns if isinstance(frame, pd.DataFrame) else frame.keys()
        missing = [c for c in names if c not in present]
        if missing:
            raise DataError(f"missing input column(s) {missing}; expected {names}")
        return as_columns(frame, names, self.time_column)

    def _row_stage(self, columns: Columns, validated: bool = False) -> Columns:
        """Row-wise steps; ``validated``: rows passed :meth:`quarantine`, so the range check has nothing to do."""
        for step in self.steps[: self._split]:
            if not (validated and self.validate and isinstance(step, RangeValidator)):
                columns = step.transform(columns)
        return columns

    @property
    def statistics_columns(self) -> list[str]:
        """Columns whose statistics fit the pipeline: the learned features and the target."""
        return [f for f in self.features if f != "outlier"] + [self.target.target]

    # --- validation -------------------------------------------------------------------------

    def quarantine(self, frame, with_target: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows that fail validation: (row fails, then for the failing rows only: failing column, reason).

        A finite value outside its column's physical range or an infinite one fails (``NaN`` is
        missing and imputed); so does a missing target when ``with_target``. With
        ``preprocess.validate=false`` only a missing target fails.
        """
        columns = self._columns(frame, self.inputs)
        validator = self.steps[0]
        n = len(next(iter(columns.values())))
        labels, reasons = [], []
        first = np.full(n, -1, dtype=np.int64)
        target = np.asarray(frame[self.target.target], dtype=np.float64).reshape(-1) if with_target else None
        if self.validate and isinstance(validator, RangeValidator):
            _, first = validator.failures(columns, finite=target)  # the target check in the same sweep
            for name, (lo, hi) in validator.ranges.items():
                labels.append(name)
                reasons.append(f"outside the physical range [{lo:g}, {hi:g}] or infinite")
        elif target is not None:
            first[~np.isfinite(target)] = len(labels)
        if target is not None:
            labels.append(self.target.target)
            reasons.append("target missing or not finite")
        failing = first >= 0
        index = first[failing]
        return failing, np.array(labels, dtype=object)[index], np.array(reasons, dtype=object)[index]

    # --- fitting ------------------------------------------------------------------------------

    def statistics_frame(self, frame) -> dict[str, np.ndarray]:
        """The valid, derived columns whose statistics fit the pipeline (before imputation)."""
        failing, _, _ = self.quarantine(frame)
        columns = self._columns(frame, self.inputs)
        columns[self.target.target] = np.asarray(frame[self.target.target], dtype=np.float64)
        if failing.any():
            columns = {k: v[~failing] for k, v in columns.items()}
        columns = self._row_stage(columns, validated=True)
        for step in self.steps:  # statistics see raw times: the first epoch is what they fit
            if isinstance(step, TemporalFeatures):
                columns[step.outputs[3]] = columns[step.outputs[3]] + step.first_epoch
        return columns

    def compute_statistics(self, frame, failing: np.ndarray | None = None, into: ColumnStatistics | None = None) -> ColumnStatistics:
        """A node's (or a record batch's) share of a fit: statistics of its valid, derived columns
        (``failing``: :meth:`quarantine`'s row mask when the caller already has it; ``into``:
        statistics of earlier batches to add these rows to, in place)."""
        if all(isinstance(s, RangeValidator) or (isinstance(s, DerivedFeatures) and not s.names) for s in self.steps[: self._split]):
            # nothing derived: statistics of the input columns themselves, failing rows skipped, not copied out
            failing = self.quarantine(frame)[0] if failing is None else failing
            columns = self._columns(frame, self.inputs)
            columns[self.target.target] = np.asarray(frame[self.target.target], dtype=np.float64).reshape(-1)
            return ColumnStatistics.compute(columns, self.statistics_columns, exclude=failing if failing.any() else None, into=into)
        return ColumnStatistics.compute(self.statistics_frame(frame), self.statistics_columns, into=into)

    def statistics_of(self, batches: Iterable) -> ColumnStatistics:
        """Statistics of a stream of record batches (merged as they come: memory stays flat)."""
        total = None
        for batch in batches:
            total = self.compute_statistics(batch, into=total)
        if total is None:
            raise DataError("no rows to fit preprocessing on")
        return total

    def fit_statistics(self, stats: ColumnStatistics) -> Pipeline:
        """Fit every learning step from (possibly merged) column statistics."""
        for step in self.steps:
            if isinstance(step, RangeValidator):
                step.invalid_counts = {}
            elif isinstance(step, TemporalFeatures):
                step.fit_statistics(stats)
                stats = stats.shifted(step.outputs[3], -step.first_epoch)
            elif step.learns:
                step.fit_statistics(stats)
        self.target.fit_statistics(stats)
        return self

    def fit(self, frame) -> Pipeline:
        """Fit on the rows of one table (target included); an isolation forest is fitted on the
        table's valid rows after imputation and kept in the state."""
        failing = self.quarantine(frame)[0]
        self.fit_statistics(self.compute_statistics(frame, failing))
        forest = next((s for s in self.steps if isinstance(s, IsolationForestFilter)), None)
        if forest is not None:
            columns = self._row_stage(self._columns(_rows(frame, ~failing), self.inputs), validated=True)
            forest.fit_rows(self._learned_until(forest, columns))
        return self

    def _learned_until(self, step, columns: Columns) -> Columns:
        """``columns`` (after the row-wise steps) through the learned steps before ``step``."""
        for before in self.steps[self._split:self.steps.index(step)]:
            columns = before.transform(columns)
        return columns

    # --- transforming -------------------------------------------------------------------------

    def transform_columns(self, frame, validated: bool = False) -> Columns:
        """Raw inputs -> every feature column (float64), before stacking."""
        columns = self._row_stage(self._columns(frame, self.inputs), validated)
        for step in self.steps[self._split:]:
            columns = step.transform(columns)
        return columns

    def transform_features(self, frame, out: np.ndarray | None = None, validated: bool = False,
                           keep: np.ndarray | None = None) -> np.ndarray:
        """Raw inputs (DataFrame or mapping of column -> values) -> float32 matrix (rows x features).

        ``out`` (e.g. a slice of a memory-mapped tensor file) receives the rows when given;
        ``validated``: the rows passed :meth:`quarantine` (training), so the range check is skipped;
        ``keep``: a boolean mask of the rows to transform (the others are skipped, never copied out)."""
        learned = self.steps[self._split:]
        fused = (len(learned) == 2 and isinstance(learned[0], Imputer) and learned[0].method in ("median", "mean")
                 and isinstance(learned[1], Scaler) and learned[0].columns == learned[1].columns == self.features)
        if not fused:
            columns = self.transform_columns(_rows(frame, keep), validated)
            n = len(columns[self.features[0]])
            out = np.empty((n, len(self.features)), dtype=np.float32) if out is None else out
            for j, name in enumerate(self.features):
                out[:, j] = columns[name]
            return out
        columns = self._row_stage(self._columns(frame, self.inputs), validated)
        rows = len(columns[self.features[0]])
        starts = np.arange(0, rows, CHUNK_ROWS)
        kept = np.full(len(starts), CHUNK_ROWS) if keep is None else np.add.reduceat(keep, starts, dtype=np.int64) if rows else starts
        if keep is None and rows:
            kept[-1] = rows - starts[-1]
        offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
        out = np.empty((int(offsets[-1]), len(self.features)), dtype=np.float32) if out is None else out
        imputer, scaler = learned
        steps = [(columns[name], scaler.center[name], 1.0 / scaler.scale[name], (imputer.fill[name] - scaler.center[name]) / scaler.scale[name])
                 for name in self.features]
        threads = min(chunks.threads(), len(starts))
        parallel_map(lambda part: _impute_scale_clip(steps, scaler.clip, out, starts[part::threads], offsets[part::threads], keep),
                     range(threads), rows)
        return out

    def transform_target(self, frame, keep: np.ndarray | None = None) -> np.ndarray:
        """Target column -> standardised float32 vector (of the ``keep`` rows when given)."""
        values = np.asarray(frame[self.target.target], dtype=np.float64)
        return self.target.transform({self.target.target: values if keep is None else values[keep]})[self.target.target].astype(np.float32)

    def outlier_rows(self, frame) -> np.ndarray:
        """Rows ``preprocess.outlier_action=drop`` removes from training (all False otherwise)."""
        dropping = next((s for s in self.steps if _drops_rows(s)), None)
        if dropping is None:
            return np.zeros(len(frame[self.inputs[0]]), dtype=bool)  # nothing to drop: no transform to run
        return dropping.outlier_rows(self._learned_until(dropping, self._row_stage(self._columns(frame, self.inputs))))

    # --- state --------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "features": self.features,
            "validate": self.validate,
            "steps": [{"kind": s.kind, "state": s.state_dict()} for s in self.steps],
            "target": self.target.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Pipeline:
        """Rebuild a fitted pipeline from :meth:`state_dict` output, validated field by field
        (a one-line :class:`DataError` names the first bad field)."""
        checked = schema.validate_pipeline(state)
        steps = [STEP_TYPES[s["kind"]].from_state(s["state"]) for s in checked["steps"]]
        target = TargetScaler.from_state(checked["target"])
        return cls(checked["inputs"], checked["features"], steps, target, checked.get("validate", True))  # type: ignore[arg-type]
