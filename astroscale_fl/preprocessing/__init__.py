"""Preprocessing: mergeable statistics, fit/transform steps with JSON state, and the pipeline.

- :mod:`.sketch`: the exactly mergeable quantile sketch;
- :mod:`.statistics`: per-column statistics a node (or a record batch) contributes to a fit;
- :mod:`.derived`: formulas of derived features;
- :mod:`.steps`: the steps (validate, derive, impute, outliers, scale) scikit-learn style;
- :mod:`.pipeline`: a task's pipeline, fitted from merged statistics;
- :mod:`.schema`: the checked schema of ``preprocessing.json``;
- :mod:`.stream`: record batches of Parquet / CSV tables larger than memory.
"""

from astroscale_fl.preprocessing.pipeline import Options, Pipeline, as_columns
from astroscale_fl.preprocessing.statistics import ColumnStatistics
from astroscale_fl.preprocessing.steps import (STEP_TYPES, DerivedFeatures, DistanceFeature, Imputer, InteractionFeatures,
                                               IsolationForestFilter,
                                               OutlierFilter, PolynomialFeatures, RangeValidator, Scaler, Step, TargetScaler,
                                               TemporalFeatures)

__all__ = ["STEP_TYPES", "ColumnStatistics", "DerivedFeatures", "DistanceFeature", "Imputer", "InteractionFeatures", "IsolationForestFilter", "Options",
           "OutlierFilter", "Pipeline", "PolynomialFeatures", "RangeValidator", "Scaler", "Step", "TargetScaler",
           "TemporalFeatures", "as_columns"]
