"""DP statistics round (privacy.statistics_epsilon): mechanism, ledger composition, model card."""

import json

import numpy as np
import pytest

from astroscale_fl import config, run_config
from astroscale_fl.data.node_data import node_data
from astroscale_fl.data.tasks import get_task
from astroscale_fl.deploy.split_nodes import write_node_dirs
from astroscale_fl.export import verify_card
from astroscale_fl.federation.client import node_split
from astroscale_fl.federation.messages import round_config
from astroscale_fl.federation.rounds import FederationError, federated_statistics
from astroscale_fl.preprocessing import ColumnStatistics, Pipeline
from astroscale_fl.privacy import LEDGER_FILENAME, PrivacyLedger, card
from astroscale_fl.privacy.dp_statistics import BINS, StatisticsRelease, bin_edges, card_section
from astroscale_fl.privacy.ledger import PrivacyError
from tests.inprocess import InProcessGrid

SMALL = ["federation.num_nodes=3", "task.min_parallax_snr=40", "model.widths=[16]", "train.batch_size=32"]


@pytest.fixture(scope="module")
def frame(absmag_frame):
    return absmag_frame.iloc[:4000].reset_index(drop=True)


def test_bins_are_fixed_monotone_and_fine_near_zero():
    edges = bin_edges(0.0, 2.0)  # e_Hpmag: typical values are 1e-3 mag
    assert len(edges) == BINS + 1 and edges[0] == 0.0 and edges[-1] == 2.0 and np.all(np.diff(edges) > 0)
    assert np.diff(edges)[0] < 1e-3
    wide = bin_edges(-2e4, 2e4)  # proper motions: a few mas/yr near 0, coarse in the tails
    assert np.diff(wide)[BINS // 2] < 5 and np.diff(wide)[0] > 500


def test_release_without_noise_matches_exact_statistics(frame):
    task = get_task("hipparcos_absmag")
    pipeline = Pipeline.build(task)
    release = StatisticsRelease.for_pipeline(task, pipeline)
    assert release.sensitivity == pytest.approx(np.sqrt(13 + 3))  # 13 feature histograms, target moments
    exact = pipeline.compute_statistics(frame)
    dp = release.release(pipeline.statistics_frame(frame), 1e-9, np.random.default_rng(0))
    target = -1
    assert dp.count[target] == pytest.approx(exact.count[target])
    assert dp.mean()[target] == pytest.approx(exact.mean()[target], rel=1e-9)
    assert dp.std()[target] == pytest.approx(exact.std()[target], rel=1e-9)
    columns = pipeline.statistics_frame(frame)
    for j, column in enumerate(release.columns[:-1]):
        edges = bin_edges(*release.ranges[j])
        for q in (0.25, 0.5, 0.75):
            true = np.nanquantile(np.asarray(columns[column], dtype=float), q)
            i = np.clip(np.searchsorted(edges, true), 1, BINS)
            width = np.diff(edges)[max(0, i - 2): i + 1].max()  # the quantile's bin and its neighbours
            assert abs(dp.quantile(q)[j] - true) <= width, (column, q)
    np.testing.assert_allclose(dp.missing[:-1], exact.missing[:-1], atol=1e-6)


def test_noise_has_the_calibrated_scale(frame):
    task = get_task("hipparcos_absmag")
    pipeline = Pipeline.build(task)
    release = StatisticsRelease.for_pipeline(task, pipeline)
    columns = pipeline.statistics_frame(frame.iloc[:200])
    rng = np.random.default_rng(1)
    draws = 150  # the sample std's relative error is ~1/sqrt(2 * draws) = 6%: 15% is 2.6 of those
    counts = np.array([release.release(columns, 2.0, rng).count[-1] for _ in range(draws)])
    assert counts.std() == pytest.approx(2.0 * release.sensitivity, rel=0.15)
    assert counts.mean() == pytest.approx(200, abs=3 * 2.0 * release.sensitivity / np.sqrt(draws))  # 3 standard errors


def test_unbounded_columns_are_refused():
    cfg = run_config.validate(config.compose(["task=catalog", "task.path=x.csv", "task.features=[a,b]", "task.target=y"]))
    task = get_task(cfg.task)
    with pytest.raises(PrivacyError, match=r"column\(s\) \['a', 'b', 'y'\].*no finite physical range"):
        StatisticsRelease.for_pipeline(task, Pipeline.from_config(task, cfg))


def _grid(overrides, root):
    cfg = run_config.validate(config.compose(overrides))
    dirs = write_node_dirs(cfg, root, int(cfg.federation.num_nodes))
    return cfg, dirs, InProcessGrid(len(dirs), node_configs=[{"data-dir": str(d)} for d in dirs])


def test_statistics_round_spends_once_in_the_ledger_and_the_card_recomputes(tmp_path):
    cfg, dirs, grid = _grid([*SMALL, "privacy.statistics_epsilon=1.0"], tmp_path)
    entries: list = []
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), 60, privacy_entries=entries)
    again = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), 60)  # same run: the kept release
    np.testing.assert_array_equal(stats.sketch, again.sketch)
    assert len(entries) == 3
    for d in dirs:
        ledger = PrivacyLedger.load(d / ".astroscale" / LEDGER_FILENAME)
        assert len(ledger.history) == 1 and ledger.history[0][1:] == (1.0, 1)  # one Gaussian release, spent once
        assert 0.95 < ledger.epsilon() <= 1.0
    section = card_section(entries, 1.0)
    assert section["covered_by_dp"] is True and section["source"] == "nodes"
    assert 0.95 < section["epsilon"] <= 1.0 and section["delta"] == max(e["delta"] for e in entries)
    assert card.verify_section({"max_epsilon": 0.0, "nodes": [], "preprocessing_statistics": section}) == []
    forged = json.loads(json.dumps(section))
    forged["nodes"][0]["epsilon"] = 0.1
    assert card.verify_section({"max_epsilon": 0.0, "nodes": [], "preprocessing_statistics": forged})
    pipeline = Pipeline.from_config(get_task(cfg.task), cfg)
    exact = ColumnStatistics.merge([pipeline.compute_statistics(node_split(cfg, node_data(cfg, {"data-dir": str(d)}))[0]) for d in dirs])
    # ~1,900 rows: the noisy target mean is off by ~0.25 mag (1 sd); 6 sd keeps this check from flaking
    assert stats.mean()[-1] == pytest.approx(exact.mean()[-1], abs=1.5)
    assert stats.count[-1] == pytest.approx(exact.count[-1], abs=6 * 3.6 * 4 * np.sqrt(3))


