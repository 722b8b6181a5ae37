"""Distributed DP-FedAvg (privacy=dp_fedavg with federation.secure_aggregation=secaggplus) through the real
ClientApp handlers and SecAgg+ stages on the in-process grid."""

import json

import numpy as np
import pytest
from scipy.stats import chi2

from astroscale_fl import config, run_config
from astroscale_fl.errors import ConfigError
from astroscale_fl.export import verify_card
from astroscale_fl.federation.rounds import FederationError
from astroscale_fl.federation.server import run_federation
from astroscale_fl.privacy import card
from astroscale_fl.privacy.node_level import noisy_mean
from strategies import DistributedDpFedAvg, DpFedAvg, build_strategy, dp_fedavg
from tests.inprocess import InProcessGrid
from tests.test_secaggplus import one_round as secagg_round
from tests.test_train_cli import train

SMALL = ["federation.num_nodes=5", "task.min_parallax_snr=40", "federation.num_rounds=1", "federation.metrics_port=0",
         "output.publish=false", "federation.fraction_evaluate=0", "privacy=dp_fedavg"]
DISTRIBUTED = ["federation.secure_aggregation=secaggplus", "federation.secaggplus.clipping_range=4",
               "privacy.distributed_noise_nodes=3"]
NO_LEARNING = ["train.lr=1e-12", "model.widths=[128,128]"]  # the update is ~0: what the round adds is the noise (~17k coords)


def one_round(overrides, drop=()):
    """(global arrays before, after one round, the strategy, the replies it got); the wrapped strategy never aggregates."""
    after, strategy, replies, _, before = secagg_round(overrides, drop, base=SMALL)
    return before, after, strategy, replies


def noise_in_sum(before, after, nodes=5):
    """Σ_k z_k per coordinate: q = 1, so the global moved by the noisy sum / N."""
    return np.concatenate([(after[k] - before[k]).ravel() for k in before]) * nodes


def assert_std(noise, std):
    """Two-sided chi-square bounds (p = 1e-6) on the variance of zero-mean normal draws."""
    k = noise.size
    low, high = chi2.ppf(1e-6, k) / k, chi2.ppf(1 - 1e-6, k) / k
    assert low * std**2 < float(np.mean(noise**2)) < high * std**2, (np.std(noise), std)


def test_strategy_only_receives_the_masked_sum_and_the_noise_has_the_stated_std():
    before, after, strategy, replies = one_round([*DISTRIBUTED, *NO_LEARNING])
    assert isinstance(strategy, DistributedDpFedAvg)
    for reply in replies:  # masked integers only: no update, no count
        assert all(a.numpy().dtype == np.int64 for a in reply.content["arrays"].values())
        assert np.concatenate([a.numpy().ravel() for a in reply.content["arrays"].values()]).max() > 2**50
        assert "metrics" not in reply.content.metric_records
    noise = noise_in_sum(before, after)
    assert noise.size > 10_000 and abs(noise.mean()) < 5 * 0.5 * np.sqrt(5 / 3) / np.sqrt(noise.size)
    assert_std(noise, 1.0 * 0.5 * np.sqrt(5 / 3))  # 5 shares of N(0, (σC)² / m), σ = 1, C = 0.5, m = 3
    assert strategy.node_noise_stddev == pytest.approx(0.5 / np.sqrt(3))


def test_nodes_drop_after_sharing_and_the_noise_stays_at_least_sigma_c():
    before, after, strategy, _ = one_round([*DISTRIBUTED, *NO_LEARNING], drop={2})
    noise = noise_in_sum(before, after)
    assert_std(noise, 0.5 * np.sqrt(4 / 3))  # 4 surviving shares: >= σC
    assert np.std(noise) > 0.5


def test_fewer_surviving_noise_shares_than_m_unmask_nothing():
    with pytest.raises(FederationError, match=r"3 masked vectors arrived, fewer than the 4 whose noise shares make the node-level noise"):
        one_round(["federation.secure_aggregation=secaggplus", "federation.secaggplus.clipping_range=4",
                   "privacy.distributed_noise_nodes=4", "model.widths=[16]"], drop={0, 1})


