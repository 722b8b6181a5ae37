"""CSV / Parquet tables chosen by file extension (or a directory of Parquet files), with one-line
errors naming the file. Tables larger than memory are streamed instead: see
:mod:`astroscale_fl.preprocessing.stream`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from astroscale_fl.atomic import atomic_path
from astroscale_fl.errors import DataError
from astroscale_fl.preprocessing.stream import columns_of, dataset

SUFFIXES = (".csv", ".parquet")


def read_table(path: str | Path, role: str = "input file") -> pd.DataFrame:
    """Read a ``.csv`` or ``.parquet`` file, or a directory of ``.parquet`` files (one table);
    ``role`` names it in errors (e.g. ``task.path``). The streaming reader's checks come first
    (:func:`~astroscale_fl.preprocessing.stream.columns_of`: empty, binary or corrupt files, a
    column named twice), so ``train`` and ``preprocess`` refuse the same files alike."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{role} not found: {path}")
    if path.is_file() and path.suffix.lower() not in SUFFIXES:
        raise DataError(f"{role} {path}: expected a .csv or .parquet file")
    columns_of(path, role)
    try:
        if path.is_dir():
            return dataset(path, role).to_table().to_pandas()
        return pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except DataError:
        raise
    except Exception as exc:  # pyarrow / pandas parse errors (a ragged CSV row, a file cut mid-row group)
        raise DataError(f"{path}: cannot read ({str(exc).splitlines()[0]})") from None


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a table as CSV or Parquet (by extension), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: expected a .csv or .parquet output file")
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False) if suffix == ".parquet" else frame.to_csv(tmp, index=False)
