"""federation.vectorize: a round's nodes trained together answer as the ClientApp does node by node."""

from __future__ import annotations

import numpy as np
import pytest

from astroscale_fl import config
from astroscale_fl.federation import grouped
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import arrays_to_numpy, model_to_arrays
from astroscale_fl.federation.rounds import federated_statistics, run_rounds
from astroscale_fl.models import build_model
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.tasks import get_task
from strategies import build_strategy
from tests.inprocess import InProcessGrid

BASE = ["federation.num_nodes=4", "task.min_parallax_snr=40", "model.widths=[16]", "train.batch_size=32", "partition=iid"]


class GroupedGrid(InProcessGrid):
    """The test grid, with a round's training messages going through grouped.train_grouped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.grouped_replies = 0

    def push_messages(self, messages):
        messages = list(messages)
        self._replies = getattr(self, "_replies", {})
        ids = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = mid = f"m{len(self.received)}-{i}"
            ids.append(mid)
        train = [m for m in messages if m.metadata.message_type == "train"]
        together = grouped.train_grouped([(m, self.contexts[m.metadata.dst_node_id]) for m in train])
        replies = {id(m): r for m, r in zip(train, together, strict=True) if r is not None}
        self.grouped_replies += len(replies)
        for mid, msg in zip(ids, messages):
            if id(msg) in replies:
                self.received.append(msg)
                reply = replies[id(msg)]
            else:
                reply = self._handle(msg)
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            self._replies[mid] = reply
        return ids


def federate(overrides, grid_class, rounds=2):
    cfg = config.validate(config.compose(BASE + overrides))
    grid = grid_class(int(cfg.federation.num_nodes))
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), timeout=60)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(stats)
    arrays = model_to_arrays(build_model(cfg.model, len(pipeline.features), 0))
    final, history = run_rounds(build_strategy(cfg), grid, arrays, rounds, round_config(cfg, pipeline), None, 60, show_progress=False)
    return arrays_to_numpy(final), history, grid


@pytest.mark.parametrize("strategy", [["strategy=fedavg"], ["strategy=fedprox", "strategy.mu=0.5"], ["strategy=scaffold"]])
def test_grouped_rounds_equal_node_by_node_rounds(strategy):
    alone, _, alone_grid = federate(strategy, InProcessGrid)
    together, _, grid = federate(strategy, GroupedGrid)
    assert grid.grouped_replies == 8  # 4 nodes x 2 rounds, none served alone
    for name in alone:
        np.testing.assert_allclose(together[name], alone[name], rtol=1e-4, atol=1e-5)
    if "strategy=scaffold" in strategy:  # each node's c_i, kept in its own Context.state, is the same
        for node in grid.get_node_ids():
            mine = arrays_to_numpy(grid.contexts[node].state["scaffold-c-i"])
            theirs = arrays_to_numpy(alone_grid.contexts[node].state["scaffold-c-i"])
            assert mine.keys() == theirs.keys() and any(np.abs(v).max() > 0 for v in mine.values())
            for name in mine:
                np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-3, atol=1e-4)


def test_vectorize_off_serves_every_node_alone():
    _, _, grid = federate(["federation.vectorize=false"], GroupedGrid, rounds=1)
    assert grid.grouped_replies == 0


@pytest.mark.slow
def test_dp_nodes_spend_their_own_ledgers_and_decline_alone():
    dp = ["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "privacy.epsilon_budget=3.0"]
    _, alone_history, alone_grid = federate(dp, InProcessGrid, rounds=3)
    _, history, grid = federate(dp, GroupedGrid, rounds=3)
    ledgers = [grid.contexts[n].state for n in grid.get_node_ids()]
    reference = [alone_grid.contexts[n].state for n in alone_grid.get_node_ids()]
    for mine, theirs in zip(ledgers, reference):  # same spend recorded per node, round by round
        assert {k: dict(v) for k, v in mine.config_records.items()} == {k: dict(v) for k, v in theirs.config_records.items()}
    assert grid.grouped_replies > 0
    assert [r.declines for r in history] == [r.declines for r in alone_history]
