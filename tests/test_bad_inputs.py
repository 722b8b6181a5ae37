"""Issue 17: garbage training data and config mistakes stop `train` before anything is written.

The tables below are the bad-input cases; each must give one short line naming the key or
column (and, for data, the count and an example row), through the same preflight that
`astroscale-fl train` runs before Hydra creates a run directory.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from astroscale_fl import config, run_config
from astroscale_fl.errors import MAX_LINE_CHARS, AstroScaleError, one_line
from astroscale_fl.federation import checkpoint
from astroscale_fl.train import check_overrides, preflight
from tests.conftest import CLI, ROOT, cli_env

N_ROWS = 2000


def _catalog(path: Path, edit=None) -> Path:
    """A real-valued table (features a, b; target y = a - 2b + noise) with ``edit`` applied."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=N_ROWS), "b": rng.normal(size=N_ROWS)})
    frame["y"] = frame.a - 2 * frame.b + 0.1 * rng.normal(size=N_ROWS)
    frame = frame.astype(object) if edit else frame
    if edit:
        edit(frame)
    frame.to_csv(path, index=False)
    return path


def _set(column, rows, value):
    def edit(frame):
        frame.loc[rows, column] = value
    return edit


DATA_CASES = {
    # name: (edit of the table, extra overrides, words the error must hold)
    "garbage_14pct_feature": (_set("a", slice(5, 284), "n/a?"), [], ["feature 'a'", "280 of 2000", "task.max_bad_fraction=0.01", "row 6 = 'n/a?'"]),
    "all_inf_feature": (_set("b", slice(None), np.inf), [], ["feature 'b'", "every value is ±inf"]),
    "all_minus_inf_feature": (_set("b", slice(None), -np.inf), [], ["feature 'b'", "every value is ±inf"]),
    "all_nan_feature": (_set("b", slice(None), np.nan), [], ["feature 'b'", "every value is empty / NaN"]),
    "inf_share_feature": (_set("a", slice(0, 99), np.inf), [], ["feature 'a'", "100 of 2000", "±inf", "row 1 = 'inf'"]),
    "text_feature": (_set("a", slice(None), "bright"), [], ["feature 'a'", "holds text, not numbers", "row 1 = 'bright'"]),
    "string_target": (_set("y", slice(None), "star"), [], ["task.target 'y'", "holds text, not numbers", "row 1 = 'star'"]),
    "all_nan_target": (_set("y", slice(None), np.nan), [], ["task.target 'y'", "every value is empty / NaN"]),
    "all_inf_target": (_set("y", slice(None), np.inf), [], ["task.target 'y'", "every value is ±inf"]),
    "garbage_target": (_set("y", slice(0, 49), "?"), [], ["task.target 'y'", "50 of 2000", "row 1 = '?'"]),
    "header_only": (lambda f: f.drop(f.index, inplace=True), [], ["no data rows", "header only"]),
    "target_is_feature": (None, ["task.features=[a,b,y]"], ["task.target 'y' is also listed in task.features"]),
    "small_share_strict_fraction": (_set("a", [3, 7], "x"), ["task.max_bad_fraction=0"], ["2 of 2000", "task.max_bad_fraction=0"]),
    "filter_removes_all": (None, ["task.filter='a > 100'"], ["task.filter 'a > 100' removed every row"]),
}


def _catalog_overrides(path: Path, extra: list[str]) -> list[str]:
    features = [] if any(o.startswith("task.features=") for o in extra) else ["task.features=[a,b]"]
    return ["task=catalog", f"task.path={path}", "task.target=y", *features, *extra]


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_garbage_training_data_stops_with_one_line(tmp_path, case):
    edit, extra, words = DATA_CASES[case]
    path = _catalog(tmp_path / "stars.csv", edit)
    with pytest.raises(AstroScaleError) as err:
        check_overrides(_catalog_overrides(path, extra))
    message = one_line(str(err.value))
    assert all(w in message for w in words), message
    assert "check the task's filters" not in message and len(message) <= MAX_LINE_CHARS


