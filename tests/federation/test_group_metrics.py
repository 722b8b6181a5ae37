"""Per-node and per-survey test metrics, and history_nodes.csv, against a numpy recomputation (issue 25)."""

import numpy as np
import pandas as pd
import pytest

from astroscale_fl import config, run_config
from astroscale_fl.data.nodes import task_split
from astroscale_fl.export.model_dir import load_exported
from astroscale_fl.export.predict import Predictor
from astroscale_fl.federation.server import run_federation
from astroscale_fl.learning import compare
from astroscale_fl.learning.group_metrics import group_report
from strategies import build_strategy
from tests.inprocess import InProcessGrid


def test_per_survey_and_per_node_metrics_match_a_numpy_recomputation(tmp_path):
    cfg = run_config.validate(config.compose(["task=survey_redshift", "task.n_stars=4000", "model.widths=[16]",
                                          "federation.num_rounds=2", "federation.metrics_port=0", "output.publish=false"]))
    metrics = run_federation(InProcessGrid(4), cfg, build_strategy(cfg), tmp_path, show_progress=False)
    _, test = task_split(cfg)
    predictor = Predictor(tmp_path / "model")
    pred = predictor.predict_frame(test)
    truth = test["z"].to_numpy(dtype=np.float64)
    by_survey = metrics["test_by_survey"]
    assert sorted(by_survey) == ["apogee", "gaia", "rave", "sdss"] and metrics["test_by_node"] == by_survey  # by_survey: a node per survey
    assert sum(g["rows"] for g in by_survey.values()) == metrics["test_rows"] == len(test)
    for survey, group in by_survey.items():
        mask = (test["survey"] == survey).to_numpy()
        y, p = truth[mask], pred[mask]
        assert group["rows"] == mask.sum()
        assert group["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-6)
        assert group["r2"] == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2), rel=1e-5)
        assert group["bias"] == pytest.approx(np.mean(p - y), rel=1e-5, abs=1e-12)
    _, _, card = load_exported(tmp_path / "model")
    assert card["metrics"]["test_by_survey"] == by_survey
    # history_nodes.csv: each node's validation metrics per round; their sums pool to history.csv's
    nodes = pd.read_csv(tmp_path / "history_nodes.csv")
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(nodes.columns) == ["round", "node", "rows", "loss", "rmse", "r2"]
    assert nodes.groupby("round")["node"].apply(sorted).tolist() == [sorted(InProcessGrid(4).get_node_ids())] * 2
    for r, part in nodes.groupby("round"):
        row = history[history["round"] == r].iloc[0]
        assert np.sqrt(np.sum(part["rows"] * part["rmse"] ** 2) / part["rows"].sum()) == pytest.approx(row["eval_rmse"], rel=1e-9)
        assert np.sum(part["rows"] * part["loss"]) / part["rows"].sum() == pytest.approx(row["eval_loss"], rel=1e-9)
    # compare shows them: groups.csv and the per-survey table of summary.md
    assert compare.main([str(tmp_path)]) == 0
    groups = pd.read_csv(tmp_path / "groups.csv")
    survey = groups[groups["grouping"] == "survey"].set_index("group")
    assert survey.loc["gaia", "test_rmse"] == by_survey["gaia"]["rmse"] and survey.loc["gaia", "rows"] == by_survey["gaia"]["rows"]
    assert "per survey" in (tmp_path / "summary.md").read_text()


def test_group_report_by_hand():
    report = group_report(np.array([1.0, 2.0, 3.0, 10.0]), np.array([1.5, 2.0, 2.5, 11.0]), np.array(["b", "a", "a", "b"]))
    assert list(report) == ["a", "b"]
    assert report["a"] == {"rows": 2, "rmse": pytest.approx(np.sqrt(0.125)), "r2": pytest.approx(0.5), "bias": pytest.approx(-0.25)}
    assert report["b"]["bias"] == pytest.approx(0.75) and report["b"]["rmse"] == pytest.approx(np.sqrt((0.25 + 1) / 2))
