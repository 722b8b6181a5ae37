"""survey_redshift runs report the simulator's R² ceiling; `compare` shows it and RMSE in km/s."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from astroscale_fl import config, run_config
from astroscale_fl.data.nodes import task_split
from astroscale_fl.federation.server import run_federation
from astroscale_fl.learning.compare import C_KMS
from astroscale_fl.learning.compare import main as compare_main
from astroscale_fl.simulator import ceiling_r2
from strategies import build_strategy
from tests.inprocess import InProcessGrid

SURVEY = ["task=survey_redshift", "task.n_stars=3000", "model.widths=[16]", "federation.num_rounds=3",
          "federation.metrics_port=0", "output.publish=false", "federation.checkpoint=false"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Two real in-process survey runs (FedAvg, FedAdam) in one directory, as a multirun leaves them."""
    root = tmp_path_factory.mktemp("sweep")
    for strategy in ("fedavg", "fedadam"):
        cfg = run_config.validate(config.compose([*SURVEY, f"strategy={strategy}"]))
        grid = InProcessGrid(int(cfg.federation.num_nodes))
        run_federation(grid, cfg, build_strategy(cfg), root / strategy, show_progress=False)
    return root


def test_survey_run_writes_r2_ceiling_next_to_test_r2(sweep_dir):
    metrics = json.loads((sweep_dir / "fedavg" / "metrics.json").read_text())
    _, test = task_split(run_config.validate(config.compose(SURVEY)))
    assert metrics["r2_ceiling"] == pytest.approx(ceiling_r2(test)) and 0 < metrics["r2_ceiling"] < 1
    keys = list(metrics)
    assert keys.index("r2_ceiling") == keys.index("test_r2") + 1
    card = json.loads((sweep_dir / "fedavg" / "model" / "model_card.json").read_text())
    assert card["metrics"]["r2_ceiling"] == metrics["r2_ceiling"]


def test_compare_shows_ceiling_and_rmse_in_km_per_s(sweep_dir, capsys):
    assert compare_main([str(sweep_dir)]) == 0
    summary = pd.read_csv(sweep_dir / "summary.csv")
    metrics = json.loads((sweep_dir / "fedadam" / "metrics.json").read_text())
    row = summary.set_index("strategy").loc["fedadam"]
    assert row["r2_ceiling"] == pytest.approx(metrics["r2_ceiling"]) and row["task"] == "survey_redshift"
    markdown = (sweep_dir / "summary.md").read_text()
    assert "test RMSE (km/s)" in markdown.splitlines()[0] and "R² ceiling" in markdown.splitlines()[0]
    assert f"{metrics['test_rmse'] * C_KMS:.4g}" in markdown
    assert (sweep_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