def test_a_small_share_of_garbage_goes_to_the_quarantine(tmp_path):
    from astroscale_fl.data.nodes import task_quarantine, task_split
    from astroscale_fl.train import write_quarantine

    def edit(frame):
        frame.loc[[3, 7], "a"] = "x?"
        frame.loc[11, "b"] = np.inf

    path = _catalog(tmp_path / "stars.csv", edit)
    cfg = preflight(run_config.validate(config.compose(_catalog_overrides(path, []))))
    train, test = task_split(cfg)
    assert len(train) + len(test) == N_ROWS - 3
    assert np.isfinite(train[["a", "b", "y"]].to_numpy()).all()
    write_quarantine(cfg, str(tmp_path / "run"))
    rejected = pd.read_csv(tmp_path / "run" / "quarantine.csv")
    assert rejected.to_dict("list") == {"row": [4, 8, 12], "column": ["a", "a", "b"], "value": ["x?", "x?", "inf"],
                                        "reason": ["a: not a number", "a: not a number", "b: ±inf"]}
    assert task_quarantine(cfg) is not None


def test_empty_cells_are_missing_values_not_garbage(tmp_path):
    path = _catalog(tmp_path / "stars.csv", _set("a", slice(0, 299), ""))  # 15 % blank: imputed later
    cfg = preflight(run_config.validate(config.compose(_catalog_overrides(path, []))))
    from astroscale_fl.data.nodes import task_split

    assert sum(map(len, task_split(cfg))) == N_ROWS


CONFIG_CASES = {
    # override(s): words the error must hold
    ("federation.metrics_port=99999",): ["federation.metrics_port", "0..65535", "99999"],
    ("federation.metrics_port=-1",): ["federation.metrics_port"],
    ("federation.round_timeout=-1",): ["federation.round_timeout", "positive"],
    ("federation.round_timeout=0",): ["federation.round_timeout"],
    ("federation.round_timeout=inf",): ["federation.round_timeout"],
    ("federation.min_replies=0",): ["federation.min_replies", ">= 1"],
    ("federation.num_nodes=2", "federation.min_replies=3"): ["federation.min_replies", "federation.num_nodes=2"],
    ("federation.num_nodes=10", "federation.fraction_train=0.2", "federation.min_replies=3"):
        ["federation.min_replies", "at most the 2 nodes a round samples"],
    ("federation.max_update_norm=-1",): ["federation.max_update_norm"],
    ("federation.max_update_norm=0",): ["federation.max_update_norm"],
    ("federation.max_update_norm=nan",): ["federation.max_update_norm"],
    ("model.widths=[0]",): ["model.widths", "1..65536"],
    ("model.widths=[-5,8]",): ["model.widths"],
    ("model.widths=[100000000]",): ["model.widths", "1..65536"],
    ("model.dropout=1.0",): ["model.dropout", "[0, 1)"],
    ("model.dropout=-0.1",): ["model.dropout"],
    ("model.activation=bogus",): ["model.activation", "relu", "'bogus'"],
    ("federation.resume_from=/nonexistent/run",): ["federation.resume_from", "/nonexistent/run"],
    ("task.max_bad_fraction=1.5",): ["task.max_bad_fraction", "[0, 1)"],
    ("task.max_bad_fraction=-0.1",): ["task.max_bad_fraction"],
    ("federation.num_nodes=100000",): ["would get no rows", "more)"],
    ("privacy=dp_sgd", "privacy.noise_multiplier=0.8", "privacy.epsilon_budget=0.01"):
        ["privacy.epsilon_budget=0.01", "one round costs epsilon=", "every node would decline round 1"],
}


@pytest.mark.parametrize("overrides", sorted(CONFIG_CASES))
def test_config_mistakes_are_caught_before_the_run(overrides):
    with pytest.raises(AstroScaleError) as err:
        check_overrides(list(overrides))
    message = one_line(str(err.value))
    assert all(w in message for w in CONFIG_CASES[overrides]), message
    assert len(message) <= MAX_LINE_CHARS


def test_resume_from_a_checkpoint_of_another_config_is_refused_in_preflight(tmp_path):
    other = OmegaConf.to_container(run_config.validate(config.compose(["model.widths=[8]"])), resolve=True)
    checkpoint.save(tmp_path, checkpoint.Checkpoint(1, OrderedDict(), {}, [], {}, other))
    with pytest.raises(AstroScaleError, match=r"federation.resume_from=.*: model differs"):
        check_overrides([f"federation.resume_from={tmp_path}"])


