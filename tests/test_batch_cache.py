"""The budget-capped cache of decoded batches between the statistics pass and the encoding pass
(`preprocess.cache_bytes`): identical files with or without it, only uncached rows decoded twice,
memory bounded by its budget."""

import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from astroscale_fl import config, run_config
from astroscale_fl.data import tensor_files
from astroscale_fl.data.batch_cache import BatchCache
from astroscale_fl.data.tensor_files import FEATURES, PIPELINE, QUARANTINE, ROW_IDS, TARGET, encode_table
from tests.test_out_of_core import catalog_pipeline, write_catalog


def _batch(rows: int, start: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(start, start + rows, dtype=np.float64), "__row__": np.arange(start, start + rows)}


def test_cache_keeps_the_last_batches_within_its_budget():
    # rows estimated at 8 bytes (they take 16): every batch is offered, eviction keeps the budget
    cache = BatchCache(budget=10 * 16 * 100, total_rows=2_000, row_bytes=8)
    for start in range(0, 2_000, 100):
        cache.offer(start, 100, _batch(100, start), extra=start)
        assert cache.bytes <= cache.budget
    assert cache.start == 1_000 and cache.bytes == cache.budget  # a suffix: the last 10 batches
    replayed = list(cache.replay())
    assert [extra for _, _, extra in replayed] == list(range(1_000, 2_000, 100))
    np.testing.assert_array_equal(np.concatenate([b["x"] for _, b, _ in replayed]), np.arange(1_000, 2_000))
    assert cache.bytes == 0 and cache.start == 2_000  # released as replayed


def test_a_batch_the_cache_cannot_hold_empties_it():
    cache = BatchCache(budget=1_600, total_rows=300, row_bytes=16)
    cache.offer(0, 50, _batch(50, 0))
    cache.offer(50, 200, _batch(200, 50))  # 3,200 bytes > budget: what is kept must stay a suffix
    assert cache.start == 300 and cache.bytes == 0
    cache.offer(250, 50, _batch(50, 250))
    assert cache.start == 250
    strings = BatchCache(budget=None, total_rows=10, row_bytes=16)
    strings.offer(0, 10, {"t": np.array(["2020-01-01"] * 10, dtype=object)})
    assert strings.start == 10  # objects' nbytes is not their size: never cached


@pytest.mark.parametrize("cache_bytes", [None, 400_000])  # whole table / its last part
def test_cached_and_uncached_passes_write_identical_files(tmp_path, monkeypatch, cache_bytes):
    path = write_catalog(tmp_path / "cat", files=3, rows=8_000)
    decoded = []
    real = tensor_files.iter_batches

    def counting(*args, **kwargs):
        decoded.append(0)
        for batch in real(*args, **kwargs):
            decoded[-1] += len(batch["__row__"])
            yield batch

    monkeypatch.setattr(tensor_files, "iter_batches", counting)
    kept = []
    offer = BatchCache.offer
    monkeypatch.setattr(BatchCache, "offer", lambda self, *a, **k: (offer(self, *a, **k), kept.append((self.bytes, self.start)))[0])
    progress = []
    cached = encode_table(path, catalog_pipeline(path), tmp_path / "cached", chunk_rows=1_000, id_column="id",
                          cache_bytes=cache_bytes, progress=progress.append)
    budget, start = cache_bytes or 10**12, kept[-1][1]
    assert max(b for b, _ in kept) <= budget
    assert 0 < start < 24_000 if cache_bytes else start == 0
    # only the rows before the cached suffix are decoded again (whole batches: the cache starts at one)
    assert decoded == [24_000, start] if start else decoded == [24_000]
    assert sum(progress) == 2 * 24_000
    plain = encode_table(path, catalog_pipeline(path), tmp_path / "plain", chunk_rows=1_000, id_column="id", cache_bytes=0)
    assert (cached.rows_in, cached.written, cached.quarantined) == (plain.rows_in, plain.written, plain.quarantined)
    for name in (FEATURES, TARGET, ROW_IDS, PIPELINE):
        assert (tmp_path / "cached" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cached" / QUARANTINE), pd.read_parquet(tmp_path / "plain" / QUARANTINE))


def test_memory_with_a_cache_stays_within_its_budget(tmp_path, monkeypatch):
    """Memory held (numpy's, seen by tracemalloc, plus pyarrow's pool, where decoded columns live)
    sampled at every batch of the statistics pass: with a 2 MB cache it exceeds the streaming
    peak by about the budget, not by the 100k-row table (8 MB as float64)."""
    path = write_catalog(tmp_path / "cat", files=2, rows=50_000)
    samples = []
    offer = BatchCache.offer

    def sampled(self, *args, **kwargs):
        offer(self, *args, **kwargs)
        samples[-1] = max(samples[-1], tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes())

    monkeypatch.setattr(BatchCache, "offer", sampled)
    peaks = {}
    for budget in (0, 2 * 2**20, 0):  # the first run also pays one-off allocations (imports, pools)
        samples.append(0)
        tracemalloc.start()
        encode_table(path, catalog_pipeline(path), tmp_path / f"enc{budget}", chunk_rows=5_000, id_column="id", cache_bytes=budget)
        tracemalloc.stop()
        peaks[budget] = samples[-1]
    extra = peaks[2 * 2**20] - peaks[0]
    assert extra < 3 * 2**20, peaks  # the budget (+ a batch); keeping every batch would add ~10 MB


def test_cache_bytes_is_validated():
    base = ["task=catalog", "task.path=x.parquet", "task.features=[ra]", "task.target=z"]
    assert run_config.validate(config.compose(base)).preprocess.cache_bytes == 384 * 2**20
    with pytest.raises(Exception, match="preprocess.cache_bytes"):
        run_config.validate(config.compose(base + ["preprocess.cache_bytes=-1"]))


def test_unfused_pipeline_batches_fill_the_reused_output_buffers(tmp_path):
    """A pipeline outside the fused impute/scale path (z-score outliers flagged as an extra feature)
    encoded in many batches through the two alternating output buffers equals its transform of
    the whole table."""
    path = write_catalog(tmp_path / "cat", files=2, rows=3_000)
    frame = pd.read_parquet(path)
    pipeline = catalog_pipeline(path, outliers="zscore", outlier_action="flag").fit(frame)
    encode_table(path, pipeline, tmp_path / "enc", fit=False, chunk_rows=700, id_column="id")
    good = frame[~pipeline.quarantine(frame)[0]]
    np.testing.assert_array_equal(np.load(tmp_path / "enc" / FEATURES), pipeline.transform_features(good))
    assert "outlier" in pipeline.features
