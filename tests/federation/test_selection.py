"""Model selection and early stopping on real in-process federations (issue 25)."""

import numpy as np
import pandas as pd
import pytest
import torch

from astroscale_fl import config, run_config
from astroscale_fl.errors import ConfigError
from astroscale_fl.export.model_dir import load_exported
from astroscale_fl.federation import checkpoint
from astroscale_fl.federation.server import run_federation
from strategies import build_strategy
from tests.inprocess import InProcessGrid

# lr 0.05 on this small sky split: the nodes' pooled validation R² peaks at round 4 of 6, then falls
SMALL = ["federation.num_nodes=3", "model.widths=[16]", "task.min_parallax_snr=40", "partition=sky",
         "federation.metrics_port=0", "output.publish=false", "train.lr=0.05"]


def run(tmp_path, name, *overrides):
    cfg = run_config.validate(config.compose([*SMALL, *overrides]))
    metrics = run_federation(InProcessGrid(3), cfg, build_strategy(cfg), tmp_path / name, show_progress=False)
    return metrics, pd.read_csv(tmp_path / name / "history.csv")


def test_select_best_exports_the_round_where_validation_peaked(tmp_path):
    best, history = run(tmp_path, "best", "federation.num_rounds=6")
    peak = int(history.loc[history["eval_r2"].idxmax(), "round"])
    assert peak < 6, "the scenario must peak before the last round"
    assert best["selected_round"] == peak and best["stopped_early_at"] is None
    assert best["selected_val_score"] == history["eval_r2"].max()
    # the exported model is the peak round's global model, scored on the test split as history.csv did then
    assert best["test_r2"] == pytest.approx(history.loc[peak - 1, "test_r2"], abs=1e-12)
    assert best["last_round_test_r2"] == history["test_r2"].iloc[-1] != best["test_r2"]
    _, _, card = load_exported(tmp_path / "best" / "model")
    assert card["metrics"]["selected_round"] == peak and card["metrics"]["last_round_test_r2"] == best["last_round_test_r2"]
    # select=last: the same rounds (selection never changes training), the last round's model
    last, last_history = run(tmp_path, "last", "federation.num_rounds=6", "federation.select=last")
    pd.testing.assert_frame_equal(history.drop(columns="wall_seconds"), last_history.drop(columns="wall_seconds"))
    assert last["selected_round"] == 6 and last["test_r2"] == history["test_r2"].iloc[-1]
    final = checkpoint.load(tmp_path / "last").model
    weights = torch.load(tmp_path / "last" / "model" / "weights.pt", weights_only=True)
    assert all(np.array_equal(weights[k].numpy(), final[k]) for k in final)


@pytest.mark.parametrize("folded", [True, False], ids=["one-message", "two-messages"])
def test_patience_stops_the_run_and_keeps_the_best_round(tmp_path, folded):
    mode = f"federation.evaluate_in_train={str(folded).lower()}"
    stopped, history = run(tmp_path, "stop", "federation.num_rounds=12", "federation.patience=2", mode)
    # rounds 5 and 6 do not beat round 4: the run stops after round 6, or after round 7 when round 6's
    # evaluation rode on round 7's training message (that round then trained and is evaluated on its own)
    assert stopped["stopped_early_at"] == (7 if folded else 6) == stopped["rounds"] == len(history)
    assert stopped["selected_round"] == 4
    full, full_history = run(tmp_path, "full", "federation.num_rounds=6", mode)
    assert history["eval_r2"][:6].tolist() == full_history["eval_r2"].tolist()  # stopping changes nothing before it
    assert stopped["test_r2"] == full["test_r2"]


