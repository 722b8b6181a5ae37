"""Simulated nodes' data: row selections of one shared task table, encoded once per pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType, RecordDict

from astroscale_fl import config, run_config
from astroscale_fl.data import node_arrays, nodes, task_table
from astroscale_fl.data.node_data import SimulatedNode, node_data
from astroscale_fl.data.tasks import get_task
from astroscale_fl.federation import client, engine, protocol
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import arrays_to_numpy
from astroscale_fl.preprocessing import Pipeline

BASE = ["task.min_parallax_snr=40", "partition=iid", "federation.num_nodes=12"]
CPU = torch.device("cpu")


def _fitted(overrides: list[str]):
    cfg = run_config.validate(config.compose(BASE + overrides))
    train, _ = nodes.task_split(cfg)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit(train)
    return cfg, pipeline, json.dumps(pipeline.state_dict(), sort_keys=True)


def _own_encoding(cfg, node, pipeline) -> dict[str, np.ndarray]:
    """The node's rows copied out of the task table and encoded on their own (what nodes did before)."""
    return node.arrays(pipeline, client.pipeline_columns(cfg))


@pytest.mark.parametrize("overrides", [[], ["preprocess.outliers=zscore", "preprocess.outlier_threshold=2.0"],
                                       ["preprocess.scaling=minmax", "preprocess.features=[polynomial]"]])
def test_a_simulated_nodes_rows_gathered_from_the_shared_encoding_equal_its_own_encoding(overrides):
    cfg, pipeline, key = _fitted(overrides)
    assert task_table.row_local(pipeline)
    client._TENSORS.clear()
    sizes = []
    for node in engine_nodes(cfg):
        tensors = client.node_tensors(cfg, node, pipeline, key, CPU)
        own = _own_encoding(cfg, node, pipeline)
        for name in ("train_x", "train_y", "val_x", "val_y"):
            assert np.array_equal(getattr(tensors, name).numpy(), own[name]), name  # bit for bit
        sizes.append(len(tensors.train_y) + len(tensors.val_y))
    assert sum(sizes) > 0 and len(client._TENSORS) == 0  # nothing kept per node: its rows are gathered when used
    task_json = config.to_json(cfg, ("task",))
    table = task_table.encoded_table(task_json, int(cfg.seed), pipeline, key)
    assert table is task_table.encoded_table(task_json, int(cfg.seed), pipeline, key)  # encoded once for every node
    assert len(table.target) == len(nodes.task_split(cfg)[0])


def test_a_pipeline_that_encodes_node_by_node_encodes_each_nodes_selection():
    cfg, pipeline, key = _fitted(["preprocess.impute=ffill", "preprocess.order_by=RArad"])
    assert not task_table.row_local(pipeline)  # ffill runs along the node's own rows
    client._TENSORS.clear()
    node = engine_nodes(cfg)[3]
    tensors = client.node_tensors(cfg, node, pipeline, key, CPU)
    own = _own_encoding(cfg, node, pipeline)
    assert np.array_equal(tensors.train_x.numpy(), own["train_x"]) and len(client._TENSORS) == 1


def test_a_node_selection_is_its_partition_and_the_nodes_cover_the_training_rows_once():
    cfg, _, _ = _fitted([])
    rows = [node.rows() for node in engine_nodes(cfg)]
    everything = np.sort(np.concatenate(rows))
    assert np.array_equal(everything, np.arange(len(nodes.task_split(cfg)[0])))
    frame = nodes.partition_frame(cfg, 5, 12)
    assert np.array_equal(frame["id"].to_numpy(), nodes.task_split(cfg)[0]["id"].to_numpy()[rows[5]])


def test_the_statistics_round_reads_the_nodes_selection():
    cfg, _, _ = _fitted([])
    node_config = engine_node_configs(cfg)[7]
    engine._set_task_identity(engine.RUN_ID)  # what the grid does before the server creates messages
    msg = Message(RecordDict({protocol.CONFIG_KEY: round_config(cfg)}), dst_node_id=1007, message_type=MessageType.QUERY)
    reply = client.handle_query(msg, node_config)
    frame = nodes.partition_frame(cfg, 7, 12)  # the node's whole frame, as the statistics round read it before
    expected, rows, _ = node_arrays.statistics(Pipeline.from_config(get_task(cfg.task), cfg),
                                               [{c: v.to_numpy() for c, v in frame.items()}], int(cfg.seed))
    got = arrays_to_numpy(reply[protocol.STATS_KEY])
    for name, values in expected.to_arrays().items():
        np.testing.assert_array_equal(got[name], values)
    assert int(reply[protocol.METRICS_KEY][protocol.WEIGHT_KEY]) == rows


def engine_node_configs(cfg) -> list[dict]:
    return engine.simulation_node_configs(int(cfg.federation.num_nodes))


def engine_nodes(cfg) -> list[SimulatedNode]:
    return [node_data(cfg, c) for c in engine_node_configs(cfg)]
