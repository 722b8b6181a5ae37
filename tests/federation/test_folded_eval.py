"""One message per round (federation.evaluate_in_train) gives the two-message run's history and weights."""

import math

import numpy as np
import pytest
from flwr.app import MessageType

from astroscale_fl import config, run_config
from astroscale_fl.data.tasks import get_task
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import arrays_to_numpy, model_to_arrays
from astroscale_fl.federation.rounds import RoundPolicy, federated_statistics, run_rounds
from astroscale_fl.learning.models import build_model
from astroscale_fl.preprocessing import Pipeline
from strategies import build_strategy
from tests.inprocess import InProcessGrid

SMALL = ["federation.num_nodes=3", "model.widths=[16]", "task.min_parallax_snr=40", "partition=sky"]
EVAL_COLUMNS = ("eval_loss", "eval_rmse", "eval_r2")


def federate(overrides, rounds, folded):
    cfg = run_config.validate(config.compose(overrides))
    grid = InProcessGrid(int(cfg.federation.num_nodes))
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), timeout=60)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(stats)
    model = build_model(cfg.model, len(pipeline.features), int(cfg.seed))
    arrays, outcomes = run_rounds(build_strategy(cfg), grid, model_to_arrays(model), rounds, round_config(cfg, pipeline),
                                 None, show_progress=False, policy=RoundPolicy(timeout=60, evaluate_in_train=folded))
    return arrays_to_numpy(arrays), [o.record for o in outcomes], grid


@pytest.mark.parametrize("extra", [[], ["strategy=scaffold", "federation.fraction_train=0.67", "federation.fraction_evaluate=0.67"]],
                         ids=["full", "partial-scaffold"])
def test_one_message_per_round_equals_two_messages(extra):
    two_w, two_h, two_grid = federate(SMALL + extra, 3, folded=False)
    one_w, one_h, one_grid = federate(SMALL + extra, 3, folded=True)
    for name in two_w:
        assert np.array_equal(two_w[name], one_w[name]), name
    assert [r.round for r in one_h] == [1, 2, 3]
    for a, b in zip(two_h, one_h):
        for col in EVAL_COLUMNS:
            assert math.isfinite(getattr(a, col)) and getattr(a, col) == getattr(b, col), (a.round, col)
        assert (a.train_loss, a.nodes_replied) == (b.train_loss, b.nodes_replied)
    count = lambda grid, kind: sum(m.metadata.message_type == kind for m in grid.received)  # noqa: E731
    assert count(one_grid, MessageType.TRAIN) == count(two_grid, MessageType.TRAIN)
    if not extra:  # full participation: only the last model is evaluated on its own
        assert count(two_grid, MessageType.EVALUATE) == 9 and count(one_grid, MessageType.EVALUATE) == 3
    assert count(one_grid, MessageType.EVALUATE) < count(two_grid, MessageType.EVALUATE)


def test_fraction_evaluate_zero_sends_no_evaluation():
    _, history, grid = federate(SMALL + ["federation.fraction_evaluate=0"], 2, folded=True)
    assert all(m.metadata.message_type == MessageType.TRAIN for m in grid.received[3:])
    assert all(math.isnan(r.eval_r2) for r in history)
