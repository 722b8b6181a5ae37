"""Row-wise steps that add derived feature columns (formulas in :mod:`.derived`)."""

from __future__ import annotations

import itertools

import numpy as np

from astroscale_fl.errors import ConfigError
from astroscale_fl.preprocessing import derived
from astroscale_fl.preprocessing.base import Columns, Step, select
from astroscale_fl.preprocessing.statistics import ColumnStatistics


class DerivedFeatures(Step):
    """Append named derived feature columns (formulas in :mod:`.derived`)."""

    kind = "derived_features"

    def __init__(self, names: list[str]):
        unknown = [n for n in names if n not in derived.DERIVED_FEATURES]
        if unknown:
            raise ConfigError(f"unknown derived feature(s) {unknown}; expected some of {sorted(derived.DERIVED_FEATURES)}")
        self.names = list(names)

    def transform(self, columns: Columns) -> Columns:
        out = dict(columns)
        for name in self.names:
            out[name] = np.asarray(derived.DERIVED_FEATURES[name](out), dtype=np.float64)
        return out


class DistanceFeature(Step):
    """``distance_pc`` = 1000 / parallax where parallax / error >= ``min_snr``, else missing."""

    kind = "distance_pc"

    def __init__(self, parallax: str, parallax_error: str, min_snr: float):
        self.parallax, self.parallax_error, self.min_snr = parallax, parallax_error, float(min_snr)

    def transform(self, columns: Columns) -> Columns:
        return {**columns, "distance_pc": derived.distance_pc(columns[self.parallax], columns[self.parallax_error], self.min_snr)}


class PolynomialFeatures(Step):
    """Powers ``col^2 .. col^degree`` of each chosen column (named ``col^k``)."""

    kind = "polynomial"

    def __init__(self, columns: list[str], degree: int):
        if int(degree) < 2:
            raise ConfigError(f"preprocess.polynomial_degree: expected an integer >= 2, got {degree}")
        self.columns, self.degree = list(columns), int(degree)

    @property
    def outputs(self) -> list[str]:
        return [f"{c}^{k}" for c in self.columns for k in range(2, self.degree + 1)]

    def transform(self, columns: Columns) -> Columns:
        out = dict(columns)
        for c in self.columns:
            for k in range(2, self.degree + 1):
                out[f"{c}^{k}"] = columns[c] ** k
        return out


class InteractionFeatures(Step):
    """Pairwise products ``a*b`` of the chosen columns."""

    kind = "interactions"

    def __init__(self, columns: list[str]):
        self.columns = list(columns)

    @property
    def outputs(self) -> list[str]:
        return [f"{a}*{b}" for a, b in itertools.combinations(self.columns, 2)]

    def transform(self, columns: Columns) -> Columns:
        out = dict(columns)
        for a, b in itertools.combinations(self.columns, 2):
            out[f"{a}*{b}"] = columns[a] * columns[b]
        return out


class TemporalFeatures(Step):
    """From a time column (MJD or ISO 8601): decimal year, day-of-year sin/cos, days since the
    first epoch. The first epoch is learned: the minimum time over the (merged) statistics."""

    kind = "temporal"
    learns = True

    def __init__(self, column: str):
        self.column = column
        self.first_epoch = 0.0

    @property
    def outputs(self) -> list[str]:
        return [f"{self.column}_year", f"{self.column}_doy_sin", f"{self.column}_doy_cos", f"{self.column}_days"]

    def fit_statistics(self, stats: ColumnStatistics) -> TemporalFeatures:
        # statistics are taken with first_epoch 0, so <column>_days holds the raw MJD there
        first = select(stats, [self.outputs[3]], stats.minimum)[self.outputs[3]]
        self.first_epoch = first if np.isfinite(first) else 0.0
        return self

    def transform(self, columns: Columns) -> Columns:
        mjd = derived.to_mjd(columns[self.column])
        year, phase = derived.decimal_year_and_day_phase(mjd)
        angle = 2 * np.pi * phase
        names = self.outputs
        return {**columns, names[0]: year, names[1]: np.sin(angle), names[2]: np.cos(angle), names[3]: mjd - self.first_epoch}
