"""Node side without Flower processes: privacy floor, status file, node metrics over real HTTP."""

from __future__ import annotations

import json
import stat
import urllib.request

import pytest
from flwr.app import RecordDict

from astroscale_fl import config, run_config
from astroscale_fl.data.node_data import node_data
from astroscale_fl.data.tasks import get_task
from astroscale_fl.deploy.launcher import LauncherStats
from astroscale_fl.deploy.node_metrics import serve
from astroscale_fl.deploy.node_status import read_status, recording, status_path
from astroscale_fl.deploy.split_nodes import write_node_dirs
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.records import model_to_arrays
from astroscale_fl.federation.rounds import federated_statistics, run_rounds
from astroscale_fl.learning.models import build_model
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.privacy import LEDGER_FILENAME, DpSgdSettings
from astroscale_fl.privacy.floor import FloorRefused, NodeConfigError, PrivacyFloor
from astroscale_fl.privacy.node import BudgetExceeded, spend_round
from strategies import build_strategy
from tests.deploy.conftest import free_port, scrape
from tests.inprocess import InProcessGrid

SMALL = ["federation.num_nodes=3", "model.widths=[16]", "task.min_parallax_snr=40"]


@pytest.mark.parametrize("node_config, key", [
    ({"require-dp": "maybe"}, "require-dp"), ({"min-noise-multiplier": -1.0}, "min-noise-multiplier"),
    ({"max-epsilon": "inf"}, "max-epsilon"), ({"max-rounds": 2.5}, "max-rounds"), ({"max-rounds": True}, "max-rounds"),
])
def test_floor_rejects_bad_node_config_in_one_line(node_config, key):
    with pytest.raises(NodeConfigError, match=f"node config {key}: expected") as err:
        PrivacyFloor.from_node_config(node_config)
    assert "\n" not in str(err.value)


def test_floor_checks_run_noise_and_budget():
    floor = PrivacyFloor.from_node_config({"require-dp": True, "min-noise-multiplier": 1.0, "max-epsilon": 4.0, "max-rounds": 10})
    plain = run_config.validate(config.compose(["federation.num_rounds=5"]))
    with pytest.raises(FloorRefused, match="require-dp"):
        floor.check_run(plain, "n1")
    dp = run_config.validate(config.compose(["privacy=dp_sgd", "federation.num_rounds=20"]))
    with pytest.raises(FloorRefused, match="max-rounds=10"):
        floor.check_run(dp, "n1")
    with pytest.raises(FloorRefused, match="min-noise-multiplier=1"):
        floor.check_noise(0.5, "n1")
    floor.check_noise(1.0, "n1")
    assert floor.budget(None) == 4.0 and floor.budget(8.0) == 4.0 and floor.budget(2.0) == 2.0
    assert PrivacyFloor.from_node_config({}).budget(3.0) == 3.0


def test_spend_round_refuses_before_spending(tmp_path):
    cfg = run_config.validate(config.compose(["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=0.8"]))
    settings = DpSgdSettings.from_config(cfg.privacy)
    node = node_data(cfg, {"data-dir": str(tmp_path)})
    ledger_file = tmp_path / ".astroscale" / LEDGER_FILENAME
    with pytest.raises(FloorRefused, match="noise multiplier 0.8"):
        spend_round(settings, cfg, RecordDict(), node, 2000, PrivacyFloor(min_noise_multiplier=1.0))
    assert not ledger_file.exists()
    with pytest.raises(BudgetExceeded, match="max-epsilon=0.01"):
        spend_round(settings, cfg, RecordDict(), node, 2000, PrivacyFloor(max_epsilon=0.01))
    assert not ledger_file.exists()
    spend_round(settings, cfg, RecordDict(), node, 2000, PrivacyFloor(max_epsilon=100.0))
    assert ledger_file.exists()


def test_floor_refusal_is_a_counted_decline_and_the_node_still_evaluates(tmp_path):
    cfg = run_config.validate(config.compose(SMALL))
    dirs = write_node_dirs(cfg, tmp_path, 3)
    node_configs = [{"data-dir": str(d)} for d in dirs]
    node_configs[2]["require-dp"] = True
    grid = InProcessGrid(3, node_configs=node_configs)
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), timeout=60)
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg).fit_statistics(stats)
    model = build_model(cfg.model, len(pipeline.features), 0)
    _, outcomes = run_rounds(build_strategy(cfg), grid, model_to_arrays(model), 2, round_config(cfg, pipeline), None, 60,
                             show_progress=False)
    history = [o.record for o in outcomes]
    assert [r.nodes_declined for r in history] == [1, 1] and [r.nodes_replied for r in history] == [2, 2]
    assert outcomes[0].declines[0].node == dirs[2].name and "require-dp" in outcomes[0].declines[0].reason
    node3 = sorted(grid.get_node_ids())[2]
    to_node3 = [m.metadata.message_type for m in grid.received if m.metadata.dst_node_id == node3]
    assert to_node3 == ["query", "train", "train", "evaluate", "evaluate"]  # declined: evaluated on its own
    status = read_status(dirs[2])
    assert status["declines"] == 2 and status.get("rounds_trained", 0) == 0
    assert read_status(dirs[0])["rounds_trained"] == 2


def test_status_file_records_messages_privately(tmp_path):
    node = {"data-dir": str(tmp_path)}
    with recording(node, "train", 1) as outcome:
        assert read_status(tmp_path)["in_progress"]["round"] == 1
        outcome.update(rows=120, epsilon=0.5, epsilon_budget=4.0)
    with recording(node, "train", 2) as outcome:
        outcome["declined"] = "node x declines: budget"
    with pytest.raises(RuntimeError), recording(node, "evaluate", 2):
        raise RuntimeError("boom")
    status = read_status(tmp_path)
    assert (status["rows"], status["rounds_trained"], status["declines"], status["epsilon"]) == (120, 1, 1, 0.5)
    assert "in_progress" not in status and status["messages"][-1]["failed"] == "RuntimeError: boom"
    assert status["messages"][0]["process_seconds"] > 0
    assert stat.S_IMODE(status_path(tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE(status_path(tmp_path).parent.stat().st_mode) == 0o700
    with recording({"partition-id": 0}, "train", 1):  # simulation: nothing written
        pass


def test_node_metrics_and_status_over_http(tmp_path):
    with recording({"data-dir": str(tmp_path)}, "train", 1) as outcome:
        outcome.update(rows=300, epsilon=1.5, epsilon_budget=8.0)
    stats = LauncherStats(clientapps_started=3, clientapps_failed=1)
    port = free_port()
    server = serve(tmp_path, stats, port)
    try:
        samples = scrape(port)
        assert samples["astroscale_node_rows"] == 300 and samples["astroscale_node_rounds_trained_total"] == 1
        assert samples["astroscale_node_epsilon_spent"] == 1.5 and samples["astroscale_node_epsilon_budget"] == 8.0
        assert samples["astroscale_node_clientapps_failed_total"] == 1 and samples["astroscale_node_declines_total"] == 0
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5).read())
        assert status["rounds_trained"] == 1 and status["launcher"]["clientapps_started"] == 3
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
