"""Issue 23: the README's preprocess example runs on the simulator's own output, exactly as written, and a
missing-column error lists the columns there are with the count of those cut."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pandas as pd
import pytest

from astroscale_fl.preprocessing.cli import main as preprocess_main
from tests.conftest import ROOT


def _readme_commands(prefix: str) -> list[str]:
    """The README's indented command lines starting with ``prefix`` (continuation lines joined)."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.startswith("    " + prefix)]


@pytest.mark.slow
def test_readme_preprocess_example_runs_on_the_simulators_output(tmp_path, monkeypatch, capsys):
    from astroscale_fl.simulator.__main__ import main as simulator_main

    simulate = next(c for c in _readme_commands("python -m astroscale_fl.simulator") if "--per-survey" in c and "stars/" in c)
    preprocess = next(c for c in _readme_commands("astroscale-fl preprocess --input stars/"))
    monkeypatch.chdir(tmp_path)
    args = shlex.split(simulate)[3:]
    args[args.index("--n") + 1] = "4000"  # the README's size, smaller: the same columns
    assert simulator_main(args) == 0
    assert preprocess_main(shlex.split(preprocess)[2:]) == 0, capsys.readouterr().err
    features = np.load(tmp_path / "enc" / "features.npy")
    assert features.shape[0] > 3900 and (tmp_path / "enc" / "row_ids.npy").exists()


def test_missing_column_error_counts_the_columns_it_leaves_out(tmp_path, capsys):
    path = tmp_path / "wide.parquet"
    pd.DataFrame({f"c{i:02d}": np.arange(5.0) for i in range(32)}).to_parquet(path)
    with pytest.raises(SystemExit) as raised:
        preprocess_main(["--input", str(path), "--output", str(tmp_path / "enc"), "task=catalog", f"task.path={path}",
                         "task.features=[c00,teff]", "task.target=c01"])
    code = raised.value.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert re.search(r"missing column\(s\) \['teff'\]; columns are \['c00', .*'c19', \.\.\. \(12 more\)\]", err), err
