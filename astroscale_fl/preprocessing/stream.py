"""Record batches of a table larger than memory: a Parquet file, a directory of Parquet files
(a pyarrow dataset) or, for small tables, a CSV file.

Every pass over a node's data (statistics, validation, transform) reads ``chunk_rows`` rows at
a time and only the columns it needs, so memory does not grow with the table. Each batch carries
``__row__``: the row's position in the table (its row id unless the task names an id column).
"""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from astroscale_fl.errors import DataError, short_list

ROW = "__row__"
BATCH_BYTES = 64 * 2**20  # default chunk: ~64 MB of float64 columns
SNIFF_BYTES = 1 << 16  # bytes of a CSV checked for being text


def default_chunk_rows(num_columns: int) -> int:
    """Rows per batch so that ``num_columns`` float64 columns take about 64 MB."""
    return max(1024, BATCH_BYTES // (8 * max(num_columns, 1)))


def dataset(path: Path, role: str):
    """A pyarrow dataset over one Parquet file or every ``.parquet`` file under a directory, each
    file checked first (:func:`check_parquet`: a bad file is named, never a pyarrow traceback)."""
    import pyarrow.dataset as ds

    if not path.exists():
        raise DataError(f"{role} not found: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise DataError(f"{role} {path}: a directory with no .parquet files")
    elif path.suffix.lower() != ".parquet":
        raise DataError(f"{role} {path}: expected a .parquet file, a directory of them, or a .csv file")
    else:
        files = [path]
    for f in files:
        st = f.stat()
        check_parquet(str(f), st.st_size, st.st_mtime_ns, role)
    try:
        return ds.dataset([str(p) for p in files] if path.is_dir() else str(path), format="parquet")
    except Exception as exc:  # schemas that do not unify
        raise DataError(f"{role} {path}: cannot read ({str(exc).splitlines()[0]})") from None


@functools.lru_cache(maxsize=4096)
def check_parquet(path: str, size: int, mtime_ns: int, role: str) -> None:
    """A Parquet file's footer can be read and names each column once (checked once per version
    of the file: ``size`` and ``mtime_ns`` are the cache key)."""
    import pyarrow.parquet as pq

    if size == 0:
        raise DataError(f"{role} {path}: empty file (0 bytes); expected a Parquet file")
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # not Parquet, cut short, corrupt footer
        raise DataError(f"{role} {path}: cannot read (not a Parquet file, or cut short: {str(exc).splitlines()[0][:160]})") from None
    check_unique_columns(names, f"{role} {path}")


def check_unique_columns(names: list[str], where: str) -> None:
    """A table naming a column twice is refused (readers would silently keep one of them)."""
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{where}: column(s) {short_list(repeated)} appear more than once in the header; rename or drop the copies")


def csv_header(path: Path, role: str) -> list[str]:
    """The column names of a CSV file, after checks every reader shares: not empty, UTF-8 text
    (not a binary file), a header naming each column once."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise DataError(f"{role} {path}: cannot read ({exc.strerror})") from None
    if not head:
        raise DataError(f"{role} {path}: empty file (0 bytes); expected a CSV with a header line")
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        raise DataError(f"{role} {path}: not a UTF-8 text CSV (byte {exc.start + 1} is {head[exc.start:exc.start + 1]!r}; a binary file?)") from None
    if "\0" in text:
        raise DataError(f"{role} {path}: not a text CSV (it holds NUL bytes; a binary file?)")
    header = next(csv.reader(io.StringIO(text)), [])
    if not any(name.strip() for name in header):
        raise DataError(f"{role} {path}: no header line (the first line names no column)")
    check_unique_columns(header, f"{role} {path}")
    return header


def columns_of(path: str | Path, role: str = "input") -> list[str]:
    """Column names of a table (without reading its rows), after the checks every reader shares."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return csv_header(path, role)
    return list(dataset(path, role).schema.names)


def count_rows(path: str | Path, role: str = "input") -> int:
    """Number of rows (from Parquet metadata; a CSV is counted by reading it)."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        csv_header(path, role)
        try:
            return sum(len(c) for c in pd.read_csv(path, usecols=[0], chunksize=1 << 20))
        except Exception as exc:  # pandas parse errors
            raise DataError(f"{role} {path}: cannot read ({str(exc).splitlines()[0]})") from None
    try:
        return int(dataset(path, role).count_rows())
    except DataError:
        raise
    except Exception as exc:  # pyarrow: a row group cut short
        raise DataError(f"{role} {path}: cannot read ({str(exc).splitlines()[0]})") from None


def iter_batches(path: str | Path, columns: list[str], chunk_rows: int | None = None, role: str = "input",
                 numeric: list[str] = ()) -> Iterator[dict[str, np.ndarray]]:
    """Batches of ``columns`` (numpy arrays; numbers as float64 unless integer ids) plus ``__row__``;
    ``numeric`` columns must hold numbers (text in one is an error naming column, row and value).
    A ragged CSV (a row with more fields than the header) is refused, as ``train`` refuses it."""
    path = Path(path)
    present = columns_of(path, role)
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"{role} {path}: missing column(s) {short_list(missing)}; columns are {short_list(present, 20)}")
    chunk_rows = int(chunk_rows or default_chunk_rows(len(columns)))
    start = 0
    if path.is_file() and path.suffix.lower() == ".csv":
        reader = pd.read_csv(path, chunksize=chunk_rows)  # every field parsed: extra fields are an error, not dropped
        source = ({c: chunk[c].to_numpy() for c in columns} for chunk in reader if len(chunk))
    else:
        import pyarrow.dataset as ds

        # no read-ahead: pyarrow's defaults (16 batches, 4 files) would hold ~1 GB of 64 MB batches;
        # no pre-buffering of whole column chunks (it pays on object stores, not local disks): peak
        # RSS of a pass over 10M rows 285 MB instead of 528 MB, CPU no higher
        scanner = dataset(path, role).scanner(columns=columns, batch_size=chunk_rows, batch_readahead=1,
                                              fragment_readahead=1, use_threads=True,
                                              fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False))
        source = ({c: _numpy(b.column(c)) for c in columns} for b in scanner.to_batches() if b.num_rows)
    try:
        for batch in source:
            n = len(batch[columns[0]]) if columns else 0
            for name in numeric:
                batch[name] = _numbers(batch[name], name, start, f"{role} {path}")
            batch[ROW] = np.arange(start, start + n, dtype=np.int64)
            start += n
            yield batch
    except DataError:
        raise
    except Exception as exc:  # pyarrow / pandas read errors mid-stream
        raise DataError(f"{role} {path}: cannot read rows after row {start} ({str(exc).splitlines()[0]})") from None


def _numbers(values: np.ndarray, name: str, start: int, where: str) -> np.ndarray:
    """A column's values as float64 (empty cells -> NaN); a text cell is an error naming it."""
    if values.dtype.kind in "fiub":
        return values
    parsed = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    text = np.flatnonzero(np.isnan(parsed) & pd.notna(values))
    if len(text):
        row = int(text[0])
        raise DataError(f"{where}: column {name!r} holds text, not numbers: {len(text)} value(s) in this batch, "
                        f"e.g. data row {start + row + 1} = {str(values[row])[:40]!r}; not a number")
    return parsed


def _numpy(array) -> np.ndarray:
    """An Arrow column as numpy: integers without nulls as they are, other numbers as float64
    (nulls -> NaN), anything else as objects."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_integer(array.type) and not array.null_count:
        return array.to_numpy(zero_copy_only=False)  # integer ids stay integers
    if pa.types.is_floating(array.type) or pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):
        if array.null_count:
            array = pc.cast(array, pa.float64())
            return array.to_numpy(zero_copy_only=False)
        return array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if pa.types.is_timestamp(array.type) or pa.types.is_date(array.type):
        return pc.cast(array, pa.string()).to_numpy(zero_copy_only=False)
    return array.to_numpy(zero_copy_only=False)


def fingerprint(path: str | Path) -> str:
    """Identity of a table's content for caches: names, sizes and mtimes of its files."""
    path = Path(path)
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(path) if path.is_dir() else f.name}\x00{st.st_size}\x00{st.st_mtime_ns}\x00".encode())
    return digest.hexdigest()[:24]
