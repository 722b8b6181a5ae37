"""``predict``'s table mode refuses, before reading or writing anything, an ``--output`` that would
overwrite ``--input`` (however spelled) or cannot be written; other CLI mistakes are one line too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from astroscale_fl.export import predict as predict_module
from tests.test_model_integrity import assert_one_line_exit_2, predict_module_inputs


@pytest.fixture(scope="module")
def exported(exported_model, absmag_frame):
    path = exported_model[0]
    return path, absmag_frame.iloc[3000:3020].reset_index(drop=True)


def same_string(tmp):
    return tmp / "in.csv", tmp / "in.csv"


def relative(tmp):  # the test runs in tmp
    return tmp / "in.csv", Path("sub/../in.csv")


def symlinked(tmp):
    (tmp / "link.csv").symlink_to(tmp / "in.csv")
    return tmp / "in.csv", tmp / "link.csv"


def hardlinked(tmp):
    os.link(tmp / "in.csv", tmp / "hard.csv")
    return tmp / "in.csv", tmp / "hard.csv"


def quarantine_is_input(tmp):
    (tmp / "in.csv").rename(tmp / "out.csv.quarantine.csv")
    return tmp / "out.csv.quarantine.csv", tmp / "out.csv"


def bad_suffix(tmp):
    return tmp / "in.csv", tmp / "out.txt"


def missing_directory(tmp):
    return tmp / "in.csv", tmp / "nowhere" / "out.csv"


BATCH_PATHS = {  # id: (paths from tmp dir, fragment)
    "output is input": (same_string, "would overwrite --input"),
    "output is input, relative": (relative, "would overwrite --input"),
    "output is a symlink to input": (symlinked, "would overwrite --input"),
    "output is a hard link to input": (hardlinked, "would overwrite --input"),
    "quarantine is input": (quarantine_is_input, "would overwrite --input"),
    "output suffix": (bad_suffix, ".csv or .parquet"),
    "output directory missing": (missing_directory, "does not exist"),
}


@pytest.mark.parametrize("case", list(BATCH_PATHS), ids=list(BATCH_PATHS))
def test_predict_batch_paths_refused_before_anything_is_written(case, exported, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    exported[1][predict_module_inputs(exported[0])].to_csv(tmp_path / "in.csv", index=False)
    make, fragment = BATCH_PATHS[case]
    src, dst = make(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    err = assert_one_line_exit_2(lambda: predict_module.main(["--model", str(exported[0]), "--input", str(src), "--output", str(dst)]), capsys)
    assert fragment in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # input intact, nothing new


@pytest.mark.parametrize("args, fragment", [
    (["--device", "quantum", "--list-inputs"], "--device quantum"),
    (["--input", "nowhere.csv", "--output", "out.csv"], "not found"),
], ids=["unknown device", "input missing"])
def test_predict_cli_errors(exported, args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = assert_one_line_exit_2(lambda: predict_module.main(["--model", str(exported[0]), *args]), capsys)
    assert fragment in err
    assert not (tmp_path / "out.csv").exists()
