"""The chunked statistics pass (cache-sized chunks, narrow bincounts, column threads) against the
direct definitions: the dense float32-bit sketch of all finite values and numpy's moments."""

from types import SimpleNamespace

import numpy as np
import pytest

from astroscale_fl.preprocessing import Pipeline, sketch
from astroscale_fl.preprocessing.chunks import CHUNK_ROWS
from astroscale_fl.preprocessing.statistics import ColumnStatistics


def test_chunked_statistics_equal_the_direct_definitions():
    rng = np.random.default_rng(4)
    n = 5 * CHUNK_ROWS + 123  # several chunks and a ragged last one, enough rows for the threads
    columns = {
        "positive": rng.lognormal(8, 1, n),  # the all-positive key path
        "mixed": rng.normal(0, 3, n),  # signs, and -0.0 / 0.0 below
        "huge": rng.normal(0, 1, n) * 1e39,  # beyond float32: finite, out of the sketch
        "empty": np.full(n, np.nan),
    }
    columns["mixed"][:1000] = -0.0
    columns["mixed"][1000:1100] = 0.0
    for name in ("positive", "mixed"):
        columns[name][rng.integers(0, n, 500)] = np.nan
        columns[name][rng.integers(0, n, 20)] = np.inf
        columns[name][rng.integers(0, n, 20)] = -np.inf
    columns["positive"][CHUNK_ROWS: 2 * CHUNK_ROWS] = np.nan  # a chunk with nothing finite
    exclude = rng.random(n) < 0.01
    stats = ColumnStatistics.compute(columns, list(columns), exclude=exclude)
    for j, name in enumerate(columns):
        values = columns[name][~exclude]
        finite = values[np.isfinite(values)]
        np.testing.assert_array_equal(stats.sketch[j], sketch.bin_counts(finite), err_msg=name)
        assert stats.count[j] == finite.size and stats.missing[j] == values.size - finite.size
        if finite.size:
            assert stats.minimum[j] == finite.min() and stats.maximum[j] == finite.max()
            np.testing.assert_allclose(stats.mean()[j], finite.mean(), rtol=1e-12)
            np.testing.assert_allclose(stats.std()[j], finite.std(), rtol=1e-10)
        else:
            assert np.isnan(stats.mean()[j]) and stats.minimum[j] == np.inf
    # chunks merge like record batches: the two halves merged give the same sketch and moments
    half = n // 2
    parts = [ColumnStatistics.compute({k: v[s] for k, v in columns.items()}, list(columns), exclude=exclude[s])
             for s in (slice(0, half), slice(half, n))]
    merged = ColumnStatistics.merge(parts)
    np.testing.assert_array_equal(merged.sketch, stats.sketch)
    np.testing.assert_allclose(merged.mean_, stats.mean_, rtol=1e-12)
    np.testing.assert_array_equal(merged.quantile(0.5), stats.quantile(0.5))


@pytest.mark.parametrize("dropped_share", [0.0005, 0.2])  # run by run copies, then one row selection
def test_fused_transform_of_kept_rows_equals_transform_of_the_selected_rows(dropped_share):
    rng = np.random.default_rng(5)
    n = 3 * CHUNK_ROWS + 77
    frame = {"ra": rng.uniform(0, 360, n), "dec": rng.uniform(-90, 90, n), "z": rng.normal(0, 1, n)}
    frame["ra"][rng.random(n) < 0.05] = np.nan
    task = SimpleNamespace(input_names=["ra", "dec"], derived=[], target="z",
                           inputs=[SimpleNamespace(name="ra", low=0, high=360), SimpleNamespace(name="dec", low=-90, high=90)])
    pipeline = Pipeline.build(task).fit(frame)
    keep = rng.random(n) >= dropped_share
    keep[:CHUNK_ROWS] = True  # a chunk with nothing dropped
    fused = pipeline.transform_features(frame, keep=keep)
    selected = pipeline.transform_features({k: v[keep] for k, v in frame.items()})
    np.testing.assert_array_equal(fused, selected)


def test_cumulative_over_the_used_bins_equals_the_full_running_count():
    """The CDF is built over the bins between the first and last non-empty one; noisy (DP) counts,
    negative ones included, still give the full definition's running maximum of the running sum."""
    rng = np.random.default_rng(6)
    for trial in range(60):
        counts = sketch.bin_counts(rng.normal(rng.uniform(-5, 5), rng.uniform(0.01, 100), rng.integers(1, 3000)))
        if trial % 2:
            counts = counts + rng.integers(-2, 3, counts.size)
        counts[rng.integers(0, counts.size, 3)] -= 3
        np.testing.assert_array_equal(sketch.cumulative(counts), np.maximum.accumulate(np.cumsum(counts)))
