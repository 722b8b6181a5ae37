"""The survey_redshift task: simulated surveys as nodes, and the seed's predict command."""

import json
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from astroscale_fl import config, run_config
from astroscale_fl.data.nodes import partition_frame, task_split
from astroscale_fl.data.split import node_names
from astroscale_fl.train import preflight
from tests.conftest import ROOT, cli_env

SMALL = ["task=survey_redshift", "task.n_stars=4000"]


def test_defaults_pick_one_node_per_survey():
    cfg = preflight(run_config.validate(config.compose(SMALL)))
    assert cfg.partition.name == "by_survey" and cfg.federation.num_nodes == 4
    train, test = task_split(cfg)
    assert list(train.columns[:8]) == ["id", "ra", "dec", "teff", "logg", "fe_h", "snr", "parallax"]
    assert node_names(train, cfg.partition, 4) == ["apogee", "gaia", "rave", "sdss"]
    for k, survey in enumerate(["apogee", "gaia", "rave", "sdss"]):
        rows = partition_frame(cfg, k, 4)
        assert set(rows["survey"]) == {survey}
    # surveys really differ (non-IID): APOGEE giants vs SDSS dwarfs, RAVE south
    apogee, rave, sdss = (partition_frame(cfg, k, 4) for k in (0, 2, 3))
    assert apogee["logg"].median() < sdss["logg"].median()
    assert rave["dec"].max() < 10


def test_other_partitions_and_node_counts_still_apply():
    cfg = preflight(run_config.validate(config.compose(SMALL + ["partition=iid"])))
    assert cfg.partition.name == "iid" and cfg.federation.num_nodes == 5
    with pytest.raises(Exception, match="federation.num_nodes=4"):
        preflight(run_config.validate(config.compose(SMALL + ["federation.num_nodes=3"])))


def test_catalog_cache_gives_identical_frames():
    cfg = run_config.validate(config.compose(SMALL))
    from astroscale_fl.data.tasks import get_task

    a = get_task(cfg.task).load(cfg.task)
    b = get_task(cfg.task).load(cfg.task)  # second time from the cache
    assert a.equals(b)
    assert np.isfinite(a[["ra", "dec", "teff", "logg", "fe_h", "snr", "parallax", "z"]].to_numpy()).all()
    assert OmegaConf.is_config(cfg)


@pytest.mark.slow
def test_train_then_seed_predict_command(tmp_path):
    """`astroscale-fl train task=survey_redshift` publishes; predict.py then needs only the 7 values."""
    env = cli_env()
    train = subprocess.run([sys.executable, "-m", "astroscale_fl.cli", "train", *SMALL, "federation.num_rounds=2",
                            "model.widths=[16]"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    assert (tmp_path / "models" / "survey_redshift" / "latest" / "model_card.json").is_file()
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), "200.12", "-47.33", "5800", "4.3", "0.0", "100", "7.2"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert list(result) == ["predicted_z"] and abs(result["predicted_z"]) < 0.01  # |v_r| < 3000 km/s


def test_simulator_parquet_trains_through_the_catalog_task(tmp_path):
    """The simulator's Parquet output is an ordinary catalog: one node per survey via by_column."""
    from astroscale_fl.federation.server import run_federation
    from astroscale_fl.simulator.__main__ import main as simulator_main
    from strategies import build_strategy
    from tests.inprocess import InProcessGrid

    path = tmp_path / "sim.parquet"  # the simulator's command, in this process (its survey tables are built once)
    assert simulator_main(["--n", "3000", "--seed", "5", "--out", str(path), "--no-truth"]) == 0
    overrides = ["task=catalog", f"task.path={path}", "task.features=[ra,dec,teff,logg,fe_h,snr,parallax]",
                 "task.target=z", "partition=by_column", "partition.column=survey", "federation.num_rounds=1",
                 "model.widths=[16]", "federation.metrics_port=0", "output.publish=false", "federation.checkpoint=false"]
    cfg = preflight(run_config.validate(config.compose(overrides)))
    assert cfg.federation.num_nodes == 4
    train, _ = task_split(cfg)
    assert node_names(train, cfg.partition, 4) == ["apogee", "gaia", "rave", "sdss"]
    grid = InProcessGrid(4)
    metrics = run_federation(grid, cfg, build_strategy(cfg), tmp_path / "run", show_progress=False)
    assert metrics["rounds"] == 1 and np.isfinite(metrics["test_r2"])
    assert 0.8 * len(train) < metrics["train_rows"] < len(train)  # less each node's local validation share
