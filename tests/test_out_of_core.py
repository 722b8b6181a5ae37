"""Tables larger than a memory budget: streamed statistics and encoding, tensor files,
`astroscale-fl preprocess`, a node's memory-mapped tensors and training from a Parquet directory."""

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from astroscale_fl import config, run_config
from astroscale_fl.data import holdout
from astroscale_fl.data.tasks import get_task
from astroscale_fl.data.tensor_files import (
    FEATURES,
    QUARANTINE,
    ROW_IDS,
    TARGET,
    cached_tensors,
    encode_table,
    open_tensors,
)
from astroscale_fl.preprocessing import Options, Pipeline
from tests.conftest import cli_env

COLUMNS = ["ra", "dec", "teff", "logg", "fe_h", "snr", "parallax"]
OVERRIDES = ["task=catalog", "task.features=[ra,dec,teff,logg,fe_h,snr,parallax]", "task.target=z"]


def write_catalog(directory, files=4, rows=50_000, seed=0):
    """A directory of Parquet files with the survey columns (a few bad rows in each)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(files):
        frame = pd.DataFrame({"ra": rng.uniform(0, 360, rows), "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, rows))),
                              "teff": rng.normal(5500, 800, rows).clip(3000, 9000), "logg": rng.normal(4, 0.6, rows).clip(0, 5.5), "fe_h": rng.normal(-0.3, 0.4, rows),
                              "snr": rng.exponential(50, rows), "parallax": rng.exponential(1.5, rows)})
        frame["z"] = 1e-5 * (frame.teff / 5500 + frame.fe_h) + rng.normal(0, 1e-6, rows)
        frame.loc[rng.random(rows) < 0.02, "logg"] = np.nan
        frame.loc[:2, "dec"] = 95.0  # out of the physical range: quarantined
        frame.insert(0, "id", np.arange(i * rows, (i + 1) * rows))
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), directory / f"part-{i}.parquet", row_group_size=10_000)
    return directory


def catalog_pipeline(path, **options):
    cfg = run_config.validate(config.compose(OVERRIDES + [f"task.path={path}"]))
    return Pipeline.build(get_task(cfg.task), options=Options(**options))


def test_streamed_encoding_equals_in_memory_and_quarantines(tmp_path):
    path = write_catalog(tmp_path / "cat", files=3, rows=20_000)
    frame = pd.read_parquet(path)
    summary = encode_table(path, catalog_pipeline(path), tmp_path / "enc", chunk_rows=7_000, id_column="id")
    assert (summary.rows_in, summary.quarantined, summary.written) == (60_000, 9, 59_991)
    tensors = open_tensors(tmp_path / "enc")
    pooled = catalog_pipeline(path).fit(frame)
    good = frame[~pooled.quarantine(frame)[0]]
    np.testing.assert_array_equal(tensors["row_ids"], good.id.to_numpy())
    np.testing.assert_allclose(tensors["features"], pooled.transform_features(good), atol=1e-6)  # batch fit = pooled fit
    np.testing.assert_allclose(tensors["target"], pooled.transform_target(good), atol=1e-6)
    quarantine = pd.read_parquet(tmp_path / "enc" / QUARANTINE)
    assert set(quarantine.column) == {"dec"} and len(quarantine) == 9 and "[-90, 90]" in quarantine.reason[0]
    assert not list((tmp_path / "enc").glob("*.tmp-*"))


def test_encoding_memory_stays_at_one_batch(tmp_path):
    """800k rows x 8 columns (51 MB as float64) encoded in 5k-row batches: peak Python allocation
    (the fixed-size sketches, ~1 MB per column, plus one batch) stays well under the table's size
    and does not grow with the table (1 file vs 8)."""
    # one small encoding first, untraced: the first use's imports would otherwise count in the 1-file peak
    warm = write_catalog(tmp_path / "warm-up", files=1, rows=2_000)
    encode_table(warm, catalog_pipeline(warm), tmp_path / "enc-warm-up", chunk_rows=5_000, id_column="id")
    peaks = []
    for files in (1, 8):
        path = write_catalog(tmp_path / f"cat{files}", files=files, rows=100_000, seed=files)
        tracemalloc.start()
        encode_table(path, catalog_pipeline(path), tmp_path / f"enc{files}", chunk_rows=5_000, id_column="id", cache_bytes=0)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    table_bytes = 800_000 * 8 * 8
    assert peaks[1] < table_bytes / 1.5, peaks
    assert peaks[1] < 1.1 * peaks[0], peaks  # flat in the table's length


def test_cached_tensors_reused_and_invalidated(tmp_path):
    path = write_catalog(tmp_path / "cat", files=1, rows=5_000)
    pipeline = catalog_pipeline(path).fit(pd.read_parquet(path))
    first = cached_tensors(tmp_path / "cache", path, pipeline, "train", None)
    assert len(list((tmp_path / "cache").iterdir())) == 1 and isinstance(first["features"], np.memmap)
    cached_tensors(tmp_path / "cache", path, pipeline, "train", None)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # reused
    other = catalog_pipeline(path, scaling="standard").fit(pd.read_parquet(path))
    cached_tensors(tmp_path / "cache", path, other, "train", None)
    write_catalog(tmp_path / "cat", files=1, rows=5_000, seed=9)  # the table changes
    cached_tensors(tmp_path / "cache", path, pipeline, "train", None)
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_node_streams_statistics_and_trains_from_memory_mapped_tensors(tmp_path):
    """A deployed node's data directory holding a directory of Parquet files: its statistics and its
    tensors stream; the local validation share is the rows whose id hashes under the fraction."""
    import torch

    from astroscale_fl.data.node_data import node_data
    from astroscale_fl.federation.client import node_tensors

    data_dir = tmp_path / "node"
    write_catalog(data_dir / "train", files=2, rows=20_000)
    cfg = run_config.validate(config.compose(OVERRIDES + [f"task.path={data_dir / 'train'}", "preprocess.chunk_rows=4000"]))
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg)
    node = node_data(cfg, {"data-dir": str(data_dir)})
    stats, rows, quarantined = node.statistics(pipeline)
    frame = pd.read_parquet(data_dir / "train")
    is_val = holdout.is_local_val({"id": frame.id.to_numpy()}, int(cfg.seed))
    assert rows == (~is_val).sum() and 0.08 < is_val.mean() < 0.12
    pipeline.fit_statistics(stats)
    arrays = node.arrays(pipeline)
    assert all(isinstance(arrays[k], np.memmap) for k in ("train_x", "train_y", "val_x", "val_y"))
    assert len(arrays["train_y"]) == rows - quarantined and len(arrays["train_y"]) + len(arrays["val_y"]) == len(frame) - 6
    tensors = node_tensors(cfg, node, pipeline, "k", torch.device("cpu"))
    assert np.shares_memory(tensors.train_x.numpy(), arrays["train_x"]) or np.array_equal(tensors.train_x.numpy(), arrays["train_x"])
    assert len(list((data_dir / ".astroscale-cache").iterdir())) == 2  # train and val tensor files, reused by node_tensors


def _preprocess_in_process(capsys, *args) -> tuple[int, str]:
    """The preprocess command's entry in this process: (exit code, stderr)."""
    from astroscale_fl.preprocessing.cli import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_preprocess_command_writes_tensor_files(tmp_path, capsys):
    """The first command as a real process; the others through the same entry in this process
    (a fresh interpreter per command cost seconds each)."""
    path = write_catalog(tmp_path / "cat", files=2, rows=5_000)
    out = subprocess.run([sys.executable, "-m", "astroscale_fl.cli", "preprocess", "--input", str(path), "--output", str(tmp_path / "enc"),
                          *OVERRIDES[1:], "preprocess.chunk_rows=3000", "task.id_column=id"],
                         capture_output=True, text=True, env=cli_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "rows in 10,000 / written 9,994 / quarantined 6" in out.stdout and "records/s" in out.stdout
    for name in (FEATURES, TARGET, ROW_IDS, QUARANTINE, "preprocessing.json"):
        assert (tmp_path / "enc" / name).is_file(), name
    # apply the fitted JSON to new rows: same encoding, no refit
    code, err = _preprocess_in_process(capsys, "--input", path, "--output", tmp_path / "enc2", "--preprocessing",
                                       tmp_path / "enc" / "preprocessing.json", *OVERRIDES[1:], "task.id_column=id")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "enc" / FEATURES), np.load(tmp_path / "enc2" / FEATURES))
    bad_state = json.loads((tmp_path / "enc" / "preprocessing.json").read_text())
    bad_state["steps"][-1]["state"]["scale"]["teff"] = 0
    (tmp_path / "bad.json").write_text(json.dumps(bad_state))
    code, err = _preprocess_in_process(capsys, "--input", path, "--output", tmp_path / "enc3", "--preprocessing",
                                       tmp_path / "bad.json", *OVERRIDES[1:])
    assert code == 2 and err.strip().count("\n") == 0 and "scale.teff" in err
    assert not (tmp_path / "enc3" / FEATURES).exists()
    code, err = _preprocess_in_process(capsys, "--input", path, "--output", tmp_path / "enc4", "task.features=[ra,nope]",
                                       "task.target=z")
    assert code == 2 and "missing column(s) ['nope']" in err and not (tmp_path / "enc4").exists()


@pytest.mark.slow
def test_train_catalog_from_a_directory_of_parquet_files(tmp_path):
    from astroscale_fl.data.nodes import task_split
    from astroscale_fl.federation.server import run_federation
    from astroscale_fl.train import preflight
    from strategies import build_strategy
    from tests.inprocess import InProcessGrid

    path = write_catalog(tmp_path / "cat", files=3, rows=4_000)
    overrides = OVERRIDES + [f"task.path={path}", "task.id_column=id", "federation.num_nodes=3", "federation.num_rounds=1",
                             "model.widths=[16]", "federation.metrics_port=0", "output.publish=false", "federation.checkpoint=false"]
    cfg = preflight(run_config.validate(config.compose(overrides)))
    train, _ = task_split(cfg)
    metrics = run_federation(InProcessGrid(3), cfg, build_strategy(cfg), tmp_path / "run", show_progress=False)
    assert metrics["rounds"] == 1 and np.isfinite(metrics["test_r2"])
    assert 0.8 * len(train) < metrics["train_rows"] < len(train)
