"""Node-level DP-FedAvg (privacy=dp_fedavg): mechanism, Poisson sampling, accounting, all four strategies."""

import json
import math

import numpy as np
import pytest
from flwr.app import ConfigRecord
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import create_accountant

from astroscale_fl import config, run_config
from astroscale_fl.errors import AstroScaleError
from astroscale_fl.export import verify_card
from astroscale_fl.federation.records import numpy_to_arrays
from astroscale_fl.federation.server import run_federation
from astroscale_fl.privacy.ledger import PrivacyLedger
from astroscale_fl.privacy.node_level import affordable_rounds, next_clipping_norm, noisy_mean
from astroscale_fl.privacy.settings import AdaptiveClipping, NodeLevelSettings
from strategies import DpFedAvg, FedAvg, build_strategy
from tests.inprocess import InProcessGrid

SMALL = ["federation.num_nodes=4", "task.min_parallax_snr=40", "model.widths=[16]", "train.batch_size=32", "federation.num_rounds=2",
         "federation.metrics_port=0", "output.publish=false", "federation.fraction_evaluate=0", "privacy=dp_fedavg"]


def test_noisy_mean_clips_each_update_and_divides_by_the_fixed_denominator():
    updates = [{"w": np.array([3.0, 4.0])}, {"w": np.array([0.3, 0.4])}]  # norms 5 and 0.5
    mean, norms = noisy_mean(updates, clip_norm=1.0, noise_multiplier=0.0, denominator=4.0, rng=np.random.default_rng(0))
    assert norms == pytest.approx([5.0, 0.5])
    np.testing.assert_allclose(mean["w"], (np.array([0.6, 0.8]) + np.array([0.3, 0.4])) / 4.0)
    draws = np.stack([noisy_mean([{"w": np.zeros(1000)}], 2.0, 1.5, 1.0, np.random.default_rng(s))[0]["w"] for s in range(3)])
    assert draws.std() == pytest.approx(3.0, rel=0.05)  # sigma * C


def test_adaptive_clipping_moves_towards_the_target_quantile_and_splits_the_noise():
    settings = NodeLevelSettings(1.0, 1.0, AdaptiveClipping(True, 0.5, 0.2, 1e-9), None, None, "rdp", None, None)
    rng = np.random.default_rng(0)
    assert next_clipping_norm(1.0, [0.1] * 10, settings, 10, rng) == pytest.approx(math.exp(-0.2 * 0.5))  # all within: shrink
    assert next_clipping_norm(1.0, [5.0] * 10, settings, 10, rng) == pytest.approx(math.exp(0.2 * 0.5))  # all clipped: grow
    loose = NodeLevelSettings(1.0, 1.0, AdaptiveClipping(True, 0.5, 0.2, None), None, None, "rdp", None, None)
    sigma_b = loose.count_stddev(100.0)
    assert sigma_b == 5.0
    assert loose.update_noise_multiplier(100.0) == pytest.approx((1.0 - (2 * sigma_b) ** -2) ** -0.5)
    with pytest.raises(AstroScaleError, match="clipped_count_stddev"):
        NodeLevelSettings(1.0, 1.0, AdaptiveClipping(True, 0.5, 0.2, 0.4), None, None, "rdp", None, None).update_noise_multiplier(10.0)


def test_affordable_rounds_is_the_longest_prefix_within_budget():
    ledger = PrivacyLedger("rdp", 1e-3)
    n = affordable_rounds(ledger, 1.0, 0.5, 3.0, 1000)
    assert ledger.epsilon_after(1.0, 0.5, n) <= 3.0 < ledger.epsilon_after(1.0, 0.5, n + 1)
    assert affordable_rounds(ledger, 1.0, 0.5, None, 7) == 7


class _Grid:
    def __init__(self, n):
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0  # messages need a run
        self.nodes = list(range(1, n + 1))

    def get_node_ids(self):
        return self.nodes


