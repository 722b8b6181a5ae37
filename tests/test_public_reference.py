"""preprocess.reference: preprocessing fitted on public data, no statistics round, said on the card."""

import hashlib
import json

import pytest

from astroscale_fl import config, run_config
from astroscale_fl.data.nodes import task_split
from astroscale_fl.data.tasks import get_task
from astroscale_fl.deploy.split_nodes import write_node_dirs
from astroscale_fl.errors import ConfigError
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.preprocessing.reference import fit_reference
from strategies import build_strategy
from tests.inprocess import InProcessGrid

DP = ["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "federation.num_nodes=2",
      "task.min_parallax_snr=40", "model.widths=[16]", "train.batch_size=32", "federation.num_rounds=2",
      "federation.metrics_port=0", "output.publish=false"]


@pytest.fixture(scope="module")
def public_table(tmp_path_factory):
    """A 'public' table with the task's columns: here the held-out test split."""
    cfg = run_config.validate(config.compose(DP))
    _, test = task_split(cfg)
    path = tmp_path_factory.mktemp("public") / "public.parquet"
    test.to_parquet(path, index=False)
    return path, test


def run(tmp_path, overrides):
    from astroscale_fl.federation.server import run_federation

    cfg = run_config.validate(config.compose(overrides))
    dirs = write_node_dirs(cfg, tmp_path / "nodes", int(cfg.federation.num_nodes))
    grid = InProcessGrid(len(dirs), node_configs=[{"data-dir": str(d)} for d in dirs])
    metrics = run_federation(grid, cfg, build_strategy(cfg), tmp_path / "run", show_progress=False)
    card = json.loads((tmp_path / "run" / "model" / "model_card.json").read_text())
    state = json.loads((tmp_path / "run" / "model" / "preprocessing.json").read_text())
    return cfg, grid, metrics, card, state


def message_types(grid):
    return {m.metadata.message_type for m in grid.received}


def test_reference_table_replaces_the_statistics_round(tmp_path, public_table):
    path, frame = public_table
    cfg, grid, metrics, card, state = run(tmp_path, DP + [f"preprocess.reference={path}", "federation.fraction_evaluate=0"])
    assert message_types(grid) == {"train"}  # the nodes' rows leave only through DP-SGD updates
    expected = Pipeline.from_config(get_task(cfg.task), cfg).fit(frame).state_dict()
    assert state == json.loads(json.dumps(expected))  # the exported pipeline is the reference's
    stats = card["privacy"]["preprocessing_statistics"]
    assert stats["source"] == "public reference" and stats["rows"] == len(frame)
    assert stats["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert metrics["train_rows"] is None and metrics["rounds"] == 2


def test_default_statistics_round_is_declared_uncovered(tmp_path):
    _, grid, _, card, _ = run(tmp_path, DP)
    assert "query" in message_types(grid)
    stats = card["privacy"]["preprocessing_statistics"]
    assert stats["source"] == "nodes" and stats["covered_by_dp"] is False


def test_reference_preprocessing_json_is_used_as_is(tmp_path, public_table):
    path, _ = public_table
    cfg = run_config.validate(config.compose(DP))
    fitted, _ = fit_reference(get_task(cfg.task), cfg, path)
    saved = tmp_path / "preprocessing.json"
    saved.write_text(json.dumps(fitted.state_dict()))
    again, info = fit_reference(get_task(cfg.task), cfg, saved)
    assert again.state_dict() == fitted.state_dict() and info["rows"] is None


def test_bad_references_are_one_line_config_errors(capsys, tmp_path, public_table):
    path, frame = public_table
    cfg = run_config.validate(config.compose(DP))
    task = get_task(cfg.task)
    with pytest.raises(ConfigError, match="preprocess.reference: .*nope.csv not found"):
        fit_reference(task, cfg, tmp_path / "nope.csv")
    thin = tmp_path / "thin.csv"
    frame.drop(columns=["B-V"]).to_csv(thin, index=False)
    with pytest.raises(ConfigError, match=r"thin.csv lacks column\(s\) \['B-V'\]"):
        fit_reference(task, cfg, thin)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**Pipeline.from_config(task, cfg).fit(frame).state_dict(), "inputs": ["ra"]}))
    with pytest.raises(ConfigError, match="was fitted for inputs"):
        fit_reference(task, cfg, other)
    # the CLI stops before training, with one line and exit 2 (its entry in this process; the same exit
    # path as a real process: test_bad_inputs.test_train_cli_exits_2_with_one_line_and_no_run_directory)
    from astroscale_fl.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", f"preprocess.reference={thin}", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("error: preprocess.reference:") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_reference_fits_the_isolation_forest_every_node_and_the_model_share(tmp_path, public_table):
    """With preprocess.reference the forest is fitted on the public table, travels in
    preprocessing.json and can flag; without one, flag is refused (a node's forest stays on the node)."""
    path, frame = public_table
    forest = ["preprocess.outliers=isolation_forest", "preprocess.outlier_threshold=0.6", "preprocess.outlier_action=flag"]
    with pytest.raises(ConfigError, match="preprocess.outlier_action"):
        run_config.validate(config.compose(DP + forest))
    cfg, grid, metrics, card, state = run(tmp_path, DP + forest + [f"preprocess.reference={path}"])
    step = next(s["state"] for s in state["steps"] if s["kind"] == "isolation_forest")
    assert step["action"] == "flag" and len(step["forest"]["trees"]) == 100 and state["features"][-1] == "outlier"
    expected = Pipeline.from_config(get_task(cfg.task), cfg).fit(frame).state_dict()
    assert state == json.loads(json.dumps(expected))
    assert metrics["rounds"] == 2
