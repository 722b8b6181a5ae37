"""The wire protocol: record keys as strategy arguments, typed local objectives, structured declines."""

import dataclasses

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from astroscale_fl import config, run_config
from astroscale_fl.federation import protocol
from astroscale_fl.federation.messages import read_run_config, round_config
from strategies import build_strategy
from strategies.fedavg import FedAvg


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield


def test_strategy_record_keys_are_constructor_arguments():
    """A strategy built with other record keys reads replies under those keys only."""
    strategy = FedAvg(arrayrecord_key="weights", weighted_by_key="rows")

    def reply(value: float, rows: int) -> Message:
        content = RecordDict({"weights": ArrayRecord({"w": Array(np.full(2, value, np.float32))}),
                              protocol.METRICS_KEY: MetricRecord({"rows": rows, "train_loss": value})})
        return Message(content=content, reply_to=Message(content=content, dst_node_id=1, message_type="train"))

    arrays, metrics = strategy.aggregate_train(1, [reply(0.0, 1), reply(3.0, 2)])
    np.testing.assert_array_equal(arrays["w"].numpy(), [2.0, 2.0])
    assert metrics["rows"] == 3 and metrics["train_loss"] == pytest.approx(2.0)
    content = strategy.train_content(4, arrays, ConfigRecord())
    assert set(content.keys()) == {"weights", protocol.CONFIG_KEY}
    assert content[protocol.CONFIG_KEY][protocol.SERVER_ROUND_KEY] == 4


@pytest.mark.parametrize("overrides, expected", [
    (["strategy=fedavg"], protocol.LocalObjectives()),
    (["strategy=fedprox", "strategy.mu=0.25"], protocol.LocalObjectives(proximal=protocol.ProximalTerm(0.25))),
    (["strategy=scaffold", "strategy.local_lr=0.125"],
     protocol.LocalObjectives(scaffold=protocol.ScaffoldCorrection(0.125))),
])
def test_algorithm_parameters_reach_the_node_once_typed(overrides, expected):
    """The round config carries the typed local objective; the run config copy carries no strategy."""
    cfg = run_config.validate(config.compose(overrides))
    strategy = build_strategy(cfg)
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    content = strategy.train_content(1, arrays, round_config(cfg))
    record = content[protocol.CONFIG_KEY]
    assert protocol.local_objectives(record) == expected
    assert "strategy" not in read_run_config(record)
    assert "mu" not in record[protocol.RUN_CONFIG_KEY]


def test_local_objectives_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        protocol.ProximalTerm(0.1).mu = 1.0  # type: ignore[misc]


def test_decline_round_trips_through_an_error_reason():
    decline = protocol.Decline("band-2", "privacy budget: spent", 4.5)
    assert protocol.Decline.from_reason(decline.to_reason()) == decline
    assert str(decline) == "node band-2 declines: privacy budget: spent"
    assert protocol.Decline.from_reason("some other client's text") == protocol.Decline("?", "some other client's text")
