"""One door to a node's data: a simulated and a deployed node answer the same questions alike."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from astroscale_fl import config, run_config
from astroscale_fl.data import nodes
from astroscale_fl.data.node_data import DeployedNode, SimulatedNode, node_data
from astroscale_fl.data.tasks import get_task
from astroscale_fl.errors import DataError
from astroscale_fl.federation import client
from astroscale_fl.preprocessing import Pipeline

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def run():
    cfg = run_config.validate(config.compose(["task.min_parallax_snr=40", "partition=iid", "federation.num_nodes=6"]))
    return cfg, Pipeline.from_config(get_task(cfg.task), cfg)


def test_a_deployed_copy_of_a_simulated_nodes_rows_gives_the_same_statistics_split_and_tensors(run, tmp_path):
    cfg, pipeline = run
    columns = client.pipeline_columns(cfg)
    simulated = node_data(cfg, {"partition-id": 2, "num-partitions": 6})
    (tmp_path / "site").mkdir()
    simulated.frame(columns).to_parquet(tmp_path / "site" / "train.parquet", index=False)
    deployed = node_data(cfg, {"data-dir": str(tmp_path / "site")})
    assert isinstance(simulated, SimulatedNode) and isinstance(deployed, DeployedNode)
    assert (simulated.name, deployed.name) == ("partition-2", "site")
    assert (simulated.data_dir, simulated.state_dir) == (None, None)
    assert deployed.state_dir == tmp_path / "site" / ".astroscale"
    for a, b in zip(simulated.split(columns), deployed.split(columns), strict=True):
        pd.testing.assert_frame_equal(a[list(columns.names)], b[list(columns.names)])
    (s_stats, s_rows, s_quarantined), (d_stats, d_rows, d_quarantined) = simulated.statistics(pipeline, columns), deployed.statistics(pipeline)
    assert (s_rows, s_quarantined) == (d_rows, d_quarantined) and s_rows > 0
    for name, values in s_stats.to_arrays().items():
        np.testing.assert_allclose(d_stats.to_arrays()[name], values, rtol=1e-12, err_msg=name)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit(nodes.task_split(cfg)[0])
    own, streamed = simulated.tensors(pipeline, columns, CPU), deployed.tensors(pipeline, columns, CPU)
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(own, name), getattr(streamed, name)), name
    assert deployed.shared_tensors(pipeline, "k", CPU) is None  # a deployed node encodes its own rows


def test_node_name_and_salt(run, tmp_path):
    cfg, _ = run
    assert node_data(cfg, {"partition-id": 1, "num-partitions": 6, "node-name": "gaia"}).name == "gaia"
    assert node_data(cfg, {"data-dir": str(tmp_path), "node-name": "gaia"}).name == "gaia"
    assert node_data(cfg, {"partition-id": 1}).salt != node_data(cfg, {"partition-id": 2}).salt
    assert node_data(cfg, {"data-dir": str(tmp_path / "a")}).salt != node_data(cfg, {"data-dir": str(tmp_path / "b")}).salt  # no table: its path


def test_a_node_config_that_names_no_data_is_refused(run):
    cfg, _ = run
    with pytest.raises(DataError, match="expected data-dir=<dir> \\(deployment\\) or partition-id"):
        node_data(cfg, {}).rows()


def test_one_node_object_per_run_and_node_config_and_a_deployed_salt_follows_its_table(run, tmp_path):
    cfg, _ = run
    node = node_data(cfg, {"partition-id": 3, "num-partitions": 6})
    assert node_data(cfg, {"num-partitions": 6, "partition-id": 3}) is node  # derived once per run: rows, salt
    assert node.rows() is node.rows() and len(node.rows()) > 0
    another_run = run_config.validate(config.compose(["task.min_parallax_snr=40", "partition=iid", "federation.num_nodes=6"]))
    assert node_data(another_run, {"partition-id": 3, "num-partitions": 6}) is not node
    np.testing.assert_array_equal(node_data(another_run, {"partition-id": 3, "num-partitions": 6}).rows(), node.rows())
    deployed = node_data(cfg, {"data-dir": str(tmp_path)})
    pd.DataFrame({"id": [1, 2, 3], "x": [0.5, 1.5, 2.5]}).to_parquet(tmp_path / "train.parquet", index=False)
    before = deployed.salt
    pd.DataFrame({"id": [1, 2, 3, 4], "x": [0.5, 1.5, 2.5, 3.5]}).to_parquet(tmp_path / "train.parquet", index=False)
    assert node_data(cfg, {"data-dir": str(tmp_path)}) is deployed and deployed.salt != before  # an edited table is read again
