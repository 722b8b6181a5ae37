"""Issue 23: `astroscale-fl preprocess` on bad input: one line naming the file / column / key,
exit 2, no traceback, nothing written (not even an empty --output folder), inputs untouched.

Each case builds its inputs in ``tmp_path`` and runs the command's entry point in-process (the
same function the console script calls); a few run the real console script.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astroscale_fl.errors import MAX_LINE_CHARS, USER_ERROR_EXIT
from astroscale_fl.preprocessing.cli import main
from tests.conftest import CLI, cli_env

ROWS = 500
FEATURES = "task.features=[ra,teff]"


def _frame(rows: int = ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"ra": rng.uniform(0, 360, rows), "teff": rng.uniform(4000, 7000, rows)})
    frame["z"] = frame.teff / 1e6 + rng.normal(0, 1e-5, rows)
    return frame


def _parquet(tmp: Path) -> Path:
    _frame().to_parquet(tmp / "stars.parquet")
    return tmp / "stars.parquet"


def _csv(tmp: Path, text: str | bytes | None = None) -> Path:
    path = tmp / "stars.csv"
    if text is None:
        _frame().to_csv(path, index=False)
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _truncated(tmp: Path) -> Path:
    path = _parquet(tmp)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _garbage_parquet(tmp: Path) -> Path:
    (tmp / "stars.parquet").write_bytes(os.urandom(4096))
    return tmp / "stars.parquet"


def _empty_parquet(tmp: Path) -> Path:
    (tmp / "stars.parquet").write_bytes(b"")
    return tmp / "stars.parquet"


def _mixed_directory(tmp: Path) -> Path:
    (tmp / "cat").mkdir()
    _frame().to_parquet(tmp / "cat" / "a.parquet")
    (tmp / "cat" / "b.parquet").write_bytes(b"PAR1 not really")
    return tmp / "cat"


def _duplicate_parquet(tmp: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = _frame()
    table = pa.Table.from_arrays([pa.array(frame.ra), pa.array(frame.teff), pa.array(frame.teff), pa.array(frame.z)],
                                 names=["ra", "teff", "teff", "z"])
    pq.write_table(table, tmp / "stars.parquet")
    return tmp / "stars.parquet"


def _text_feature(tmp: Path) -> Path:
    frame = _frame().astype(object)
    frame.loc[7, "teff"] = "cold"
    frame.to_csv(tmp / "stars.csv", index=False)
    return tmp / "stars.csv"


def _empty_target(tmp: Path) -> Path:
    frame = _frame()
    frame["z"] = np.nan
    frame.to_csv(tmp / "stars.csv", index=False)
    return tmp / "stars.csv"


def _ragged(tmp: Path) -> Path:
    lines = _csv(tmp).read_text().splitlines()
    lines[5] += ",99"
    (tmp / "stars.csv").write_text("\n".join(lines) + "\n")
    return tmp / "stars.csv"


def _fitted_json(tmp: Path, features: str = "[ra,logg]") -> Path:
    """A preprocessing.json fitted for other inputs (logg, which the table lacks)."""
    frame = _frame()
    frame["logg"] = 4.0
    frame.to_parquet(tmp / "other.parquet")
    assert main(["--input", str(tmp / "other.parquet"), "--output", str(tmp / "fitted"), "--no-progress",
                 f"task.features={features}", "task.target=z"]) == 0
    return tmp / "fitted" / "preprocessing.json"


def _forest_json(tmp: Path, edit: Callable[[dict], None] | None = None, text: Callable[[str], str] | None = None) -> Path:
    """A preprocessing.json with an isolation forest fitted on a reference table, edited."""
    _frame().to_parquet(tmp / "public.parquet")
    assert main(["--input", str(tmp / "public.parquet"), "--output", str(tmp / "ref"), "--no-progress", FEATURES, "task.target=z",
                 "preprocess.outliers=isolation_forest", "preprocess.outlier_action=flag", "preprocess.outlier_threshold=0.6", f"preprocess.reference={tmp / 'public.parquet'}"]) == 0
    path = tmp / "ref" / "preprocessing.json"
    if edit:
        state = json.loads(path.read_text())
        edit(next(s for s in state["steps"] if "forest" in json.dumps(s))["state"])
        path.write_text(json.dumps(state))
    if text:
        path.write_text(text(path.read_text()))
    return path


def _nan_forest(state: dict) -> None:
    _forest_of(state)["trees"][0]["threshold"][0] = float("nan")


def _cyclic_forest(state: dict) -> None:
    tree = _forest_of(state)["trees"][0]
    inner = next(i for i, v in enumerate(tree["left"]) if v > 0 and i > 0)
    tree["left"][inner] = 0  # a child that points back at the root


def _deep_forest(state: dict) -> None:
    n = 101  # a chain of 50 inner nodes: 50 levels deep
    left = [i + 2 if i % 2 == 0 and i < 100 else -1 for i in range(n)]
    right = [i + 1 if i % 2 == 0 and i < 100 else -1 for i in range(n)]
    _forest_of(state)["trees"][0] = {"left": left, "right": right, "feature": [0] * n, "threshold": [0.0] * n, "leaf_depth": [1.0] * n}


def _forest_of(state) -> dict:
    """The forest ({trees, denominator}) inside a preprocessing.json state, or None."""
    if isinstance(state, dict) and "trees" in state:
        return state
    for value in state.values() if isinstance(state, dict) else state if isinstance(state, list) else ():
        found = _forest_of(value)
        if found is not None:
            return found
    return None  # type: ignore[return-value]


# name: (make the input (returns --input), extra argv / overrides (may name {tmp}), words of the error)
CASES: dict[str, tuple[Callable[[Path], Path], list[str], list[str]]] = {
    "truncated_parquet": (_truncated, [], ["stars.parquet", "cannot read"]),
    "corrupt_parquet": (_garbage_parquet, [], ["stars.parquet", "cannot read"]),
    "zero_byte_parquet": (_empty_parquet, [], ["stars.parquet", "empty file"]),
    "mixed_directory": (_mixed_directory, [], ["b.parquet", "cannot read"]),
    "zero_byte_csv": (lambda t: _csv(t, ""), [], ["stars.csv", "empty file"]),
    "binary_csv": (lambda t: _csv(t, np.random.default_rng(1).bytes(3000)), [], ["stars.csv", "not a UTF-8 text"]),
    "text_feature": (_text_feature, [], ["column 'teff'", "not a number", "'cold'"]),
    "header_only_csv": (lambda t: _csv(t, "ra,teff,z\n"), [], ["stars.csv", "no data rows"]),
    "all_empty_target": (_empty_target, [], ["task.target 'z'", "every value is empty"]),
    "duplicate_columns_parquet": (_duplicate_parquet, [], ["stars.parquet", "'teff'", "more than once"]),
    "duplicate_columns_csv": (lambda t: _csv(t, "ra,teff,teff,z\n1,5000,5001,0.1\n"), [], ["stars.csv", "'teff'", "more than once"]),
    "ragged_csv": (_ragged, [], ["stars.csv", "Expected 3 fields in line 6, saw 4"]),
    "duplicate_feature": (_parquet, ["task.features=[ra,teff,ra]"], ["task.features", "'ra'", "more than once"]),
    "chunk_rows_huge": (_parquet, ["preprocess.chunk_rows=1000000000000"], ["preprocess.chunk_rows", "1000000000000"]),
    "chunk_rows_zero": (_parquet, ["preprocess.chunk_rows=0"], ["preprocess.chunk_rows"]),
    "output_is_input_file": (_parquet, ["--output", "{tmp}/stars.parquet"], ["--output", "stars.parquet", "input"]),
    "output_is_input_directory": (_mixed_directory, ["--output", "{tmp}/cat"], ["--output", "inside the input"]),
    "output_inside_input_directory": (_mixed_directory, ["--output", "{tmp}/cat/enc"], ["--output", "inside the input"]),
    "output_under_a_file": (_parquet, ["--output", "{tmp}/notes.txt/enc"], ["--output", "notes.txt", "not a directory"]),
    "output_is_a_file": (_parquet, ["--output", "{tmp}/notes.txt"], ["--output", "notes.txt", "not a directory"]),
    "output_name_too_long": (_parquet, ["--output", "{tmp}/" + "x" * 300], ["--output", "cannot write", "too long"]),
    # a valid folder name whose temporary sibling's name is too long: the write itself fails
    "output_temp_name_too_long": (_parquet, ["--output", "{tmp}/" + "x" * 250], ["--output", "cannot write", "too long"]),
    "preprocessing_lacks_a_feature": (_parquet, ["--preprocessing", "{fitted}"], ["--preprocessing", "fitted for inputs", "'logg'"]),
    "reference_missing": (_parquet, ["preprocess.reference={tmp}/nope.parquet"], ["preprocess.reference", "nope.parquet", "not found"]),
    "reference_without_target": (_parquet, ["preprocess.reference={tmp}/notarget.csv"], ["preprocess.reference", "notarget.csv", "'z'"]),
    "reference_truncated_json": (_parquet, ["preprocess.reference={forest_truncated}"], ["preprocess.reference", "not a preprocessing.json"]),
    "reference_nan_forest": (_parquet, ["preprocess.reference={forest_nan}"], ["threshold/leaf_depth", "finite numbers"]),
    "reference_cyclic_forest": (_parquet, ["preprocess.reference={forest_cyclic}"], ["left/right", "after their parent"]),
    "reference_deep_forest": (_parquet, ["preprocess.reference={forest_deep}"], ["at most 12 levels deep"]),
    "reference_and_preprocessing": (_parquet, ["--preprocessing", "{fitted}", "preprocess.reference={tmp}/public.csv"],
                                    ["--preprocessing", "preprocess.reference", "one of them"]),
    "filter_code": (_parquet, ["task.filter=\"@pd.io.common.os.system('touch pwned') == 0\""], ["task.filter", "at '@'"]),
}

NEEDS = {  # placeholders some cases use, and how to make them
    "fitted": lambda t: _fitted_json(t),
    "forest_truncated": lambda t: _forest_json(t, text=lambda s: s[: len(s) // 2]),
    "forest_nan": lambda t: _forest_json(t, _nan_forest),
    "forest_cyclic": lambda t: _forest_json(t, _cyclic_forest),
    "forest_deep": lambda t: _forest_json(t, _deep_forest),
}


def _digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_preprocess_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, case):
    make, extra, words = CASES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    source = make(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("a file")
    _frame().drop(columns="z").to_csv(tmp_path / "in" / "notarget.csv", index=False)
    _frame().to_csv(tmp_path / "in" / "public.csv", index=False)
    values = {"tmp": str(tmp_path / "in")}
    for name, build in NEEDS.items():
        if any("{" + name + "}" in e for e in extra):
            (tmp_path / name).mkdir()
            values[name] = str(build(tmp_path / name))
    extra = [e.format(**values) for e in extra]
    argv = ["--input", str(source), "--no-progress", *([] if "--output" in extra else ["--output", str(tmp_path / "enc")])]
    argv += extra + ([] if any(e.startswith("task.features=") for e in extra) else [FEATURES]) + ["task.target=z"]
    before = {p: _digest(p) for p in (tmp_path / "in").iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == USER_ERROR_EXIT and len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert all(w in err for w in words) and len(err) <= MAX_LINE_CHARS + 7, err
    assert not (tmp_path / "enc").exists() and not (tmp_path / "pwned").exists() and not list(tmp_path.glob(".*"))
    assert {p: _digest(p) for p in (tmp_path / "in").iterdir()} == before  # inputs untouched, nothing added beside them


def test_an_unwritable_output_is_one_line(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    source = _parquet(tmp_path)
    (tmp_path / "locked").mkdir(mode=0o500)
    result = subprocess.run([*CLI, "preprocess", "--input", str(source), "--output", str(tmp_path / "locked" / "enc"), FEATURES,
                             "task.target=z"], env=cli_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == USER_ERROR_EXIT and result.stderr.startswith("error: --output"), result.stderr
    assert "not writable" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_preprocess_honours_the_reference_and_fits_an_isolation_forest_on_it(tmp_path):
    """preprocess.reference: the pipeline (here an isolation forest that flags outliers) is fitted
    on the public table, not on --input; its preprocessing.json is applied to --input as it is."""
    public = tmp_path / "public.parquet"
    _frame(2000).to_parquet(public)
    private = _frame(300)
    private.loc[:9, "teff"] = 30_000.0  # a valid temperature, far outside the public table
    private.to_parquet(tmp_path / "private.parquet")
    args = ["--input", str(tmp_path / "private.parquet"), "--no-progress", FEATURES, "task.target=z",
            "preprocess.outliers=isolation_forest", "preprocess.outlier_action=flag", "preprocess.outlier_threshold=0.6", f"preprocess.reference={public}"]
    assert main([*args, "--output", str(tmp_path / "enc")]) == 0
    state = json.loads((tmp_path / "enc" / "preprocessing.json").read_text())
    assert _forest_of(state) is not None
    scaled = np.load(tmp_path / "enc" / "features.npy")
    assert len(scaled) == 300 and scaled[:10, 2].mean() >= 0.5 and scaled[10:, 2].mean() < 0.1  # flagged, kept
    # the scaling comes from the reference: the public table's rows encode to mean ~0 there, not here
    (tmp_path / "ref").mkdir()
    assert main(["--input", str(public), "--output", str(tmp_path / "ref"), "--no-progress", "--preprocessing",
                 str(tmp_path / "enc" / "preprocessing.json"), FEATURES, "task.target=z"]) == 0
    public_scaled = np.load(tmp_path / "ref" / "features.npy")
    assert np.allclose(public_scaled[:, :2].mean(axis=0), 0, atol=0.05)
    assert not np.allclose(scaled[:, :2].mean(axis=0), 0, atol=0.05)
    # the reference's fitted preprocessing.json, given as the reference, is used as it is
    assert main([*args[:-1], f"preprocess.reference={tmp_path / 'enc' / 'preprocessing.json'}", "--output", str(tmp_path / "again")]) == 0
    assert np.array_equal(np.load(tmp_path / "again" / "features.npy"), scaled)
