"""`astroscale-fl train -m hydra/sweeper=survey_redshift`: Optuna trials optimise the selected validation score."""

import json

import pytest
import yaml

from tests.test_train_cli import train

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


@pytest.mark.slow
def test_optuna_sweep_maximises_the_selected_validation_score(tmp_path):
    out = train("-m", "task=survey_redshift", "hydra/sweeper=survey_redshift", "hydra.sweeper.n_trials=2",
                "task.n_stars=3000", "model.widths=[16]", "federation.num_rounds=2", "federation.metrics_port=0",
                "output.publish=false", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-3000:]
    result = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    trials = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/metrics.json"))]
    assert len(trials) == 2
    # the objective is each run's selected pooled validation score, never its test score
    assert result["best_value"] == pytest.approx(max(t["selected_val_score"] for t in trials), rel=1e-12)
    assert result["best_value"] not in [t["test_r2"] for t in trials]
    best = max(trials, key=lambda t: t["selected_val_score"])
    assert best["config"]["strategy"]["name"] == result["best_params"]["strategy"]
    assert best["config"]["train"]["lr"] == pytest.approx(result["best_params"]["train.lr"])
