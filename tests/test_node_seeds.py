"""A deployed node's batch order follows its data's content, not the folder it sits in."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import torch

from astroscale_fl.data.node_arrays import content_digest
from astroscale_fl.data.node_data import node_data
from astroscale_fl.federation.client import batch_generator


def _node_dir(root, seed: int, rows: int = 500):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    pd.DataFrame({"id": np.arange(rows), "x": rng.normal(size=rows), "y": rng.normal(size=rows)}).to_parquet(
        root / "train.parquet")
    return root


def _order(node_config: dict, server_round: int = 3) -> torch.Tensor:
    node = node_data(None, node_config)  # a node's salt reads no run config
    return torch.randperm(1000, generator=batch_generator(7, server_round, node))


def test_the_same_data_in_another_folder_shuffles_the_same(tmp_path):
    original = _node_dir(tmp_path / "site-a" / "node", seed=1)
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(original, moved, copy_function=shutil.copy)  # a plain copy: new mtimes
    os.utime(moved / "train.parquet", (1, 1))
    other = _node_dir(tmp_path / "site-b" / "node", seed=2)
    assert torch.equal(_order({"data-dir": str(original)}), _order({"data-dir": str(moved)}))
    assert torch.equal(_order({"data-dir": str(original)}), _order({"data-dir": f"{tmp_path}/site-a/../site-a/node"}))
    assert not torch.equal(_order({"data-dir": str(original)}), _order({"data-dir": str(other)}))
    assert not torch.equal(_order({"data-dir": str(original)}), _order({"data-dir": str(original)}, server_round=4))


def test_a_table_of_several_files_is_identified_by_all_of_them(tmp_path):
    a = _node_dir(tmp_path / "a" / "train", seed=1)
    (a / "train.parquet").rename(a / "part-0.parquet")
    shutil.copy(_node_dir(tmp_path / "extra", seed=3) / "train.parquet", a / "part-1.parquet")
    b = tmp_path / "b" / "train"
    shutil.copytree(a, b, copy_function=shutil.copy)
    assert content_digest(a) == content_digest(b)
    (b / "part-1.parquet").unlink()
    assert content_digest(a) != content_digest(b)  # the edit is seen: the memo is keyed by the files' stats
    assert not torch.equal(_order({"data-dir": str(a.parent)}), _order({"data-dir": str(b.parent)}))


def test_simulated_nodes_still_shuffle_by_partition():
    assert torch.equal(_order({"partition-id": 2}), _order({"partition-id": 2}))
    assert not torch.equal(_order({"partition-id": 2}), _order({"partition-id": 3}))


def test_a_csv_is_identified_by_all_its_bytes_read_in_blocks(tmp_path):
    """A CSV has no Parquet footer: it is hashed whole (streamed), so any edit changes the digest and a copy does not."""
    a = tmp_path / "a.csv"
    a.write_text("ra,dec\n" + "".join(f"{i},{i % 90}\n" for i in range(300_000)))
    b = tmp_path / "b.csv"
    shutil.copy(a, b)
    assert content_digest(a) == content_digest(b)
    with open(b, "r+b") as handle:  # same size, one byte changed in the middle
        handle.seek(a.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(b"7" if byte != b"7" else b"8")
    os.utime(b, (5, 5))
    assert content_digest(a) != content_digest(b)
