"""survey_redshift runs report the simulator's R² ceiling; `compare` shows it and RMSE in km/s."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from astroscale_fl import config, run_config
from astroscale_fl.data.nodes import task_split
from astroscale_fl.federation.server import run_federation
from astroscale_fl.learning.compare import main as compare_main
from astroscale_fl.simulator import ceiling_r2
from astroscale_fl.simulator.galaxy import C_KMS
from strategies import build_strategy
from tests.inprocess import InProcessGrid

SURVEY = ["task=survey_redshift", "task.n_stars=3000", "model.widths=[16]", "federation.num_rounds=3",
          "federation.metrics_port=0", "output.publish=false", "federation.checkpoint=false"]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """Two real in-process survey runs (FedAvg, FedAdam) in one directory, as a multirun leaves them."""
    root = tmp_path_factory.mktemp("sweep")
    catch = _Lines()
    logging.getLogger("flwr").addHandler(catch)
    try:
        for strategy in ("fedavg", "fedadam"):
            cfg = run_config.validate(config.compose([*SURVEY, f"strategy={strategy}"]))
            grid = InProcessGrid(int(cfg.federation.num_nodes))
            run_federation(grid, cfg, build_strategy(cfg), root / strategy, show_progress=False)
    finally:
        logging.getLogger("flwr").removeHandler(catch)
    (root / "done-lines.txt").write_text("\n".join(m for m in catch.messages if m.startswith("done: ")))
    return root


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_final_line_prints_rmse_in_the_display_unit(sweep_dir):
    lines = (sweep_dir / "done-lines.txt").read_text().splitlines()
    metrics = json.loads((sweep_dir / "fedavg" / "metrics.json").read_text())
    assert len(lines) == 2 and f"RMSE={metrics['test_rmse'] * C_KMS:.4g} km/s " in lines[0], lines


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


def test_curves_label_the_r2_axis_and_the_centralized_baseline_apart(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from astroscale_fl.learning.compare import BASELINE_LABEL, plot_curves

    history = pd.DataFrame({"round": [1, 2, 3], "test_r2": [0.2, 0.3, 0.35], "test_rmse": [1e-4, 9e-5, 8e-5]})
    table = pd.DataFrame({"mode": ["federated", "centralized"], "task": ["survey_redshift"] * 2, "strategy": ["fedavg", "centralized"],
                          "partition": ["by_survey", "-"], "job": ["a", "b"], "r2_ceiling": [0.55, 0.55], "test_r2": [0.35, 0.4],
                          "test_rmse": [8e-5, 7e-5]})
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_curves(table, {"a": history, "b": history}, tmp_path / "curves.png")
    top, bottom = figures[0].axes
    assert top.get_ylabel() == "test R² (held-out test set)" and "centralized" not in top.get_ylabel()
    assert bottom.get_ylabel() == "test RMSE (km/s)"
    assert [t.get_text() for t in top.get_legend().get_texts()] == ["fedavg", BASELINE_LABEL, "R² ceiling (0.550)"]
    assert top.xaxis.get_major_locator().__class__.__name__ == "MaxNLocator"  # whole rounds, no 0.5 ticks
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_curves_keep_a_dip_below_zero_in_view(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from astroscale_fl.learning.compare import plot_curves

    history = pd.DataFrame({"round": [1, 2, 3], "test_r2": [0.2, -0.3, 0.4], "test_rmse": [1.0, 2.0, 0.5]})
    table = pd.DataFrame({"mode": ["federated"], "task": ["hipparcos_absmag"], "strategy": ["fedadam"], "partition": ["sky"],
                          "job": ["a"], "r2_ceiling": [None], "test_r2": [0.4]})
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_curves(table, {"a": history}, tmp_path / "curves.png")
    low, high = figures[0].axes[0].get_ylim()
    assert low <= -0.3 and high >= 0.4