def test_nodes_clip_and_the_release_matches_server_side_dp_fedavg(monkeypatch):
    """σ ≈ 0, a small C: every node's update is longer than C, so it is clipped on the node; the unmasked
    sum / q N equals the server-side DP-FedAvg release (same uniform weights, same denominator) within quantisation."""
    norms = []

    def spy(updates, *args):
        mean, seen = noisy_mean(updates, *args)
        norms.extend(seen)
        return mean, seen

    monkeypatch.setattr(dp_fedavg, "noisy_mean", spy)
    common = ["model.widths=[16]", "privacy.node_noise_multiplier=1e-9", "privacy.clipping_norm=0.01", "train.lr=0.05"]
    before, server, server_side, _ = one_round(common)
    _, distributed, wrapper, _ = one_round([*common, *DISTRIBUTED])
    assert isinstance(server_side, DpFedAvg) and not isinstance(server_side, DistributedDpFedAvg)
    assert len(norms) == 5 and min(norms) > 0.05  # unclipped, every update is 5x longer than C
    step = np.concatenate([(distributed[k] - before[k]).ravel() for k in before])
    assert 0.001 < np.linalg.norm(step) <= 0.01 + 1e-5  # the mean of 5 updates clipped to C
    assert 0 < wrapper.error_bound < 1e-6  # quantisation of the released mean, per coordinate
    for name in before:
        np.testing.assert_allclose(distributed[name], server[name], atol=1e-5, rtol=0)


def test_card_says_distributed_and_every_epsilon_recomputes(tmp_path):
    cfg = run_config.validate(config.compose([*SMALL, *DISTRIBUTED, "model.widths=[16]", "federation.fraction_train=0.8"]))
    run_federation(InProcessGrid(5), cfg, build_strategy(cfg), tmp_path, show_progress=False)
    section = json.loads((tmp_path / "model" / "model_card.json").read_text())["privacy"]
    level = section["node_level"]
    assert level["mode"] == "distributed" and level["noise_share_nodes"] == 3 and level["history"] == [[1.0, 0.8, 1]]
    assert level["against_server"]["history"] == [[1.0, 1.0, 1]]  # the server knows its sample: no amplification
    assert level["against_server"]["epsilon"] > level["epsilon"] > 0
    assert card.verify_section(section) == []
    assert any(label.startswith("node_level against_server") for label, _, _ in card.recomputable_groups(section))
    assert verify_card.main([str(tmp_path / "model" / "model_card.json")]) == 0


@pytest.mark.parametrize("override, needle", [
    ("privacy.adaptive_clipping.enabled=true", "privacy.adaptive_clipping.enabled: not supported with secure_aggregation=secaggplus"),
    ("federation.secaggplus.clipping_range=1", "federation.secaggplus.clipping_range: expected >= 2.809"),
    ("privacy.distributed_noise_nodes=9", "privacy.distributed_noise_nodes: expected an integer in [reconstruction_threshold=3, num_nodes=5]"),
])
def test_bad_combinations_fail_in_config(override, needle):
    overrides = [*SMALL, "federation.secure_aggregation=secaggplus", "federation.secaggplus.clipping_range=4", override]
    with pytest.raises(ConfigError) as err:
        run_config.validate(config.compose(overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_default_clipping_range_is_the_smallest_that_never_clips_the_noise():
    """federation.secaggplus.clipping_range=null: 1.0 for plain SecAgg+, C + 8 x a node's noise std
    (to 0.1) under distributed DP-FedAvg, which the config check then accepts."""
    from astroscale_fl.federation.secagg.scheme import secagg_params

    cfg = run_config.validate(config.compose([*SMALL, "federation.secure_aggregation=secaggplus"]))
    assert cfg.federation.secaggplus.clipping_range is None
    assert secagg_params(cfg).clipping_range == 2.9  # the check's bound is 2.809 (test_bad_combinations_fail_in_config)
    assert build_strategy(cfg).secure.secagg.clipping_range == 2.9
    plain = run_config.validate(config.compose([*SMALL, "privacy=none", "federation.secure_aggregation=secaggplus"]))
    assert secagg_params(plain).clipping_range == 1.0


def test_adaptive_clipping_with_secaggplus_is_one_line_on_the_cli_and_writes_nothing(tmp_path):
    out = train("privacy=dp_fedavg", "federation.secure_aggregation=secaggplus", "federation.secaggplus.clipping_range=4",
                "privacy.adaptive_clipping.enabled=true", f"hydra.run.dir={tmp_path / 'run'}", "output.publish=false", timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: privacy.adaptive_clipping.enabled")
    assert out.stderr.strip().count("\n") == 0 and not (tmp_path / "run").exists()


def test_too_few_connected_nodes_fail_the_round_instead_of_resampling_forever():
    cfg = run_config.validate(config.compose([*SMALL, *DISTRIBUTED]))
    strategy = build_strategy(cfg)
    with pytest.raises(FederationError, match=r"round 1: distributed DP-FedAvg needs at least 3 connected nodes .* 2 connected"):
        strategy.configure_train(1, None, None, InProcessGrid(2))
