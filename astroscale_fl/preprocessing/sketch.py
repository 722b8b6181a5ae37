"""A fast, exactly mergeable quantile sketch: a histogram over the float32 bit pattern.

Every finite value is rounded to float32 and its bit pattern, mapped to an order-preserving
integer, is cut to its sign, exponent and the top :data:`MANTISSA_BITS` mantissa bits. That
integer indexes one of :data:`NUM_BINS` fixed bins (the same bins everywhere, as in HDR
histograms / DDSketch), and the sketch of a column is the count per bin. So

- building it is one ``np.bincount`` per column and batch (no sort, no per-row Python);
- merging is adding counts: the sketch of the union of node tables (or of record batches) is
  *identical* to the sketch of the pooled rows, so a federated fit equals the pooled fit bit for
  bit;
- error bound: the exact ``q`` quantile lies in the bin the sketch picks, and a bin spans at most
  a relative ``2**-MANTISSA_BITS`` of its values, so the estimate (interpolated linearly inside the
  bin, clamped to the exact min/max) is within a relative ``2**-MANTISSA_BITS`` (0.4 %) of the exact
  quantile of the pooled rows; equivalently its rank error is at most the mass of that one bin.

Values beyond float32's range (|x| > 3.4e38) fall out of the sketch (they still count in the
exact moments, min and max).
"""

from __future__ import annotations

import math

import numpy as np

MANTISSA_BITS = 8
_SHIFT = 23 - MANTISSA_BITS
_OFFSET = 1 << (31 - _SHIFT)  # keys run over [-OFFSET, OFFSET)
NUM_BINS = 2 * _OFFSET
RELATIVE_ERROR = 2.0**-MANTISSA_BITS
# keys of non-finite float32 (inf, nan): at and above the key of +inf, at and below that of -inf
_POS_INF_BIN = (0x7F800000 >> _SHIFT) + _OFFSET
_NEG_INF_BIN = ((-1 - 0x7F800000) >> _SHIFT) + _OFFSET


def bin_counts(values: np.ndarray) -> np.ndarray:
    """Counts per bin (int64, length :data:`NUM_BINS`) of the finite ``values``."""
    with np.errstate(over="ignore"):  # beyond float32's range -> +-inf: cleared below
        bits = np.asarray(values, dtype=np.float32).reshape(-1).view(np.int32)
    key = bits >> 31  # the only allocation besides the float32 copy; the rest is in place
    key &= 0x7FFFFFFF
    key ^= bits  # order-preserving: -1 - magnitude for negatives, magnitude for positives
    key >>= _SHIFT
    key += _OFFSET
    counts = np.bincount(key, minlength=NUM_BINS)
    counts[_POS_INF_BIN:] = 0
    counts[: _NEG_INF_BIN + 1] = 0
    return counts


def add_counts(counts: np.ndarray, values: np.ndarray, minimum: float, maximum: float) -> None:
    """Add the bin counts of ``values`` (finite, with these exact min and max) into ``counts``, in place.

    :func:`bin_counts` for a cache-sized chunk: only the bins between those of the min and the max
    are counted (``np.bincount`` then costs the chunk, not all :data:`NUM_BINS` bins), and when
    every value is positive the bit pattern already is the order-preserving key (3 passes fewer).
    Values beyond float32's range land in the non-finite bins: :func:`drop_non_finite` clears them.
    """
    with np.errstate(over="ignore"):  # beyond float32's range -> +-inf: the non-finite bins, cleared later
        low, high = bin_of(minimum), bin_of(maximum)
        bits = values.astype(np.float32).view(np.int32)
    if minimum > 0:  # no sign bit anywhere (-0.0 included): the bits are the key
        key = bits
        key >>= _SHIFT
    else:
        key = bits >> 31
        key &= 0x7FFFFFFF
        key ^= bits
        key >>= _SHIFT
    key -= low - _OFFSET
    counts[low: high + 1] += np.bincount(key, minlength=high - low + 1)