def test_resume_keeps_the_best_model_so_far(tmp_path):
    whole, _ = run(tmp_path, "whole", "federation.num_rounds=6")
    run(tmp_path, "part", "federation.num_rounds=5")  # its checkpoint holds round 5's model and round 4's (best)
    assert checkpoint.load(tmp_path / "part").best_model
    resumed, _ = run(tmp_path, "part", "federation.num_rounds=6", f"federation.resume_from={tmp_path / 'part'}")
    assert resumed["resumed_from_round"] == 5 and resumed["selected_round"] == whole["selected_round"] == 4
    assert resumed["test_r2"] == pytest.approx(whole["test_r2"], abs=1e-9)


STOP_AFTER_3 = ("federation.patience=1", "federation.min_delta=1.0")


def test_early_stop_under_dp_charges_only_the_rounds_run(tmp_path):
    dp = ["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "train.batch_size=64"]
    # min_delta=1: no round can beat round 1 by that much, so round 2 uses up the patience whatever the noise;
    # round 2's evaluation rides on round 3's training message: the run ends after round 3
    stopped, history = run(tmp_path, "stop", *dp, "federation.num_rounds=15", *STOP_AFTER_3)
    ran = stopped["stopped_early_at"]
    assert ran == 3 == len(history)
    same, _ = run(tmp_path, "same", *dp, f"federation.num_rounds={ran}")
    # the nodes' ledgers hold exactly the rounds that ran: the same ε as a run planned with that many rounds
    assert stopped["privacy"]["card"]["nodes"] == same["privacy"]["card"]["nodes"]
    assert stopped["privacy"]["max_epsilon"] == same["privacy"]["max_epsilon"] == history["max_epsilon"].iloc[-1]


def test_early_stop_under_node_level_dp_charges_only_the_rounds_run(tmp_path):
    stopped, history = run(tmp_path, "stop", "privacy=dp_fedavg", "federation.num_rounds=15", *STOP_AFTER_3)
    ran = stopped["stopped_early_at"]
    assert ran == 3 == len(history)
    same, _ = run(tmp_path, "same", "privacy=dp_fedavg", f"federation.num_rounds={ran}")
    # the server's node-level ledger: one entry per aggregated round, as in a run of that many rounds
    assert stopped["privacy"]["node_level_epsilon"] == same["privacy"]["node_level_epsilon"]
    assert stopped["privacy"]["card"]["node_level"] == same["privacy"]["card"]["node_level"]


def test_centralized_selects_the_best_epoch_on_its_validation_share(tmp_path):
    from astroscale_fl.centralized import run_centralized

    cfg = run_config.validate(config.compose([*SMALL, "mode=centralized", "federation.num_rounds=8", "federation.patience=3"]))
    metrics = run_centralized(cfg, tmp_path, show_progress=False)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["eval_r2"].notna().all()
    peak = int(history.loc[history["eval_r2"].idxmax(), "round"])
    assert metrics["selected_round"] == peak
    assert metrics["test_r2"] == pytest.approx(history.loc[peak - 1, "test_r2"], abs=1e-12)
    assert peak == 4 and metrics["stopped_early_at"] == len(history) == 7  # epochs 5-7 do not beat epoch 4


@pytest.mark.parametrize("override, key", [
    ("federation.select=worst", "federation.select"),
    ("federation.select_metric=test_r2", "federation.select_metric"),
    ("federation.patience=0", "federation.patience"),
    ("federation.min_delta=-0.1", "federation.min_delta"),
])
def test_bad_selection_settings_are_one_line_errors(override, key):
    with pytest.raises(ConfigError, match=f"^{key}: expected"):
        run_config.validate(config.compose([override]))


def test_rounds_without_validation_neither_improve_nor_use_up_patience(tmp_path):
    metrics, history = run(tmp_path, "blind", "federation.num_rounds=3", "federation.patience=1",
                           "federation.fraction_evaluate=0")
    assert history["eval_r2"].isna().all() and len(history) == 3  # nothing evaluated: every round runs
    assert metrics["selected_round"] == 3 and metrics["stopped_early_at"] is None and metrics["selected_val_score"] is None