def test_budget_smaller_than_the_release_declines_with_a_reason(tmp_path):
    cfg, _, grid = _grid([*SMALL, "privacy=dp_sgd", "privacy.statistics_epsilon=2.0", "privacy.epsilon_budget=1.0"], tmp_path)
    with pytest.raises(FederationError, match="the statistics round: privacy budget"):
        federated_statistics(grid, grid.get_node_ids(), round_config(cfg), 60)


def test_dp_sgd_run_composes_statistics_and_training_in_the_card(tmp_path):
    from astroscale_fl.federation.server import run_federation
    from strategies import build_strategy

    overrides = [*SMALL, "privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0",
                 "privacy.statistics_epsilon=1.0", "federation.num_rounds=1", "federation.metrics_port=0",
                 "output.publish=false", "federation.fraction_evaluate=0"]
    cfg, dirs, grid = _grid(overrides, tmp_path / "nodes")
    metrics = run_federation(grid, cfg, build_strategy(cfg), tmp_path / "run", show_progress=False)
    path = tmp_path / "run" / "model" / "model_card.json"
    section = json.loads(path.read_text())["privacy"]
    stats = section["preprocessing_statistics"]
    assert stats["covered_by_dp"] is True and 0.95 < stats["epsilon"] <= 1.0
    for node in section["nodes"]:  # lifetime: the statistics release, then the DP-SGD steps
        assert node["history"][0][1:] == [1.0, 1] and node["history"][1][0] == 1.0
        assert node["epsilon"] > stats["epsilon"]
    assert verify_card.main([str(path)]) == 0
    assert metrics["train_rows"] > 0


def test_statistics_round_reads_a_node_whose_data_is_a_train_folder(tmp_path):
    """A deployed node may hold ``train/`` (a folder of Parquet files) instead of ``train.parquet``
    (training reads either): the DP statistics round reads the same rows from both layouts."""
    import pandas as pd

    cfg, dirs, _ = _grid([*SMALL, "privacy.statistics_epsilon=1.0"], tmp_path / "file")
    folders = []
    for d in dirs:
        frame = pd.read_parquet(d / "train.parquet")
        folder = tmp_path / "folder" / d.name
        (folder / "train").mkdir(parents=True)
        frame.iloc[: len(frame) // 2].to_parquet(folder / "train" / "part-0.parquet", index=False)
        frame.iloc[len(frame) // 2:].to_parquet(folder / "train" / "part-1.parquet", index=False)
        folders.append(folder)
        from_file, from_folder = (node_split(cfg, node_data(cfg, {"data-dir": str(p)})) for p in (d, folder))
        for a, b in zip(from_file, from_folder):
            pd.testing.assert_frame_equal(a, b)
    grid = InProcessGrid(len(folders), node_configs=[{"data-dir": str(f)} for f in folders])
    entries: list = []
    stats = federated_statistics(grid, grid.get_node_ids(), round_config(cfg), 60, privacy_entries=entries)
    assert len(entries) == 3 and stats.count[-1] > 0
    for folder in folders:
        assert PrivacyLedger.load(folder / ".astroscale" / LEDGER_FILENAME).history
