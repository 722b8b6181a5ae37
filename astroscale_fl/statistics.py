"""Mergeable column statistics: what a node shares so that all nodes scale alike.

For each column a node computes its count, number of missing values, sum, sum of squares,
minimum, maximum and a quantile summary. Summaries from any number of nodes merge into the
statistics of the pooled rows without any row leaving its node:

- moments, counts, min and max merge exactly;
- the quantile summary of ``n`` values is the ``k`` quantiles at probabilities
  ``(j + 1/2) / k``, each standing for ``n / k`` values. A merged quantile is the weighted
  quantile of all summary points; its rank error is at most ``1 / (2k)`` of the pooled count
  (each node's summary is off by at most ``n_i / (2k)`` ranks, and those add up).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SKETCH_SIZE = 512


@dataclass
class ColumnStatistics:
    """Statistics of several columns (arrays indexed by column; sketch is columns x k)."""

    columns: list[str]
    count: np.ndarray  # non-missing values
    missing: np.ndarray
    total: np.ndarray
    total_sq: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    sketch_values: np.ndarray
    sketch_weights: np.ndarray

    @classmethod
    def compute(cls, frame, columns: list[str], k: int = SKETCH_SIZE) -> ColumnStatistics:
        """Statistics of ``columns`` over the rows of ``frame`` (a DataFrame or a mapping of
        column -> array; NaN counts as missing)."""
        values = np.column_stack([np.asarray(frame[c], dtype=np.float64).reshape(-1) for c in columns])
        finite = np.isfinite(values)
        count = finite.sum(axis=0).astype(np.float64)
        zeroed = np.where(finite, values, 0.0)
        probs = (np.arange(k) + 0.5) / k
        sketch = np.zeros((len(columns), k))
        weights = np.zeros((len(columns), k))
        minimum = np.full(len(columns), np.inf)
        maximum = np.full(len(columns), -np.inf)
        for j in range(len(columns)):  # per column (a handful), each fully vectorised
            col = values[finite[:, j], j]
            if col.size:
                sketch[j] = np.quantile(col, probs, method="inverted_cdf")
                weights[j] = col.size / k
                minimum[j], maximum[j] = col.min(), col.max()
        return cls(
            columns=list(columns), count=count, missing=(~finite).sum(axis=0).astype(np.float64),
            total=zeroed.sum(axis=0), total_sq=(zeroed**2).sum(axis=0), minimum=minimum, maximum=maximum,
            sketch_values=sketch, sketch_weights=weights,
        )

    @classmethod
    def merge(cls, parts: list[ColumnStatistics]) -> ColumnStatistics:
        """Statistics of the union of the rows the parts were computed on."""
        if not parts:
            raise ValueError("no statistics to merge")
        columns = parts[0].columns
        for part in parts[1:]:
            if part.columns != columns:
                raise ValueError(f"statistics over different columns: {part.columns} vs {columns}")
        stack = lambda name: np.stack([getattr(p, name) for p in parts])  # noqa: E731
        return cls(
            columns=list(columns), count=stack("count").sum(0), missing=stack("missing").sum(0),
            total=stack("total").sum(0), total_sq=stack("total_sq").sum(0),
            minimum=stack("minimum").min(0), maximum=stack("maximum").max(0),
            sketch_values=np.concatenate([p.sketch_values for p in parts], axis=1),
            sketch_weights=np.concatenate([p.sketch_weights for p in parts], axis=1),
        )

    def mean(self) -> np.ndarray:
        return self.total / np.maximum(self.count, 1)

    def std(self) -> np.ndarray:
        """Population standard deviation."""
        var = self.total_sq / np.maximum(self.count, 1) - self.mean() ** 2
        return np.sqrt(np.maximum(var, 0.0))

    def quantile(self, q: float) -> np.ndarray:
        """Approximate ``q`` quantile per column (rank error <= 1/(2k) of the count)."""
        out = np.full(len(self.columns), np.nan)
        for j in range(len(self.columns)):
            values, inverse = np.unique(self.sketch_values[j], return_inverse=True)
            weights = np.bincount(inverse.reshape(-1), weights=self.sketch_weights[j], minlength=len(values))
            # noisy (DP) histograms have negative counts: the running max keeps the CDF monotone
            cumulative = np.maximum.accumulate(np.cumsum(weights)) if len(weights) else weights
            if cumulative.size == 0 or cumulative[-1] <= 0:
                continue
            idx = np.searchsorted(cumulative, q * cumulative[-1], side="left")
            out[j] = values[min(idx, len(values) - 1)]
        return out

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Numeric arrays for a Flower ArrayRecord (column names travel separately)."""
        return {name: getattr(self, name) for name in (
            "count", "missing", "total", "total_sq", "minimum", "maximum", "sketch_values", "sketch_weights")}

    @classmethod
    def from_arrays(cls, columns: list[str], arrays: dict[str, np.ndarray]) -> ColumnStatistics:
        return cls(columns=list(columns), **{k: np.asarray(v, dtype=np.float64) for k, v in arrays.items()})
