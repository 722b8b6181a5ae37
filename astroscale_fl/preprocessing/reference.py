"""Preprocessing fitted on public data instead of the nodes' statistics round (``preprocess.reference``).

By default the server fits the preprocessing pipeline from a statistics round: every node sends
exact aggregates of its training rows (count, sum, sum of squares, min, max and a quantile summary
per column). DP-SGD does not cover those. With ``preprocess.reference`` the server fits the
pipeline on a public table instead (or loads one already fitted), no statistics round runs, and
a node's rows leave it only through its (DP) model updates.

A reference is either

- a ``.csv`` / ``.parquet`` table with the task's raw input columns and its target (for example a
  public catalogue, or simulated stars: ``python -m astroscale_fl.simulator --out public.parquet``),
  fitted with the run's ``preprocess`` settings; or
- a ``preprocessing.json`` (e.g. from an exported ``model/``), used as it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from astroscale_fl.data.tables import read_table
from astroscale_fl.errors import ConfigError, DataError, one_line
from astroscale_fl.ingest.cache import file_sha256
from astroscale_fl.preprocessing import Pipeline

KEY = "preprocess.reference"


def fit_reference(task, cfg, path: str | Path) -> tuple[Pipeline, dict[str, Any]]:
    """The run's pipeline from a public reference, and a description of it for the model card."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{KEY}: {path} not found; expected a .csv/.parquet table with the task's inputs "
                          f"and target, or a preprocessing.json")
    expected = Pipeline.from_config(task, cfg)
    if path.suffix.lower() == ".json":
        pipeline = load_fitted(path, KEY, expected, task.name)
        rows = None
    else:
        frame = read_table(path, role=KEY)
        needed = expected.inputs + [expected.target.target]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ConfigError(f"{KEY}: {path} lacks column(s) {missing}; task {task.name} needs {needed}")
        if not len(frame):
            raise DataError(f"{KEY}: {path} has no rows")
        pipeline = expected.fit(frame)
        rows = len(frame)
    return pipeline, {"source": "public reference", "path": str(path), "sha256": file_sha256(path), "rows": rows}


def load_fitted(path: Path, role: str, expected: Pipeline, task_name: str) -> Pipeline:
    """A fitted ``preprocessing.json`` for the task's inputs and target (``role`` names it in errors)."""
    try:
        pipeline = Pipeline.from_state(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise DataError(f"{role}: {path} is not a preprocessing.json ({type(exc).__name__}: {one_line(str(exc), 200)})") from None
    except OSError as exc:
        raise DataError(f"{role}: cannot read {path} ({exc.strerror})") from None
    if pipeline.inputs != expected.inputs or pipeline.target.target != expected.target.target:
        raise ConfigError(f"{role}: {path} was fitted for inputs {pipeline.inputs} -> {pipeline.target.target}; "
                          f"task {task_name} needs {expected.inputs} -> {expected.target.target}")
    return pipeline


#: How the card describes the default statistics round.
NODE_STATISTICS = {
    "source": "nodes",
    "covered_by_dp": False,
    "released": "per node and column: count, missing, mean, sum of squared deviations, min, max, quantile sketch (counts in fixed float32-bit bins)",
}
