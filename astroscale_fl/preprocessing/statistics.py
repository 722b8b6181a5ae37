"""Mergeable column statistics: what a node shares so that all nodes preprocess alike.

For each column a node computes its count of finite values, number of missing values, mean
and sum of squared deviations (merged with Chan et al.'s pairwise update, numerically stable),
minimum, maximum and a quantile sketch (:mod:`.sketch`). They are computed per record batch
and merged, so a table of any size streams through in bounded memory; statistics from any number
of nodes merge into those of the pooled rows without any row leaving its node:

- counts, min and max merge exactly, moments to float64 rounding;
- sketches merge exactly (bin counts add): quantiles of merged statistics are identical to
  quantiles of the pooled rows' statistics, within a relative 2**-8 of the exact quantile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from astroscale_fl.preprocessing import sketch
from astroscale_fl.preprocessing.chunks import CHUNK_ROWS, parallel_map

ARRAY_NAMES = ("count", "missing", "mean_", "m2", "minimum", "maximum", "sketch_index", "sketch_count")


@dataclass
class ColumnStatistics:
    """Statistics of several columns (arrays indexed by column; ``sketch`` is columns x bins)."""

    columns: list[str]
    count: np.ndarray  # finite values
    missing: np.ndarray
    mean_: np.ndarray
    m2: np.ndarray  # sum of squared deviations from the mean
    minimum: np.ndarray
    maximum: np.ndarray
    sketch: np.ndarray  # int64 bin counts (columns x sketch.NUM_BINS)
    offset: np.ndarray | None = None  # added to the sketched values (see shifted); local only, never sent
    # running counts per column (quantile's CDF), computed on first use; local only
    _cumulative: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def compute(cls, frame, columns: list[str], exclude: np.ndarray | None = None,
                into: ColumnStatistics | None = None) -> ColumnStatistics:
        """Statistics of ``columns`` over the rows of ``frame`` (a DataFrame or a mapping of
        column -> array; NaN and +-inf count as missing), leaving out the rows where ``exclude`` is True.

        Columns are read in cache-sized chunks of :data:`CHUNK_ROWS` rows (no column-sized
        temporaries) whose moments merge with Chan's update, columns spread over threads.
        ``into``: statistics of earlier rows, updated in place and returned (a stream of record
        batches then allocates one dense sketch, not one per batch)."""
        n = len(columns)
        if into is not None:
            if into.offset is not None or into.columns != list(columns):
                raise ValueError(f"cannot add statistics of {list(columns)} into shifted or other statistics")
            into._cumulative.clear()
            out = into
        else:
            out = cls(list(columns), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n),
                      np.full(n, np.inf), np.full(n, -np.inf), np.zeros((n, sketch.NUM_BINS), dtype=np.int64))
        arrays = [np.asarray(frame[name], dtype=np.float64).reshape(-1) for name in columns]
        rows = len(arrays[0]) if n else 0
        skips = None if exclude is None else [np.flatnonzero(exclude[s: s + CHUNK_ROWS]) for s in range(0, rows, CHUNK_ROWS)]
        parallel_map(lambda j: _column_statistics(out, j, arrays[j], skips), range(n), rows)
        return out

    @classmethod
    def merge(cls, parts: list[ColumnStatistics]) -> ColumnStatistics:
        """Statistics of the union of the rows the parts were computed on."""
        if not parts:
            raise ValueError("no statistics to merge")
        out = parts[0].copy()
        for part in parts[1:]:
            out.update(part)
        return out

    def copy(self) -> ColumnStatistics:
        return ColumnStatistics(list(self.columns), *(getattr(self, k).copy() for k in (
            "count", "missing", "mean_", "m2", "minimum", "maximum", "sketch")),
            offset=None if self.offset is None else self.offset.copy())

    def update(self, other: ColumnStatistics) -> ColumnStatistics:
        """Fold ``other`` (more rows of the same columns) into these statistics, in place."""
        if self.offset is not None or other.offset is not None:
            raise ValueError("shifted statistics do not merge")
        if other.columns != self.columns:
            raise ValueError(f"statistics over different columns: {other.columns} vs {self.columns}")
        total = self.count + other.count
        delta = other.mean_ - self.mean_
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(total > 0, other.count / total, 0.0)
        self.m2 = self.m2 + other.m2 + delta**2 * self.count * share
        self.mean_ = self.mean_ + delta * share
        self.count, self.missing = total, self.missing + other.missing
        self.minimum, self.maximum = np.minimum(self.minimum, other.minimum), np.maximum(self.maximum, other.maximum)
        self.sketch += other.sketch
        self._cumulative.clear()
        return self

    def shifted(self, column: str, offset: float) -> ColumnStatistics:
        """A copy with ``offset`` added to every value of ``column`` (location statistics move, spread does not)."""
        out = self.copy()
        j = out.columns.index(column)
        out.offset = np.zeros(len(out.columns)) if self.offset is None else self.offset.copy()
        out.mean_[j] += offset
        out.minimum[j] += offset
        out.maximum[j] += offset
        out.offset[j] += offset
        return out

    def mean(self) -> np.ndarray:
        return np.where(self.count > 0, self.mean_, np.nan)

    def std(self) -> np.ndarray:
        """Population standard deviation."""
        return np.where(self.count > 0, np.sqrt(np.maximum(self.m2, 0.0) / np.maximum(self.count, 1)), np.nan)

    def quantile(self, q: float) -> np.ndarray:
        """``q`` quantile per column (within a relative 2**-8 of the exact one; NaN if no values)."""
        offset = np.zeros(len(self.columns)) if self.offset is None else self.offset
        return np.array([sketch.quantile(self.sketch[j], q, self.minimum[j] - offset[j], self.maximum[j] - offset[j],
                                         self._cumulative_counts(j)) + offset[j] for j in range(len(self.columns))])

    def _cumulative_counts(self, j: int) -> np.ndarray:
        """Column ``j``'s CDF over the sketch bins, shared by the several quantiles a fit asks for."""
        if j not in self._cumulative:
            self._cumulative[j] = sketch.cumulative(self.sketch[j])
        return self._cumulative[j]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Numeric arrays for a Flower ArrayRecord (column names travel separately; the sketch
        travels sparse: the flat indices and counts of its non-empty bins)."""
        index, counts = sketch.to_sparse(self.sketch.reshape(-1))
        arrays = {k: getattr(self, k) for k in ARRAY_NAMES[:6]}
        return {**arrays, "sketch_index": index.astype(np.int64), "sketch_count": counts.astype(np.int64)}

    @classmethod
    def from_arrays(cls, columns: list[str], arrays: dict[str, np.ndarray]) -> ColumnStatistics:
        """Statistics from :meth:`to_arrays`' output (one node's reply)."""
        return cls.merge_arrays(columns, [arrays])

    @classmethod
    def merge_arrays(cls, columns: list[str], parts: list[dict[str, np.ndarray]]) -> ColumnStatistics:
        """The merge of many nodes' :meth:`to_arrays` outputs; their sparse sketches add up into one
        dense sketch at the end (a dense sketch per node would cost ~1 MB per column and node)."""
        if not parts:
            raise ValueError("no statistics to merge")
        empty = np.zeros((len(columns), 0), dtype=np.int64)
        moments, indices, counts = [], [], []
        for arrays in parts:
            missing = [k for k in ARRAY_NAMES if k not in arrays]
            if missing:
                raise ValueError(f"statistics lack array(s) {missing}")
            index = np.asarray(arrays["sketch_index"], dtype=np.int64).reshape(-1)
            count = np.asarray(arrays["sketch_count"], dtype=np.int64).reshape(-1)
            if index.size != count.size or (index.size and (index.min() < 0 or index.max() >= len(columns) * sketch.NUM_BINS)):
                raise ValueError("statistics sketch index out of range")
            numeric = {k: np.asarray(arrays[k], dtype=np.float64).reshape(-1) for k in ARRAY_NAMES[:6]}
            if any(v.size != len(columns) for v in numeric.values()):
                raise ValueError(f"statistics arrays do not have one value per column ({len(columns)})")
            moments.append(cls(list(columns), **numeric, sketch=empty.copy()))
            indices.append(index)
            counts.append(count)
        out = cls.merge(moments)
        flat = np.zeros(len(columns) * sketch.NUM_BINS, dtype=np.int64)
        np.add.at(flat, np.concatenate(indices), np.concatenate(counts))
        out.sketch = flat.reshape(len(columns), sketch.NUM_BINS)
        return out


def _chunk_moments(col: np.ndarray, total: float, count: int, repeats: int = 0, fill: float = 0.0) -> tuple[float, float]:
    """(mean, sum of squared deviations) of the ``count`` finite values of ``col`` other than
    ``repeats`` extra copies of ``fill`` (one chunk; chunks merge with Chan's update).
    ``total``: the sum of ``col``."""
    mean = (total - repeats * fill) / count
    m2 = np.einsum("i,i->", col, col) - repeats * fill * fill - count * mean * mean  # einsum: no BLAS threads to contend
    if m2 < 1e-4 * count * mean * mean:  # spread small against the mean: cancellation; centre first
        centred = col - mean
        m2 = np.einsum("i,i->", centred, centred) - repeats * (fill - mean) ** 2
    return mean, max(m2, 0.0)


def _filled(chunk: np.ndarray, skipped: np.ndarray, scratch: np.ndarray) -> tuple[np.ndarray, float] | None:
    """``chunk`` with its ``skipped`` positions overwritten by the first value kept (None: all skipped).

    Excluded rows are few (quarantined ones): a copy with a repeated kept value, whose repeats
    are subtracted from the moments and the sketch afterwards, is ~4x cheaper than a boolean
    selection, and min/max are unchanged by a value already in the chunk."""
    if skipped.size == chunk.size:
        return None
    at = 0
    if skipped[0] == 0:  # the first kept position: the first i with skipped[i] != i
        differs = skipped != np.arange(skipped.size)
        at = int(np.argmax(differs)) if differs.any() else skipped.size
    fill = chunk[at]
    col = scratch[: chunk.size]
    np.copyto(col, chunk)
    col[skipped] = fill
    return col, float(fill)


def _column_statistics(out: ColumnStatistics, j: int, values: np.ndarray, skips: list[np.ndarray] | None) -> None:
    """Add ``values`` into column ``j`` of ``out``, chunk by chunk (one thread per column;
    ``skips``: per chunk, the positions of the excluded rows)."""
    count, mean, m2 = float(out.count[j]), float(out.mean_[j]), float(out.m2[j])
    missing, low, high = float(out.missing[j]), float(out.minimum[j]), float(out.maximum[j])
    counts = out.sketch[j]
    scratch = None
    for i, start in enumerate(range(0, values.size, CHUNK_ROWS)):
        chunk = values[start: start + CHUNK_ROWS]
        skipped = skips[i] if skips is not None else None
        repeats, fill, col = 0, 0.0, chunk
        if skipped is not None and skipped.size:
            scratch = np.empty(CHUNK_ROWS) if scratch is None else scratch
            filled = _filled(chunk, skipped, scratch)
            if filled is None:
                continue
            (col, fill), repeats = filled, skipped.size
        total = np.add.reduce(col)
        if not np.isfinite(total):  # NaN or inf in the chunk: select the kept finite values
            if repeats:
                keep = np.ones(chunk.size, dtype=bool)
                keep[skipped] = False
                chunk = chunk[keep]
            col, repeats, fill = chunk[np.isfinite(chunk)], 0, 0.0
            missing += chunk.size - col.size
            if not col.size:
                continue
            total = np.add.reduce(col)
        size = col.size - repeats
        part_mean, part_m2 = _chunk_moments(col, total, size, repeats, fill)
        part_low, part_high = np.minimum.reduce(col), np.maximum.reduce(col)
        sketch.add_counts(counts, col, part_low, part_high)
        if repeats:
            counts[sketch.bin_of(fill)] -= repeats
        merged = count + size  # Chan et al.'s pairwise update, as in ColumnStatistics.update
        delta = part_mean - mean
        share = size / merged
        m2 = m2 + part_m2 + delta**2 * count * share
        mean = mean + delta * share
        count, low, high = merged, min(low, part_low), max(high, part_high)
    sketch.drop_non_finite(counts)
    out.count[j], out.missing[j], out.mean_[j], out.m2[j] = count, missing, mean, m2
    out.minimum[j], out.maximum[j] = low, high