def bin_of(value: float) -> int:
    """:func:`bin_index` of one value (plain integers: no array overhead per chunk)."""
    with np.errstate(over="ignore"):  # beyond float32's range -> +-inf: a non-finite bin
        bits = int(np.float32(value).view(np.int32))
    return ((bits if bits >= 0 else -1 - (bits & 0x7FFFFFFF)) >> _SHIFT) + _OFFSET


def drop_non_finite(counts: np.ndarray) -> None:
    """Clear the bins of non-finite float32 (values beyond float32's range), in place."""
    counts[_POS_INF_BIN:] = 0
    counts[: _NEG_INF_BIN + 1] = 0


def bin_index(values: np.ndarray) -> np.ndarray:
    """The bin of each finite value (for a few values; :func:`bin_counts` is the fast path)."""
    bits = np.asarray(values, dtype=np.float32).reshape(-1).view(np.int32).astype(np.int64)
    ordered = np.where(bits >= 0, bits, -1 - (bits & 0x7FFFFFFF))
    return (ordered >> _SHIFT) + _OFFSET


def _bin_edge(index: np.ndarray) -> np.ndarray:
    """Lower value edge of bins ``index`` (the upper edge of bin i is the lower edge of i + 1)."""
    ordered = (np.asarray(index, dtype=np.int64) - _OFFSET) << _SHIFT
    bits = np.where(ordered >= 0, ordered, (-1 - ordered) | 0x80000000).astype(np.uint32)
    edge = bits.view(np.float32).astype(np.float64)  # a negative bin's lower edge is its largest magnitude
    return edge


def cumulative(counts: np.ndarray) -> np.ndarray:
    """Running counts (the CDF :func:`quantile` searches)."""
    if not counts.size:
        return counts
    used = counts != 0  # a column fills a few thousand of the bins: run over those only
    cdf = np.zeros(counts.size, dtype=np.result_type(counts.dtype, np.int64))
    if used.any():
        first, last = int(used.argmax()), counts.size - int(used[::-1].argmax())
        # noisy (DP) counts can be negative: the running maximum keeps the CDF monotone (identity otherwise)
        cdf[first:last] = np.maximum.accumulate(np.cumsum(counts[first:last]))
        if first:  # the empty bins before count too: the running maximum starts at 0
            np.maximum(cdf[first:last], 0, out=cdf[first:last])
        cdf[last:] = cdf[last - 1]
    return cdf


def quantile(counts: np.ndarray, q: float, minimum: float, maximum: float, cdf: np.ndarray | None = None) -> float:
    """The ``q`` quantile of the values a (merged) count vector summarises; NaN when empty
    (``cdf``: :func:`cumulative` of ``counts`` when already computed)."""
    cdf = cumulative(counts) if cdf is None else cdf
    total = cdf[-1] if cdf.size else 0
    if total <= 0:
        return float("nan")
    rank = q * (total - 1)  # numpy's default (linear) definition over ranks 0..n-1
    # the first bin whose running count exceeds rank; integer counts exceed rank iff they exceed
    # floor(rank), and an integer needle spares searchsorted a float copy of the whole CDF
    i = int(np.searchsorted(cdf, math.floor(rank), side="right")) if cdf.dtype.kind in "iu" else int(np.searchsorted(cdf, rank, side="right"))
    i = min(i, counts.size - 1)
    before = cdf[i - 1] if i > 0 else 0
    inside = (rank - before + 0.5) / max(cdf[i] - before, 1)
    lo, hi = _bin_edge(np.array([i, i + 1]))
    if not np.isfinite(hi):
        hi = maximum
    lo, hi = max(lo, minimum), min(hi, maximum)
    return float(np.clip(lo + min(max(inside, 0.0), 1.0) * (hi - lo), minimum, maximum))


def to_sparse(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bin indices, counts) of the non-empty bins: what travels in a statistics reply."""
    index = np.flatnonzero(counts)
    return index, counts[index]