def test_nodes_are_poisson_sampled_at_the_configured_rate():
    inner = FedAvg(fraction_train=0.3, min_train_nodes=5)
    wrapper = DpFedAvg(inner, NodeLevelSettings(1.0, 1.0, AdaptiveClipping(False, 0.5, 0.2, None), None, None, "rdp", None, None), 50, rng=np.random.default_rng(0))
    arrays = numpy_to_arrays({"w": np.zeros(2, np.float32)})
    sizes = [len(list(wrapper.configure_train(r, arrays, ConfigRecord({}), _Grid(50)))) for r in range(1, 201)]
    assert np.mean(sizes) == pytest.approx(15.0, rel=0.05) and np.std(sizes) > 1.5  # q N, binomial spread
    assert min(sizes) >= 1 and wrapper.expected_nodes == pytest.approx(15.0)


def fresh_epsilon(entry):
    accountant = create_accountant(mechanism=entry["accountant"])
    accountant.history = [tuple(h) for h in entry["history"]]
    return accountant.get_epsilon(delta=entry["delta"])


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "scaffold"])
def test_dp_fedavg_wraps_every_strategy_and_the_card_recomputes(tmp_path, strategy):
    cfg = run_config.validate(config.compose([*SMALL, f"strategy={strategy}", "federation.fraction_train=0.75",
                                          "privacy.node_noise_multiplier=0.8", "privacy.clipping_norm=0.05"]))
    strat = build_strategy(cfg)
    assert isinstance(strat, DpFedAvg) and strat.strategy.fraction_train == 1.0
    seen = []
    inner_aggregate = type(strat.strategy).aggregate_train
    strat.strategy.aggregate_train = lambda *a: seen.append(a) or inner_aggregate(strat.strategy, *a)  # must never run
    metrics = run_federation(InProcessGrid(4), cfg, strat, tmp_path, show_progress=False)
    assert seen == []  # replies never reach the un-noised aggregation
    path = tmp_path / "model" / "model_card.json"
    level = json.loads(path.read_text())["privacy"]["node_level"]
    assert level["history"] == [[0.8, 0.75, 2]] and level["accountant"] == "rdp" and level["delta"] == 1e-2
    assert level["epsilon"] == pytest.approx(fresh_epsilon(level), rel=1e-6)
    assert metrics["privacy"]["node_level_epsilon"] == level["epsilon"] and np.isfinite(metrics["test_r2"])
    assert verify_card.main([str(path)]) == 0
    if strategy == "scaffold":
        assert any(np.abs(v).max() > 0 for v in strat.strategy.control.values())  # control variates moved (noisy means)


def test_global_step_is_bounded_by_the_clipping_norm(tmp_path):
    cfg = run_config.validate(config.compose([*SMALL, "federation.num_rounds=1", "privacy.node_noise_multiplier=1e-9",
                                          "privacy.clipping_norm=0.01"]))
    strat = build_strategy(cfg)
    start = {}

    def keep(row, arrays):
        start["after"] = {k: v.numpy().astype(np.float64) for k, v in arrays.items()}

    from astroscale_fl.data.tasks import get_task
    from astroscale_fl.federation.messages import round_config
    from astroscale_fl.federation.records import model_to_arrays
    from astroscale_fl.federation.rounds import federated_statistics, run_rounds
    from astroscale_fl.learning.models import build_model
    from astroscale_fl.preprocessing import Pipeline

    grid = InProcessGrid(4)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(federated_statistics(grid, grid.get_node_ids(), round_config(cfg), 60))
    initial = model_to_arrays(build_model(cfg.model, len(pipeline.features), 0))
    run_rounds(strat, grid, initial, 1, round_config(cfg, pipeline), None, 60, on_round=keep, show_progress=False)
    step = math.sqrt(sum(float(((start["after"][k] - v.numpy()) ** 2).sum()) for k, v in initial.items()))
    assert 0 < step <= 0.01 * (1 + 1e-4)  # mean of 4 clipped updates / (q N = 4)


def test_budget_stops_the_run_early(tmp_path):
    cfg = run_config.validate(config.compose([*SMALL, "federation.num_rounds=50", "privacy.node_epsilon_budget=12",
                                          "privacy.node_noise_multiplier=1.0"]))
    strat = build_strategy(cfg)
    allowed = strat.affordable_rounds(50)
    assert 1 <= allowed < 10
    metrics = run_federation(InProcessGrid(4), cfg, strat, tmp_path, show_progress=False)
    assert metrics["rounds"] == allowed and metrics["privacy"]["node_level_epsilon"] <= 12
