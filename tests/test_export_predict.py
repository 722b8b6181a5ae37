"""Export -> predict round trip, in process and through the predict CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from astroscale_fl.export.model_dir import load_exported
from astroscale_fl.export.predict import Predictor
from astroscale_fl.learning.training import predict
from tests.conftest import ROOT, cli_env


@pytest.fixture(scope="module")
def exported(exported_model, absmag_frame):
    """The session's exported MLP (tests/conftest.py), its in-memory twin, and rows it has not seen."""
    path, model, pipeline = exported_model
    return path, model, pipeline, absmag_frame.iloc[3000:3200].reset_index(drop=True)


def test_model_card_fields(exported):
    path, _, pipeline, _ = exported
    card = json.loads((path / "model_card.json").read_text())
    for key in ("task", "target", "inputs", "metrics", "strategy", "rounds", "num_nodes", "privacy",
                "package_version", "git_commit", "created"):
        assert key in card
    assert [i["name"] for i in card["inputs"]] == pipeline.inputs
    assert all("unit" in i for i in card["inputs"])
    assert card["privacy"] == {"name": "none"} and card["target"] == {"name": "M_Hp", "unit": "mag"}


def test_reloaded_model_reproduces_in_memory_outputs_exactly(exported):
    path, model, pipeline, rows = exported
    expected = pipeline.target.inverse(predict(model, torch.from_numpy(pipeline.transform_features(rows))))
    np.testing.assert_array_equal(Predictor(path).predict_frame(rows), expected)
    reloaded, pipe2, _ = load_exported(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert pipe2.state_dict() == pipeline.state_dict()


def run_predict(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), *map(str, args)],
                          capture_output=True, text=True, env=cli_env(), timeout=120)


def predict_main(capsys, *args) -> tuple[int, str, str]:
    """The predict command's entry in this process: (exit code, stdout, stderr). The real process runs in
    the single-star and no-model tests; a fresh interpreter per case cost seconds each."""
    from astroscale_fl.export.predict import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_cli_single_star_matches_in_memory(exported, capsys):
    path, _, _, rows = exported
    predictor = Predictor(path)
    values = [rows[n].iloc[0] for n in predictor.inputs]
    out = run_predict("--model", path, *[repr(float(v)) for v in values])
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert list(result) == ["predicted_M_Hp"]
    assert result["predicted_M_Hp"] == predictor.predict_one([float(v) for v in values])
    code, listed, _ = predict_main(capsys, "--model", path, "--list-inputs")
    assert code == 0 and [line.split("\t")[0] for line in listed.strip().splitlines()] == predictor.inputs


def test_predict_cli_batch_keeps_rows_and_quarantines_bad_ones(exported, tmp_path, capsys):
    path, _, _, rows = exported
    predictor = Predictor(path)
    table = rows[predictor.inputs].copy()
    table.insert(0, "name", [f"star{i}" for i in range(len(table))])  # extra columns are kept, ignored
    table.loc[5, "B-V"] = np.nan
    table.loc[7, "Hpmag"] = 99.0
    src = tmp_path / "in.csv"
    table.to_csv(src, index=False)
    before = src.read_bytes()
    code, _, err = predict_main(capsys, "--model", path, "--input", src, "--output", tmp_path / "out.parquet")
    assert code == 0, err
    assert src.read_bytes() == before  # input untouched
    result = pd.read_parquet(tmp_path / "out.parquet")
    assert list(result["name"]) == list(table["name"])
    good = ~result.index.isin([5, 7])
    np.testing.assert_array_equal(result.loc[good, "predicted_M_Hp"].to_numpy(), predictor.predict_frame(table.loc[good]))
    assert result.loc[[5, 7], "predicted_M_Hp"].isna().all()
    quarantine = pd.read_csv(f"{tmp_path / 'out.parquet'}.quarantine.csv")
    assert list(quarantine["row"]) == [6, 8]
    assert "B-V" in quarantine["reason"][0] and "Hpmag" in quarantine["reason"][1]


@pytest.mark.parametrize("args, needle", [
    (["1", "2"], "expected 9 values"),
    (["0.1", "0.2", "1", "1", "8", "0.001", "0.01", "0.5", "abc"], "input V-I: expected a number"),
    (["0.1", "0.2", "1", "1", "8", "0.001", "0.01", "0.5", "inf"], "input V-I: expected a finite number"),
    (["0.1", "0.2", "1", "1", "80", "0.001", "0.01", "0.5", "0.6"], "input Hpmag"),
])
def test_predict_cli_bad_values(exported, args, needle, capsys):
    code, _, err = predict_main(capsys, "--model", exported[0], *args)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and err.startswith("error: "), err


@pytest.mark.parametrize("spelled, value", [("-1e-3", -0.001), ("-1E-3", -0.001), ("-.001", -0.001), ("-1.0e+0", -1.0)])
def test_predict_cli_takes_negative_numbers_in_any_spelling_as_values(exported, capsys, spelled, value):
    values = ["0.1", spelled, "-3e1", "1", "8", "0.001", "0.01", "0.5", "0.6"]  # DErad and pmDE negative
    code, out, err = predict_main(capsys, "--model", exported[0], *values)
    assert code == 0, err
    expected = Predictor(exported[0]).predict_one([0.1, value, -30.0, 1, 8, 0.001, 0.01, 0.5, 0.6])
    assert json.loads(out) == {"predicted_M_Hp": expected}


@pytest.mark.parametrize("spelled", ["-inf", "-Infinity", "-nan"])
def test_predict_cli_negative_non_finite_value_is_named(exported, capsys, spelled):
    code, _, err = predict_main(capsys, "--model", exported[0], "0.1", "0.2", "1", "1", "8", "0.001", "0.01", "0.5", spelled)
    assert code == 2 and "input V-I: expected a finite number" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("where", ["directory", "sys", "missing_parent"])
def test_predict_cli_unwritable_output_is_one_line(exported, tmp_path, capsys, where):
    src = tmp_path / "in.csv"
    exported[3].head(5).to_csv(src, index=False)
    output = {"directory": tmp_path / "out.csv", "sys": Path("/sys/kernel/astroscale-out.csv"),
              "missing_parent": tmp_path / "no" / "out.csv"}[where]
    if where == "directory":
        output.mkdir()
    code, out, err = predict_main(capsys, "--model", exported[0], "--input", src, "--output", output)
    assert code == 2 and f"--output {output}" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert out == "" and not Path(f"{output}.quarantine.csv").exists()


def test_predict_cli_missing_batch_columns(exported, tmp_path, capsys):
    path = exported[0]
    src = tmp_path / "in.csv"
    pd.DataFrame({"Hpmag": [8.0]}).to_csv(src, index=False)
    code, _, err = predict_main(capsys, "--model", path, "--input", src, "--output", tmp_path / "out.csv")
    assert code == 2 and "missing input column(s)" in err and "RArad" in err
    assert not (tmp_path / "out.csv").exists()


def test_predict_cli_without_model_says_how_to_make_one(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "predict.py"), "1"], capture_output=True, text=True,
                         cwd=tmp_path, env=cli_env(), timeout=120)
    assert out.returncode == 2 and "astroscale-fl train" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr and out.stdout == ""  # the real process's exit path
