"""run_federation in process: a run resumed from its checkpoint equals the uninterrupted run."""

import pandas as pd
import pytest

from astroscale_fl import config, run_config
from astroscale_fl.federation.server import run_federation
from strategies import build_strategy
from tests.inprocess import InProcessGrid

SMALL = ["federation.num_nodes=3", "model.widths=[16]", "task.min_parallax_snr=40", "partition=sky",
         "federation.metrics_port=0", "output.publish=false", "strategy=fedadam"]


def run(tmp_path, name, *overrides):
    cfg = run_config.validate(config.compose([*SMALL, *overrides]))
    return run_federation(InProcessGrid(3), cfg, build_strategy(cfg), tmp_path / name, show_progress=False)


@pytest.mark.parametrize("folded", [True, False], ids=["one-message", "two-messages"])
def test_resume_from_checkpoint_matches_the_uninterrupted_run(tmp_path, folded):
    mode = f"federation.evaluate_in_train={str(folded).lower()}"
    whole = run(tmp_path, "whole", "federation.num_rounds=2", mode)
    run(tmp_path, "part", "federation.num_rounds=1", mode)
    resumed = run(tmp_path, "part", "federation.num_rounds=2", mode, f"federation.resume_from={tmp_path / 'part'}")
    assert resumed["resumed_from_round"] == 1 and resumed["rounds"] == 2
    # FedAdam's moments come back from the checkpoint: otherwise round 2 would differ
    assert resumed["test_r2"] == pytest.approx(whole["test_r2"], abs=1e-6)
    assert resumed["initial_test_r2"] == whole["initial_test_r2"] and resumed["train_rows"] == whole["train_rows"]
    # one message per round: the cut run evaluated its last model on its own, which the whole run did
    # inside round 2's messages, so only the two-message runs send the same bytes
    assert (resumed["bytes_down"] == whole["bytes_down"]) != folded and resumed["nodes_declined"] == 0
    assert pd.read_csv(tmp_path / "part" / "history.csv")["eval_r2"].tolist() == \
        pytest.approx(pd.read_csv(tmp_path / "whole" / "history.csv")["eval_r2"].tolist(), abs=1e-9)
    history = pd.read_csv(tmp_path / "part" / "history.csv")
    assert list(history["round"]) == [1, 2]
