"""Issue 23: `astroscale-fl train` refuses these with one line before Hydra creates the run
directory (the entry point in-process: every case stops before Hydra starts)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astroscale_fl.errors import MAX_LINE_CHARS, USER_ERROR_EXIT
from astroscale_fl.train import main


def _stars(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=400), "b": rng.normal(size=400)})
    frame["y"] = frame.a - frame.b
    frame.to_csv(tmp / "stars.csv", index=False)
    return tmp / "stars.csv"


def _duplicate_csv(tmp: Path) -> Path:
    (tmp / "dup.csv").write_text("a,b,b,y\n" + "".join(f"{i},{i % 7},{i % 5},{i}\n" for i in range(300)))
    return tmp / "dup.csv"


def _duplicate_parquet(tmp: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    column = pa.array(np.arange(300, dtype=np.float64))
    pq.write_table(pa.Table.from_arrays([column, column, column], names=["a", "b", "a"]).append_column("y", column), tmp / "dup.parquet")
    return tmp / "dup.parquet"


CASES = {
    # name: (overrides ({tmp}: the case's folder), words of the error)
    "statistics_epsilon_zero": (["privacy.statistics_epsilon=0"], ["privacy.statistics_epsilon", "positive", "0.0"]),
    "statistics_epsilon_negative": (["privacy.statistics_epsilon=-1"], ["privacy.statistics_epsilon", "positive", "-1.0"]),
    "statistics_epsilon_unsupported_task": (["privacy=dp_sgd", "privacy.statistics_epsilon=1"],
                                            ["privacy.statistics_epsilon", "no finite physical range", "preprocess.reference"]),
    "run_dir_under_a_file": (["hydra.run.dir={tmp}/stars.csv/run"], ["hydra.run.dir", "stars.csv is not a directory"]),
    "sweep_dir_under_a_file": (["-m", "hydra.sweep.dir={tmp}/stars.csv/sweep"], ["hydra.sweep.dir", "stars.csv is not a directory"]),
    "vectorize_two": (["federation.vectorize=2"], ["federation.vectorize", "true or false", "2"]),
    "vectorize_word": (["federation.vectorize=yes"], ["federation.vectorize", "true or false", "'yes'"]),
    "duplicated_feature": (["task.features=[a,b,a]"], ["task.features", "['a']", "more than once"]),
    "csv_with_duplicated_column": (["task.path={dup_csv}"], ["dup.csv", "['b']", "more than once"]),
    "parquet_with_duplicated_column": (["task.path={dup_parquet}"], ["dup.parquet", "['a']", "more than once"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_refuses_before_the_run_directory_exists(tmp_path, capsys, monkeypatch, case):
    overrides, words = CASES[case]
    monkeypatch.chdir(tmp_path)
    values = {"tmp": str(tmp_path), "dup_csv": str(_duplicate_csv(tmp_path)), "dup_parquet": str(_duplicate_parquet(tmp_path))}
    base = ["task=catalog", f"task.path={_stars(tmp_path)}", "task.target=y", "task.features=[a,b]", f"hydra.run.dir={tmp_path / 'run'}"]
    argv = base + [o.format(**values) for o in overrides]
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == USER_ERROR_EXIT and len(err.splitlines()) == 1 and len(err) <= MAX_LINE_CHARS + 7, err
    assert all(w in err for w in words), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no run (or sweep, or outputs/) directory


def test_an_unwritable_run_dir_is_one_line(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    (tmp_path / "locked").mkdir(mode=0o500)
    with pytest.raises(SystemExit):
        main(["task=catalog", f"task.path={_stars(tmp_path)}", "task.target=y", "task.features=[a,b]",
              f"hydra.run.dir={tmp_path / 'locked' / 'run'}"])
    err = capsys.readouterr().err
    assert "hydra.run.dir" in err and "not writable" in err
