"""SecAgg+ (federation.secure_aggregation=secaggplus) through the real ClientApp on the in-process grid."""

import json
import uuid

import numpy as np
import pytest
from flwr.app import Error, Message, MessageType

from astroscale_fl import config, run_config
from astroscale_fl.data.tasks import get_task
from astroscale_fl.errors import ConfigError
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import model_to_arrays
from astroscale_fl.federation.rounds import FederationError, federated_statistics, run_rounds
from astroscale_fl.federation.secagg.scheme import SecAggPlusParams, neighbours
from astroscale_fl.learning.models import build_model
from astroscale_fl.preprocessing import Pipeline
from strategies import build_strategy
from tests.inprocess import InProcessGrid

SMALL = ["federation.num_nodes=5", "task.min_parallax_snr=40", "model.widths=[16]", "federation.num_rounds=1",
         "federation.metrics_port=0", "output.publish=false", "federation.fraction_evaluate=0"]
SECAGG = ["federation.secure_aggregation=secaggplus", "federation.secaggplus.num_shares=3",
          "federation.secaggplus.reconstruction_threshold=2"]


class DroppingGrid(InProcessGrid):
    """Nodes at positions ``drop`` fail their training message (after having shared their keys)."""

    def __init__(self, n, drop=()):
        super().__init__(n)
        ids = self.get_node_ids()
        self.drop = {ids[i] for i in drop}

    def serve(self, msg, context):
        if msg.metadata.message_type == MessageType.TRAIN and msg.metadata.dst_node_id in self.drop:
            reply = Message(Error(code=1, reason="node went away"), reply_to=msg)
            reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            return reply
        return super().serve(msg, context)


def one_round(overrides, drop=(), base=SMALL):
    """Global arrays after one round, the strategy, the replies it got, the history and the arrays before."""
    cfg = run_config.validate(config.compose([*base, *overrides]))
    grid = DroppingGrid(5, drop)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(
        federated_statistics(grid, grid.get_node_ids(), round_config(cfg), 60))
    initial = model_to_arrays(build_model(cfg.model, len(pipeline.features), 0))
    strategy = build_strategy(cfg)
    seen = []
    if hasattr(strategy, "strategy"):  # a wrapper (SecAgg+, DP-FedAvg): the wrapped strategy never aggregates replies
        strategy.strategy.aggregate_train = lambda *a: seen.append(a)
    outer = strategy.aggregate_train
    replies_seen = []
    strategy.aggregate_train = lambda r, replies: (replies_seen.extend(replies), outer(r, replies_seen))[1]
    arrays, history = run_rounds(strategy, grid, initial, 1, round_config(cfg, pipeline), None, 60, show_progress=False)
    assert seen == []
    return {k: v.numpy().astype(np.float64) for k, v in arrays.items()}, strategy, replies_seen, history, {
        k: v.numpy().astype(np.float64) for k, v in initial.items()}


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "scaffold"])
def test_unmasked_mean_equals_the_plain_mean_and_only_masked_vectors_travel(strategy):
    plain, inner, *_ = one_round([f"strategy={strategy}"])
    secure, wrapper, replies, history, _ = one_round([f"strategy={strategy}", *SECAGG])
    assert history[0].record.nodes_replied == 5
    for reply in replies:  # what reached the server: masked integers, no count, no model
        assert all(a.numpy().dtype == np.int64 for a in reply.content["arrays"].values())
        assert "metrics" not in reply.content.metric_records
        masked = np.concatenate([a.numpy().ravel() for a in reply.content["arrays"].values()])
        assert masked.max() > 2**50  # uniform modulo 2^62, nothing like a model update
        assert reply.content["secagg/weight"]["w"].numpy()[0] > 2**40  # the example count is masked too
    bound = wrapper.error_bound + 1e-6  # + float32 rounding of the models
    assert 0 < wrapper.error_bound < 1e-4
    if strategy == "fedadam":  # Adam's first step is ~sign(mean): compare its first moment (1 - beta1) * mean
        for name, m in inner.m.items():
            np.testing.assert_allclose(wrapper.strategy.m[name], m, atol=0.1 * bound, rtol=0)
        return
    for name in plain:
        np.testing.assert_allclose(secure[name], plain[name], atol=bound, rtol=0)
    assert len(wrapper.protocol_bytes) == 1 and wrapper.protocol_bytes[0] > 0


def test_node_dropping_after_sharing_keys_is_recovered():
    plain, *_ = one_round([], drop={2})
    secure, wrapper, replies, history, _ = one_round(SECAGG, drop={2})
    assert history[0].record.nodes_failed == 1 and history[0].record.nodes_replied == 4
    assert wrapper.error_bound < 1e-4
    for name in plain:  # the dropped node's pairwise masks were rebuilt from its key shares
        np.testing.assert_allclose(secure[name], plain[name], atol=wrapper.error_bound + 1e-6, rtol=0)


def test_fewer_than_threshold_fails_the_round_with_counts():
    with pytest.raises(FederationError, match=r"round 1: secaggplus: 2 masked vectors arrived, fewer than the threshold "
                                              r"\(3 dropped after sharing\) \(reconstruction_threshold=3; 5 sampled, 5 sent keys, 5 shared keys\)"):
        one_round(["federation.secure_aggregation=secaggplus", "federation.secaggplus.reconstruction_threshold=3"], drop={0, 1, 2})


def test_neighbour_graph_and_config_checks():
    graph = neighbours(list(range(10)), 5, np.random.default_rng(0))
    assert all(len(v) == 5 and n in v for n, v in graph.items())
    assert all(n in graph[m] for n, v in graph.items() for m in v)  # symmetric
    assert neighbours([1, 2, 3], 5, np.random.default_rng(0)) == {1: [1, 2, 3], 2: [1, 2, 3], 3: [1, 2, 3]}
    big = [2**64 - 5, 6277904573203050746, 12]  # Flower node ids are uint64: no float rounding on the way
    assert set(neighbours(big, 3, np.random.default_rng(0))) == set(big)
    with pytest.raises(ConfigError, match="reconstruction_threshold"):
        SecAggPlusParams(num_shares=3, reconstruction_threshold=4, clipping_range=1.0, quantization_range=1 << 24, max_weight=1e5)
    with pytest.raises(ConfigError, match="max_update_norm"):
        run_config.validate(config.compose([*SECAGG, "federation.max_update_norm=1.0"]))
    with pytest.raises(ConfigError, match="clipping_range: expected >= .* under distributed DP-FedAvg"):
        run_config.validate(config.compose([*SECAGG, "privacy=dp_fedavg", "federation.secaggplus.clipping_range=1.0"]))


def test_card_records_secure_aggregation(tmp_path):
    from astroscale_fl.federation.server import run_federation

    cfg = run_config.validate(config.compose([*SMALL, *SECAGG]))
    run_federation(InProcessGrid(5), cfg, build_strategy(cfg), tmp_path, show_progress=False)
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert card["secure_aggregation"] == "secaggplus"
    assert card["secaggplus"]["num_shares"] == 3 and card["secaggplus"]["reconstruction_threshold"] == 2
