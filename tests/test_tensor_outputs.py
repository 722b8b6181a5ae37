"""Tensor outputs beyond the NPY files: the Arrow IPC file of `astroscale-fl preprocess --arrow`,
and the staging of batches sliced from memory-mapped tensors (pinned + non-blocking on CUDA)."""

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from astroscale_fl.data.tensor_files import ARROW, FEATURES, ROW_IDS, TARGET, encode_table, open_arrow, open_tensors
from astroscale_fl.errors import DataError
from tests.conftest import cli_env
from tests.test_out_of_core import OVERRIDES, catalog_pipeline, write_catalog


def assert_arrow_matches_npy(directory, features):
    """features.arrow, memory-mapped, holds exactly the rows of the NPY files, column by column."""
    before = pa.total_allocated_bytes()
    table = open_arrow(directory)
    # uncompressed IPC over a memory map: the columns point into the map, nothing is read into Arrow's heap
    assert pa.total_allocated_bytes() - before < 4096
    tensors = open_tensors(directory)
    assert table.schema.names == features + ["target", "row_id"]
    assert all(table.schema.field(name).type == pa.float32() for name in features + ["target"])
    assert table.num_rows == len(tensors["features"]) > 0
    for j, name in enumerate(features):
        column = table.column(name).to_numpy()
        np.testing.assert_array_equal(column, tensors["features"][:, j])
    np.testing.assert_array_equal(table.column("target").to_numpy(), tensors["target"])
    np.testing.assert_array_equal(table.column("row_id").to_numpy(), tensors["row_ids"])


def test_encode_table_writes_arrow_ipc_equal_to_npy(tmp_path):
    path = write_catalog(tmp_path / "cat", files=2, rows=6_000)
    pipeline = catalog_pipeline(path)
    summary = encode_table(path, pipeline, tmp_path / "enc", chunk_rows=2_500, id_column="id", arrow=True)
    assert summary.quarantined == 6 and summary.written == 12_000 - 6
    assert_arrow_matches_npy(tmp_path / "enc", pipeline.features)
    assert not [p for p in (tmp_path / "enc").iterdir() if ".tmp-" in p.name]


def test_arrow_names_clashing_with_its_own_columns_fail_before_writing(tmp_path):
    path = write_catalog(tmp_path / "cat", files=1, rows=1_000)
    pipeline = catalog_pipeline(path)
    pipeline.features = pipeline.features[:-1] + ["row_id"]
    with pytest.raises(DataError, match="row_id"):
        encode_table(path, pipeline, tmp_path / "enc", arrow=True)
    assert not (tmp_path / "enc").exists()


def test_preprocess_command_arrow_flag(tmp_path):
    path = write_catalog(tmp_path / "cat", files=1, rows=4_000)
    out = subprocess.run([sys.executable, "-m", "astroscale_fl.cli", "preprocess", "--input", str(path), "--output", str(tmp_path / "enc"),
                          "--arrow", "--no-progress", *OVERRIDES[1:], "task.id_column=id"],
                         capture_output=True, text=True, env=cli_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    for name in (FEATURES, TARGET, ROW_IDS, ARROW):
        assert (tmp_path / "enc" / name).is_file(), name
    assert_arrow_matches_npy(tmp_path / "enc", catalog_pipeline(path).features)


def _memmapped_tensors(tmp_path, rows=5_000):
    path = write_catalog(tmp_path / "cat", files=1, rows=rows)
    encode_table(path, catalog_pipeline(path), tmp_path / "enc", id_column="id")
    tensors = open_tensors(tmp_path / "enc")
    assert isinstance(tensors["features"], np.memmap)
    return torch.from_numpy(tensors["features"]), torch.from_numpy(tensors["target"])


def _train(features, target, device):
    """One seeded epoch of the project's loop; the model's final parameters on the CPU."""
    from omegaconf import OmegaConf

    from astroscale_fl.learning.models import build_model
    from astroscale_fl.learning.training import make_optimizer, shuffled_batches, train_local

    model = build_model(OmegaConf.create({"name": "mlp", "widths": [16], "activation": "relu", "dropout": 0.0}), features.shape[1], 0).to(device)
    optimizer = make_optimizer(model.parameters(), "sgd", 0.05)
    report = train_local(model, optimizer, features, target, shuffled_batches(len(target), 256, 1, torch.Generator().manual_seed(0)))
    return report, [p.detach().cpu() for p in model.parameters()]


def test_training_slices_memory_mapped_batches_on_cpu(tmp_path):
    from astroscale_fl.learning.steps import BatchStager

    features, target = _memmapped_tensors(tmp_path)
    index = torch.tensor([3, 0, 4_000, 17])
    stager = BatchStager(torch.device("cpu"))
    x, y = stager.pair(features, target, index)
    assert torch.equal(x, features[index]) and torch.equal(y, target[index])
    assert not stager._buffers  # rows already on the model's device: indexed in place, no staging buffer
    mapped, mapped_params = _train(features, target, "cpu")
    in_memory, memory_params = _train(features.clone(), target.clone(), "cpu")
    assert mapped.steps == in_memory.steps == -(-len(target) // 256) and mapped.loss == in_memory.loss
    assert all(torch.equal(a, b) for a, b in zip(mapped_params, memory_params))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_from_memory_map_are_pinned_and_non_blocking(tmp_path):
    from astroscale_fl.learning.steps import _stager

    features, target = _memmapped_tensors(tmp_path)
    device = torch.device("cuda")
    staged, staged_params = _train(features, target, device)  # rows stay on the host, batches are staged
    resident, resident_params = _train(features.to(device), target.to(device), device)
    buffers = [slot[0] for slots in _stager(device)._buffers.values() for slot in slots if slot[0] is not None]
    assert buffers and all(b.is_pinned() for b in buffers)
    assert staged.steps == resident.steps
    assert abs(staged.loss - resident.loss) < 1e-5
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(staged_params, resident_params))


def test_table_of_one_batch_is_decoded_once(tmp_path, monkeypatch):
    from astroscale_fl.data import tensor_files

    path = write_catalog(tmp_path / "cat", files=2, rows=3_000)
    reads = []
    real = tensor_files.iter_batches
    monkeypatch.setattr(tensor_files, "iter_batches", lambda *a, **k: reads.append(1) or real(*a, **k))
    progress = []
    one = encode_table(path, catalog_pipeline(path), tmp_path / "one", id_column="id", progress=progress.append)
    assert len(reads) == 1 and sum(progress) == 2 * 6_000  # one decode, still two passes of progress
    many = encode_table(path, catalog_pipeline(path), tmp_path / "many", chunk_rows=1_000, id_column="id", cache_bytes=0)
    assert len(reads) == 3  # a table of several batches and no cache streams twice: memory stays at one batch
    assert one.written == many.written == 6_000 - 6
    for name in (FEATURES, TARGET, ROW_IDS):
        np.testing.assert_array_equal(np.load(tmp_path / "one" / name), np.load(tmp_path / "many" / name))
