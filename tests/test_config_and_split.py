"""Config validation and partitions."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from astroscale_fl import config, config_schema, run_config
from astroscale_fl.data.split import assign_nodes, train_test_split
from astroscale_fl.data.tasks import get_task
from astroscale_fl.errors import ConfigError, DataError
from astroscale_fl.federation.strategy_params import STRATEGY_PARAMS, FedAdamParams, strategy_params
from astroscale_fl.privacy.settings import PRIVACY_SETTINGS, AdaptiveClipping, NodeLevelSettings, privacy_settings

HIP_COLUMNS = get_task("hipparcos_absmag").partition_columns


def test_default_config_validates():
    cfg = run_config.validate(config.compose([]))
    assert cfg.task.name == "hipparcos_absmag" and cfg.strategy.name == "fedavg" and cfg.partition.name == "sky"
    assert cfg.privacy.name == "none" and cfg.device == "auto"
    for key in ("num_nodes", "num_rounds", "fraction_train"):
        assert key in cfg.federation
    for key in ("local_epochs", "batch_size", "lr"):
        assert key in cfg.train
    assert run_config.from_json(config.to_json(cfg)) == cfg


def test_defaults_come_from_the_yaml_alone(tmp_path, monkeypatch):
    """The schemas hold no defaults: a value changed in a copy of the conf/ tree is the value used."""
    import shutil

    tree = tmp_path / "conf"
    shutil.copytree(config.conf_dir(), tree)
    fedprox = tree / "strategy" / "fedprox.yaml"
    fedprox.write_text(fedprox.read_text().replace("mu: 0.01", "mu: 0.5"))
    assert run_config.validate(config.compose(["strategy=fedprox"])).strategy.mu == 0.01
    monkeypatch.setenv("ASTROSCALE_FL_CONF", str(tree))
    assert run_config.validate(config.compose(["strategy=fedprox"])).strategy.mu == 0.5


@pytest.mark.parametrize("override, message", [
    ("~federation.num_rounds", "federation.num_rounds: a value is required"),
    ("~strategy.server_lr", "strategy.server_lr: a value is required"),
    ("foo=1", "foo"),
    ("federation.num_rounds=abc", "federation.num_rounds"),
    ("federation.fraction_train=1.5", "federation.fraction_train"),
    ("train.lr=-1", "train.lr"),
    ("device=tpu", "device"),
    ("strategy=nope", "strategy"),
    ("+task.bogus=1", "task.bogus"),
    ("train.batch_size=0", "train.batch_size"),
    ("+privacy.bogus=1", "privacy.bogus"),
    ("+strategy.bogus=1", "strategy.bogus"),
])
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(ConfigError) as info:
        run_config.validate(config.compose([override]))
    text = str(info.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize("group, owners", [("privacy", PRIVACY_SETTINGS), ("strategy", STRATEGY_PARAMS)])
def test_privacy_and_strategy_keys_are_defined_once_by_their_owners(group, owners):
    """The schema of each privacy and strategy choice is its owner's frozen settings class: the YAML's keys
    are that class's fields, nothing in config_schema describes them again, and the validated config
    builds the owner's object."""
    assert group not in config_schema.GROUPS
    for name, owner in owners.items():
        yaml_keys = set(OmegaConf.load(config.conf_dir() / group / f"{name}.yaml")) - {"name"}
        assert yaml_keys == {f.name for f in dataclasses.fields(owner)}, name
        assert [f.name for f in dataclasses.fields(run_config.SCHEMAS[group][name])] == ["name", *(f.name for f in dataclasses.fields(owner))]
        assert owner.__dataclass_params__.frozen
    cfg = run_config.validate(config.compose(["privacy=dp_fedavg", "strategy=fedadam"]))
    plain = {k: v for k, v in OmegaConf.to_container(cfg.privacy).items() if k != "name"}
    assert privacy_settings(cfg.privacy) == NodeLevelSettings(**{**plain, "adaptive_clipping": AdaptiveClipping(**plain["adaptive_clipping"])})
    assert strategy_params(cfg.strategy) == FedAdamParams(**{k: v for k, v in cfg.strategy.items() if k != "name"})


