"""Preprocessing: mergeable statistics, fit/transform steps with JSON state, and the pipeline.

- :mod:`.sketch`: the exactly mergeable quantile sketch;
- :mod:`.statistics`: per-column statistics a node (or a record batch) contributes to a fit;
- :mod:`.derived`: formulas of derived features;
- :mod:`.base`: the step shape (fit from statistics, transform, JSON state);
- :mod:`.features`: derived-feature steps (named formulas, distance, polynomial, interactions, temporal);
- :mod:`.steps`: validation and learning steps (range check, impute, outliers, scale);
- :mod:`.pipeline`: a task's pipeline, fitted from merged statistics;
- :mod:`.schema`: the checked schema of ``preprocessing.json``;
- :mod:`.stream`: record batches of Parquet / CSV tables larger than memory.
"""

from astroscale_fl.preprocessing.base import Step
from astroscale_fl.preprocessing.features import (
    DerivedFeatures,
    DistanceFeature,
    InteractionFeatures,
    PolynomialFeatures,
    TemporalFeatures,
)
from astroscale_fl.preprocessing.pipeline import (
    STEP_TYPES,
    Options,
    Pipeline,
    as_columns,
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

__all__ = [
    "STEP_TYPES",
    "ColumnStatistics",
    "DerivedFeatures",
    "DistanceFeature",
    "Imputer",
    "InteractionFeatures",
    "IsolationForestFilter",
    "Options",
    "OutlierFilter",
    "Pipeline",
    "PolynomialFeatures",
    "RangeValidator",
    "Scaler",
    "Step",
    "TargetScaler",
    "TemporalFeatures",
    "as_columns",
]
