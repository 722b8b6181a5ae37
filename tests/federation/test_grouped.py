"""federation.vectorize: a round's nodes trained together answer as the ClientApp does node by node."""

from __future__ import annotations

import numpy as np
import pytest

from astroscale_fl import config, run_config
from astroscale_fl.data.tasks import get_task
from astroscale_fl.federation import grouped
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import arrays_to_numpy, model_to_arrays
from astroscale_fl.federation.rounds import federated_statistics, run_rounds
from astroscale_fl.learning.models import build_model
from astroscale_fl.preprocessing import Pipeline
from strategies import build_strategy
from tests.inprocess import InProcessGrid

BASE = ["federation.num_nodes=4", "task.min_parallax_snr=40", "model.widths=[16]", "train.batch_size=32", "partition=iid"]


@pytest.fixture
def grouped_replies(monkeypatch):
    """Counts the replies built by the grouped path."""
    built = []
    reply = grouped._reply
    monkeypatch.setattr(grouped, "_reply", lambda *args: built.append(1) or reply(*args))
    return built


def federate(overrides, vectorize: bool, rounds=2):
    cfg = run_config.validate(config.compose(BASE + overrides))
    grid = InProcessGrid(int(cfg.federation.num_nodes))
    if vectorize:  # what engine.run_inprocess installs
        grid.train_runner, grid.evaluate_runner = grouped.run_train_grouped, grouped.run_evaluate_grouped
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), timeout=60)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(stats)
    arrays = model_to_arrays(build_model(cfg.model, len(pipeline.features), 0))
    final, history = run_rounds(build_strategy(cfg), grid, arrays, rounds, round_config(cfg, pipeline), None, 60, show_progress=False)
    return arrays_to_numpy(final), history, grid


@pytest.mark.parametrize("strategy", [["strategy=fedavg"], ["strategy=fedprox", "strategy.mu=0.5"], ["strategy=scaffold"]])
def test_grouped_rounds_equal_node_by_node_rounds(strategy, grouped_replies):
    alone, _, alone_grid = federate(strategy, vectorize=False)
    assert not grouped_replies
    together, _, grid = federate(strategy, vectorize=True)
    assert len(grouped_replies) == 8  # 4 nodes x 2 rounds, none served alone
    for name in alone:
        np.testing.assert_allclose(together[name], alone[name], rtol=1e-4, atol=1e-5)
    if "strategy=scaffold" in strategy:  # each node's c_i, kept in its own Context.state, is the same
        for node in grid.get_node_ids():
            mine = arrays_to_numpy(grid.context(node).state["scaffold-c-i"])
            theirs = arrays_to_numpy(alone_grid.context(node).state["scaffold-c-i"])
            assert mine.keys() == theirs.keys() and any(np.abs(v).max() > 0 for v in mine.values())
            for name in mine:
                np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-3, atol=1e-4)


def test_grouped_evaluation_equals_each_nodes_own(monkeypatch):
    """Folded and evaluate-only messages (half the nodes train) evaluated together, one forward pass a group."""
    evaluated = []
    metrics = grouped.client.evaluation_metrics
    monkeypatch.setattr(grouped.client, "evaluation_metrics",
                        lambda model, tensors, pipeline: evaluated.append(len(tensors)) or metrics(model, tensors, pipeline))
    partial = ["federation.fraction_train=0.5", "federation.num_nodes=6"]
    _, alone, _ = federate(partial, vectorize=False, rounds=3)
    assert set(evaluated) == {1}  # node by node, through the handler
    evaluated.clear()
    _, together, grid = federate(partial, vectorize=True, rounds=3)
    assert max(evaluated) >= 3  # the nodes not trained this round, then the trained ones on their next message
    for mine, theirs in zip(together, alone, strict=True):
        for column in ("eval_loss", "eval_rmse", "eval_r2"):
            assert getattr(mine.record, column) == pytest.approx(getattr(theirs.record, column), rel=1e-6)
        assert mine.record.nodes_sampled == 3


def test_vectorize_off_serves_every_node_alone(grouped_replies):
    federate(["federation.vectorize=false"], vectorize=True, rounds=1)
    assert not grouped_replies


@pytest.mark.slow
def test_dp_nodes_spend_their_own_ledgers_and_decline_alone(grouped_replies):
    dp = ["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "privacy.epsilon_budget=3.0"]
    _, alone_history, alone_grid = federate(dp, vectorize=False, rounds=3)
    _, history, grid = federate(dp, vectorize=True, rounds=3)
    for node in grid.get_node_ids():  # the same spend recorded in each node's own state, round by round
        mine, theirs = grid.context(node).state, alone_grid.context(node).state
        assert {k: dict(v) for k, v in mine.config_records.items()} == {k: dict(v) for k, v in theirs.config_records.items()}
    assert grouped_replies
    assert [r.declines for r in history] == [r.declines for r in alone_history]


def test_node_level_dp_nodes_train_grouped(grouped_replies):
    """privacy=dp_fedavg adds its noise on the server: the nodes train plainly, so they train together
    (the grouped path once read privacy.max_grad_norm, which dp_fedavg lacks, and served every node alone)."""
    federate(["privacy=dp_fedavg"], vectorize=True, rounds=1)
    assert len(grouped_replies) == 4
