"""Issue 16 in a real deployment: SecAgg+, DP statistics and node-level DP over SuperLink/SuperNodes.

Run with ``pytest tests/deploy/test_privacy_deployment.py -q -m slow``; on the session's ``warm_fed``
(tests/deploy/conftest.py): a SuperLink (TLS + node auth) with two warm SuperNodes, each message still its
own ClientApp process, shared with tests/deploy/test_warm_runtime.py.
"""

from __future__ import annotations

import json

import pytest

from astroscale_fl.export import verify_card
from tests.deploy.conftest import TINY, wait_run

pytestmark = pytest.mark.slow

ONE_ROUND = [*TINY, "federation.num_nodes=2", "federation.num_rounds=1"]


def test_secaggplus_with_dp_sgd_and_dp_statistics(warm_fed, tmp_path):
    """Masked aggregation across processes; the statistics release and DP-SGD in each node's ledger."""
    proc = warm_fed.run([*ONE_ROUND, "federation.secure_aggregation=secaggplus", "federation.secaggplus.num_shares=2",
                         "federation.secaggplus.reconstruction_threshold=2", "privacy=dp_sgd",
                         "privacy.statistics_epsilon=1.0"], tmp_path)
    wait_run(proc, timeout=900, fed=warm_fed)  # five message exchanges per round, a process each
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rounds"] == 1 and metrics["nodes_failed"] == 0
    model_card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    assert model_card["secure_aggregation"] == "secaggplus" and model_card["secaggplus"]["num_shares"] == 2
    stats = model_card["privacy"]["preprocessing_statistics"]
    assert stats["covered_by_dp"] is True and 0.9 < stats["epsilon"] <= 1.0
    assert all(node["history"][0][1:] == [1.0, 1] for node in model_card["privacy"]["nodes"])
    assert verify_card.main([str(tmp_path / "model" / "model_card.json")]) == 0


def test_node_level_dp_fedavg(warm_fed, tmp_path):
    proc = warm_fed.run([*ONE_ROUND, "privacy=dp_fedavg", "privacy.node_noise_multiplier=1.0"], tmp_path)
    wait_run(proc, timeout=900, fed=warm_fed)  # five message exchanges per round, a process each
    model_card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    level = model_card["privacy"]["node_level"]
    assert level["history"] == [[1.0, 1.0, 1]] and level["epsilon"] > 0
    assert verify_card.main([str(tmp_path / "model" / "model_card.json")]) == 0


def test_distributed_dp_fedavg_over_secaggplus(warm_fed, tmp_path):
    """Both archives clip and add their noise share before masking; the centre unmasks only the noisy sum."""
    proc = warm_fed.run([*ONE_ROUND, "privacy=dp_fedavg", "federation.secure_aggregation=secaggplus",
                         "federation.secaggplus.num_shares=2", "federation.secaggplus.reconstruction_threshold=2",
                         "federation.secaggplus.clipping_range=4"], tmp_path)
    wait_run(proc, timeout=900, fed=warm_fed)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["rounds"] == 1 and metrics["nodes_failed"] == 0
    model_card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    level = model_card["privacy"]["node_level"]
    assert level["mode"] == "distributed" and level["noise_share_nodes"] == 2 and level["history"] == [[1.0, 1.0, 1]]
    assert model_card["secure_aggregation"] == "secaggplus"
    assert verify_card.main([str(tmp_path / "model" / "model_card.json")]) == 0