def test_noise_multiplier_on_the_command_line_wins_over_the_default_target():
    cfg = run_config.validate(config.compose(["privacy=dp_sgd", "privacy.noise_multiplier=1.1"]))
    assert cfg.privacy.noise_multiplier == 1.1 and cfg.privacy.target_epsilon is None
    assert run_config.validate(config.compose(["privacy=dp_sgd"])).privacy.target_epsilon == 8.0
    with pytest.raises(AstroScaleError, match="exactly one"):  # both given explicitly is still a contradiction
        run_config.validate(config.compose(["privacy=dp_sgd", "privacy.noise_multiplier=1.1", "privacy.target_epsilon=3"]))


@pytest.mark.parametrize("widths, activation, dropout", [([0], "relu", 0.0), ([100_000_000], "relu", 0.0), ([8] * 65, "relu", 0.0),
                                                       ([8, True], "relu", 0.0), ("32,16", "relu", 0.0), ([8], "bogus", 0.0),
                                                       ([8], "relu", 1.0)])
def test_the_model_refuses_what_the_config_check_refuses_with_the_same_line(widths, activation, dropout):
    """model_spec.check_mlp is the one place for the MLP rules: the model built directly (as from a
    model card) refuses the same values with the same one-line message as the config."""
    from astroscale_fl.learning.model_spec import check_mlp
    from astroscale_fl.learning.models import MLP

    with pytest.raises(AstroScaleError) as from_config:
        check_mlp(widths, activation, dropout)
    with pytest.raises(AstroScaleError) as from_model:
        MLP(4, widths, activation, dropout)
    assert str(from_model.value) == str(from_config.value)


def test_the_model_spec_names_exactly_the_activations_the_model_builds():
    """The torch-free spec (what the config accepts) and the torch modules (what MLP builds) agree."""
    from astroscale_fl.learning.model_spec import ACTIVATION_NAMES
    from astroscale_fl.learning.models import ACTIVATIONS

    assert sorted(ACTIVATION_NAMES) == sorted(ACTIVATIONS)


def test_long_error_lines_are_cut_in_the_middle():
    line = one_line("start " + "x" * 100_000 + " advice at the end")
    assert len(line) == MAX_LINE_CHARS and line.startswith("start ") and line.endswith("advice at the end")


@pytest.mark.parametrize("overrides", [["federation.metrics_port=99999"],
                                       ["task=catalog", "task.path={csv}", "task.features=[a,b]", "task.target=y"]])
def test_train_cli_exits_2_with_one_line_and_no_run_directory(tmp_path, overrides):
    csv = _catalog(tmp_path / "garbage.csv", _set("a", slice(0, 400), "??"))
    run = tmp_path / "run"
    out = subprocess.run([*CLI, "train", *(o.format(csv=csv) for o in overrides), f"hydra.run.dir={run}", "output.publish=false"],
                         capture_output=True, text=True, cwd=ROOT, env=cli_env(), timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.startswith("error: ") and out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert len(out.stderr) <= MAX_LINE_CHARS + 10 and not run.exists()


def test_private_keys_are_0600_from_the_first_byte(tmp_path, monkeypatch):
    from astroscale_fl import atomic
    from astroscale_fl.deploy import certs

    modes = []
    real_write = Path.write_bytes

    def spy(self, data):
        modes.append(stat.S_IMODE(os.stat(self).st_mode))  # the temporary file, before any byte
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", spy)
    atomic.write_bytes(tmp_path / "key", b"secret", mode=0o600)
    atomic.write_bytes(tmp_path / "public", b"text")
    assert modes[0] == 0o600 and modes[1] == 0o666 & ~atomic._umask()
    private, public = certs.make_node_key(tmp_path, "node-0")
    assert modes[2] == 0o600 and stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o666 & ~atomic._umask()
    paths = certs.make_ca_and_server(tmp_path / "ca")
    assert all(stat.S_IMODE(os.stat(paths[k]).st_mode) == 0o600 for k in ("ca_key", "server_key"))


@pytest.mark.parametrize("layout, out_dir, words", [
    ({"afile": "x"}, "afile", ["afile is a file, not a directory"]),
    ({"afile": "x"}, "afile/sub", ["afile is a file, not a directory"]),
    ({"nodes/node-1": "x"}, "nodes", ["cannot write", "nodes/node-1"]),
])
def test_node_data_into_a_file_is_one_line(tmp_path, monkeypatch, capsys, layout, out_dir, words):
    from astroscale_fl.deploy.cli import node_data_main

    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        node_data_main([out_dir, "--nodes", "2", "model.widths=[8]"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and all(w in err for w in words), err