def test_a_nested_flag_must_be_true_or_false():
    with pytest.raises(ConfigError, match=r"^privacy.adaptive_clipping.enabled: expected true or false, got 2$"):
        run_config.validate(config.compose(["privacy=dp_fedavg", "privacy.adaptive_clipping.enabled=2"]))


def test_cuda_requested_without_cuda_is_clear():
    import torch

    from astroscale_fl.learning.device import resolve_device

    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_test_split_is_seeded_and_disjoint(absmag_frame):
    train, test = train_test_split(absmag_frame, 0.2, seed=0)
    train2, test2 = train_test_split(absmag_frame, 0.2, seed=0)
    assert train["id"].equals(train2["id"]) and test["id"].equals(test2["id"])
    assert not set(train["id"]) & set(test["id"])
    assert len(train) + len(test) == len(absmag_frame)
    assert 0.18 < len(test) / len(absmag_frame) < 0.22


@pytest.mark.parametrize("name", ["iid", "sky", "depth", "dirichlet"])
def test_partitions_cover_rows_disjointly_and_are_seeded(absmag_frame, name):
    cfg = OmegaConf.create({"name": name, **({"alpha": 0.5, "bins": 10} if name == "dirichlet" else {})})
    nodes = assign_nodes(absmag_frame, cfg, 5, seed=0, columns=HIP_COLUMNS)
    assert nodes.shape == (len(absmag_frame),) and set(np.unique(nodes)) == set(range(5))
    np.testing.assert_array_equal(nodes, assign_nodes(absmag_frame, cfg, 5, seed=0, columns=HIP_COLUMNS))


def test_depth_partition_orders_nodes_by_magnitude(absmag_frame):
    nodes = assign_nodes(absmag_frame, OmegaConf.create({"name": "depth"}), 4, seed=0, columns=HIP_COLUMNS)
    mag = absmag_frame["Hpmag"].to_numpy()
    assert all(mag[nodes == k].max() <= mag[nodes == k + 1].min() for k in range(3))
    assert np.ptp(np.bincount(nodes)) <= 1  # equal-count bands


def test_dirichlet_partition_skews_labels_more_for_small_alpha(absmag_frame):
    def skew(alpha):
        cfg = OmegaConf.create({"name": "dirichlet", "alpha": alpha, "bins": 10})
        nodes = assign_nodes(absmag_frame, cfg, 5, seed=0, columns=HIP_COLUMNS)
        means = [absmag_frame["M_Hp"].to_numpy()[nodes == k].mean() for k in range(5)]
        return np.std(means)

    assert skew(0.1) > 3 * skew(100.0)


def test_by_column_partition_follows_values():
    frame = pd.DataFrame({"survey": ["gaia", "rave", "gaia", "apogee", "rave"], "x": range(5)})
    cfg = OmegaConf.create({"name": "by_column", "column": "survey"})
    nodes = assign_nodes(frame, cfg, 3, seed=0)
    assert list(nodes) == [1, 2, 1, 0, 2]  # sorted values: apogee, gaia, rave
    with pytest.raises(ConfigError, match="federation.num_nodes=3"):
        assign_nodes(frame, cfg, 2, seed=0)
    with pytest.raises(ConfigError, match="not a column"):
        assign_nodes(frame, OmegaConf.create({"name": "by_column", "column": "nope"}), 3, seed=0)


def test_sky_partition_is_declination_bands(absmag_frame):
    nodes = assign_nodes(absmag_frame, OmegaConf.create({"name": "sky"}), 4, seed=0, columns=HIP_COLUMNS)
    dec = absmag_frame["DErad"].to_numpy()
    highs = [dec[nodes == k].max() for k in range(4)]
    lows = [dec[nodes == k].min() for k in range(4)]
    assert all(highs[k] <= lows[k + 1] for k in range(3))  # disjoint, ordered bands
    assert abs(np.sin(highs[1])) < 0.01  # equal-area bands: the middle edge is the equator


def test_more_nodes_than_rows_is_a_clear_error():
    frame = pd.DataFrame({"DErad": [0.1, 0.2, 0.3]})
    with pytest.raises(DataError, match="would get no rows"):
        assign_nodes(frame, OmegaConf.create({"name": "iid"}), 5, seed=0)
