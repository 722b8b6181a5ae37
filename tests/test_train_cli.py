"""`astroscale-fl train`: a real 2-node x 2-round Flower simulation, and bad inputs."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from astroscale_fl import run_config
from astroscale_fl.data.nodes import task_split
from astroscale_fl.export.predict import Predictor
from tests.conftest import CLI, ROOT, cli_env


def train(*overrides, cwd=ROOT, timeout=600):
    return subprocess.run([*CLI, "train", *overrides], capture_output=True, text=True, cwd=cwd, env=cli_env(), timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sim")
    out = train("federation.num_nodes=2", "federation.num_rounds=2", "model.widths=[32]",
                f"output.models_dir={tmp / 'models'}", f"hydra.run.dir={tmp / 'run'}")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_simulation_writes_history_metrics_and_model(run_dir):
    run = run_dir / "run"
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == [1, 2]
    for col in ("train_loss", "eval_loss", "eval_rmse", "eval_r2", "test_rmse", "test_r2", "wall_seconds"):
        assert all(np.isfinite(float(r[col])) for r in rows), col
    assert all(int(r["nodes_replied"]) == 2 and int(r["nodes_failed"]) == 0 for r in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_r2"] == pytest.approx(float(rows[metrics["selected_round"] - 1]["test_r2"]))  # select=best
    assert metrics["test_r2"] > 0.5 > metrics["initial_test_r2"]  # it learned
    assert metrics["config"]["federation"]["num_nodes"] == 2 and metrics["wall_seconds"] > 0
    card = json.loads((run / "model" / "model_card.json").read_text())
    assert card["rounds"] == 2 and card["num_nodes"] == 2 and card["strategy"]["name"] == "fedavg"
    assert (run_dir / "models" / "hipparcos_absmag" / "latest" / "model_card.json").is_file()


@pytest.mark.slow
def test_exported_model_reproduces_server_test_metrics(run_dir):
    """The export alone (directory + package) gives the server's final test RMSE."""
    run = run_dir / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    from omegaconf import OmegaConf

    cfg = run_config.validate(OmegaConf.create(metrics["config"]))
    _, test = task_split(cfg)
    predictor = Predictor(run / "model")
    pred = predictor.predict_frame(test)
    y = predictor.pipeline.target.inverse(predictor.pipeline.transform_target(test))  # as the server saw it
    assert np.sqrt(np.mean((pred - y) ** 2)) == pytest.approx(metrics["test_rmse"], rel=1e-9)
    example = json.loads((run / "model" / "model_card.json").read_text())["example"]
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), "--model", str(run / "model"),
                          *map(repr, example["inputs"])], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["predicted_M_Hp"] == predictor.predict_one(example["inputs"])


@pytest.mark.parametrize("override, needle", [
    ("foo=1", "foo"),
    ("federation.num_rounds=abc", "federation.num_rounds"),
    ("task.path=/nonexistent/hip2.dat", "/nonexistent/hip2.dat"),
    ("federation.num_nodes=100000", "would get no rows"),
    ("strategy=nope", "strategy"),
])
def test_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path, override, needle, capsys):
    """The CLI's entry in this process (a fresh interpreter per case cost seconds each); the same
    exit path in a real process: test_bad_inputs.test_train_cli_exits_2_with_one_line_and_no_run_directory."""
    from astroscale_fl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", override, f"hydra.run.dir={tmp_path / 'run'}", "output.publish=false"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert needle in err and err.strip().count("\n") == 0 and err.startswith("error: "), err
    assert not (tmp_path / "run").exists()


def test_help_explains():
    out = subprocess.run([*CLI, "--help"], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert out.returncode == 0 and "train" in out.stdout and "predict" in out.stdout


@pytest.mark.slow
def test_centralized_reference_and_compare(run_dir):
    """mode=centralized writes the same outputs; compare summarises runs beside it."""
    models = run_dir.parent / "central-models"
    out = train("mode=centralized", "federation.num_rounds=2", "model.widths=[32]", f"output.models_dir={models}",
                f"hydra.run.dir={run_dir / 'centralized'}")
    assert out.returncode == 0, out.stderr[-2000:]
    central = json.loads((run_dir / "centralized" / "metrics.json").read_text())
    assert central["mode"] == "centralized" and central["rounds"] == 2
    # like a federated run, it publishes its export, whose card carries a worked example
    card = json.loads((models / "hipparcos_absmag" / "latest" / "model_card.json").read_text())
    assert card["mode"] == "centralized" and card["metrics"]["test_r2"] == pytest.approx(central["test_r2"])
    assert len(card["example"]["inputs"]) == len(card["inputs"])
    from astroscale_fl.cli import main  # compare through the CLI's entry in this process (train above is a real one)

    assert main(["compare", str(run_dir), "--target-r2", "0.5"]) == 0
    with open(run_dir / "summary.csv") as fh:
        rows = {r["strategy"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"fedavg", "centralized"}
    fed = json.loads((run_dir / "run" / "metrics.json").read_text())
    assert float(rows["fedavg"]["test_r2"]) == pytest.approx(fed["test_r2"])
    assert float(rows["fedavg"]["gap_to_centralized_r2"]) == pytest.approx(central["test_r2"] - fed["test_r2"])
    assert int(rows["fedavg"]["bytes_up"]) == fed["bytes_up"] > 0
    assert (run_dir / "summary.md").read_text().startswith("| strategy")
    assert (run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_every_job_of_a_multirun_prints_each_info_line_once(tmp_path):
    sweep = tmp_path / "sweep"
    out = train("-m", "seed=0,1", "federation.num_rounds=1", "federation.num_nodes=2", "model.widths=[8]",
                "output.publish=false", "federation.metrics_port=0", f"hydra.sweep.dir={sweep}")
    assert out.returncode == 0, out.stderr
    both = out.stdout + out.stderr
    done = [line for line in both.splitlines() if "done: test R²=" in line]
    assert len(done) == 2 and all(" mag in " in line for line in done), both  # once per job, job #1 included
    assert both.count("preprocessing fitted from") == 2
    for job in sorted(sweep.glob("[01]_*")):
        assert (job / "train.log").read_text().count("done: test R²=") == 1


@pytest.mark.slow
def test_showcase_prints_test_stars_with_catalogue_ids_beside_the_test_rmse(run_dir):
    model = run_dir / "models" / "hipparcos_absmag" / "latest"
    card = json.loads((model / "model_card.json").read_text())
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "showcase.py"), str(model)], capture_output=True, text=True,
                         env=cli_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(card["examples"]) == 5 and card["example"] == card["examples"][2]
    predictor = Predictor(model)
    for example, line in zip(card["examples"], lines[1:6]):
        assert example["id"].isdigit()  # HIP 70761, not 70761.0
        cells = line.split()
        assert cells[0] == example["id"] and float(cells[2]) == pytest.approx(predictor.predict_one(example["inputs"]), abs=1e-3)
    assert [e["target"] for e in card["examples"]] == sorted(e["target"] for e in card["examples"])
    assert f"test RMSE over all {card['metrics']['test_rows']} test stars: {card['metrics']['test_rmse']:.4g} mag" in lines[6]
    assert lines[7].startswith("predict one yourself: python scripts/predict.py --model ")
