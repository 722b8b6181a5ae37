"""Vectorised parsing of query results into Arrow tables (CSV with pyarrow, VOTable with astropy).

Parsers never loop over rows in Python on the normal path. Malformed rows are collected,
with the reason, rather than aborting the whole result:

* CSV rows with the wrong number of fields (pyarrow's invalid-row handler);
* CSV values that are not numbers in a numeric column (detected with a vectorised regex on the
  slow path, which only runs when the fast typed parse fails).
"""

from __future__ import annotations

import base64
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from astroscale_fl.errors import DataError

_NUMBER = r"^\s*[+-]?((\d+\.?\d*|\.\d+)([eEdD][+-]?\d+)?|nan|NaN|NAN|inf|Inf|INF|Infinity|-?Infinity)\s*$"
_NULLS = ["", "null", "NULL", "NaN", "nan", "N/A", "NA", "-nan", "None"]


@dataclass
class Parsed:
    """A parsed result: the good rows, the rejected ones (``line``, ``reason``, ``record``) and notes."""

    table: pa.Table
    rejected: pa.Table
    notes: list[str]


def empty_rejected() -> pa.Table:
    """An empty rejected-rows table."""
    return pa.table({"line": pa.array([], pa.int64()), "reason": pa.array([], pa.string()),
                     "record": pa.array([], pa.string())})


def error_document(path: Path) -> str | None:
    """If ``path`` holds a TAP/DALI error VOTable (QUERY_STATUS=ERROR), return its message."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    text = head.decode("utf-8", "replace")
    if "<VOTABLE" not in text and "<votable" not in text:
        return None
    m = re.search(r'<INFO[^>]*name="QUERY_STATUS"[^>]*value="ERROR"[^>]*?(?:/>|>(.*?)</INFO>)', text, re.S | re.I)
    if not m:
        m = re.search(r'<INFO[^>]*value="ERROR"[^>]*name="QUERY_STATUS"[^>]*?(?:/>|>(.*?)</INFO>)', text, re.S | re.I)
    if not m:
        return None
    return " ".join((m.group(1) or "query failed (no message)").split())


def overflow_note(path: Path) -> str | None:
    """A note if a VOTable result says it was truncated at MAXREC (QUERY_STATUS=OVERFLOW)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 8192))
        tail = fh.read().decode("utf-8", "replace")
    if re.search(r'name="QUERY_STATUS"[^>]*value="OVERFLOW"', tail):
        return "result truncated by the service (QUERY_STATUS=OVERFLOW)"
    return None


def read_csv(path: Path, types: dict[str, pa.DataType], *, origin: str, skip_rows: int = 0) -> Parsed:
    """Parse a CSV result whose header names are common-schema columns.

    ``types`` gives the expected Arrow type of each known column. Rows with a wrong field
    count and non-numeric values in numeric columns are rejected with a reason.
    """
    bad_rows: list[tuple[int, str, str]] = []

    def on_invalid(row) -> str:
        bad_rows.append((row.number or -1, f"expected {row.expected_columns} fields, got {row.actual_columns}",
                         row.text))
        return "skip"

    read_opts = pacsv.ReadOptions(skip_rows=skip_rows, block_size=8 << 20, use_threads=True)
    parse_opts = pacsv.ParseOptions(invalid_row_handler=on_invalid, newlines_in_values=False)
    header = _header(path, skip_rows, origin)
    col_types = {c: types[c] for c in header if c in types}
    conv = pacsv.ConvertOptions(column_types=col_types, null_values=_NULLS, strings_can_be_null=True,
                                quoted_strings_can_be_null=False)
    try:
        table = pacsv.read_csv(path, read_options=read_opts, parse_options=parse_opts, convert_options=conv)
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower() and "In CSV column" not in str(exc):
            raise DataError(f"{origin}: not a readable CSV result ({_short(exc)})") from None
        bad_rows.clear()
        return _read_csv_checked(path, col_types, header, on_invalid, bad_rows, read_opts, parse_opts, origin)
    return Parsed(table, _rejected_table(bad_rows), [])


def _header(path: Path, skip_rows: int, origin: str) -> list[str]:
    with open(path, "rb") as fh:
        for _ in range(skip_rows):
            fh.readline()
        line = fh.readline().decode("utf-8", "replace").strip()
    if not line:
        raise DataError(f"{origin}: empty result (no CSV header line)")
    return [c.strip().strip('"') for c in line.split(",")]


def _read_csv_checked(path, col_types, header, on_invalid, bad_rows, read_opts, parse_opts, origin) -> Parsed:
    """Slow path: read everything as text, reject rows whose numbers do not parse, then cast."""
    conv = pacsv.ConvertOptions(column_types={c: pa.string() for c in header}, null_values=_NULLS,
                                strings_can_be_null=True)
    table = pacsv.read_csv(path, read_options=read_opts, parse_options=parse_opts, convert_options=conv)
    n = table.num_rows
    reason = pa.nulls(n, pa.string())
    numeric = [c for c, t in col_types.items() if not pa.types.is_string(t)]
    for name in reversed(numeric):
        col = table.column(name)
        ok = pc.or_(pc.is_null(col), pc.match_substring_regex(col, _NUMBER))
        reason = pc.if_else(pc.fill_null(ok, True), reason,
                            pc.binary_join_element_wise(pa.scalar(f"column '{name}': "),
                                                        pc.fill_null(col, ""), pa.scalar(" is not a number"), ""))
    bad = pc.is_valid(reason)
    good_table = table.filter(pc.invert(bad))
    bad_table = table.filter(bad)
    cols = {}
    for name in good_table.column_names:
        col = good_table.column(name)
        if name in numeric:
            col = pc.cast(pc.replace_substring_regex(col, r"[dD]", "e"), col_types[name])
        cols[name] = col
    records = _records(bad_table)
    line_no = pc.add(pc.indices_nonzero(bad), 2 + read_opts.skip_rows).cast(pa.int64())  # best effort
    value_rejects = pa.table({"line": line_no, "reason": pc.filter(reason, bad), "record": records})
    rejected = pa.concat_tables([_rejected_table(bad_rows), value_rejects])
    return Parsed(pa.table(cols), rejected, [])


def _records(table: pa.Table) -> pa.Array:
    """Join each row's values back into one comma-separated text (vectorised)."""
    if table.num_rows == 0:
        return pa.array([], pa.string())
    parts = [pc.fill_null(pc.cast(table.column(c), pa.string()), "") for c in table.column_names]
    return pc.binary_join_element_wise(*parts, ",").combine_chunks()


def _rejected_table(rows: list[tuple[int, str, str]]) -> pa.Table:
    if not rows:
        return empty_rejected()
    line, reason, record = zip(*rows)
    return pa.table({"line": pa.array(line, pa.int64()), "reason": pa.array(reason, pa.string()),
                     "record": pa.array(record, pa.string())})


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def read_votable(path: Path, *, origin: str) -> Parsed:
    """Parse a VOTable result (TABLEDATA, BINARY or BINARY2) with astropy into Arrow.

    Columns are converted wholesale from astropy's masked arrays; TAP error documents raise
    :class:`DataError` with the service's message.
    """
    from astropy.io.votable import parse
    from astropy.io.votable.exceptions import VOTableSpecWarning, VOWarning

    message = error_document(path)
    if message is not None:
        raise DataError(f"{origin}: the service reported an error: {message}")
    notes = [n for n in [overflow_note(path)] if n]
    fast = read_binary2_fixed(path)
    if fast is not None:
        return Parsed(fast, empty_rejected(), notes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VOWarning)
            warnings.simplefilter("ignore", VOTableSpecWarning)
            doc = parse(str(path), verify="ignore")
            vt = doc.get_first_table()
    except Exception as exc:  # astropy raises many exception types for malformed XML
        raise DataError(f"{origin}: not a readable VOTable ({type(exc).__name__}: {_short(exc)})") from None
    arr = vt.array
    cols = {}
    for fld in vt.fields:
        name = fld.name if fld.name in arr.dtype.names else fld.ID
        data = arr[name]
        values = np.asarray(data.data if hasattr(data, "data") else data)
        mask = np.ma.getmaskarray(data) if np.ma.isMaskedArray(data) else None
        if values.ndim > 1:
            raise DataError(f"{origin}: VOTable column '{fld.name}' is an array (arraysize={fld.arraysize}); "
                            "expected scalar columns")
        if values.dtype.kind == "O":
            values = values.astype(str)
            if mask is not None:
                mask = mask | (values == "")
        if values.dtype.kind in "US":
            values = values.astype("U") if values.dtype.kind == "S" else values
        if values.dtype.byteorder == ">":
            values = values.astype(values.dtype.newbyteorder("="))
        cols[fld.name] = pa.array(values, mask=mask if mask is not None and mask.any() else None)
    return Parsed(pa.table(cols), empty_rejected(), notes)


_BIN2_TYPES = {"unsignedByte": "u1", "short": ">i2", "int": ">i4", "long": ">i8", "float": ">f4",
               "double": ">f8"}
_FIELD = re.compile(r"<FIELD\b([^>]*)>", re.S)
_ATTR = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def read_binary2_fixed(path: Path) -> pa.Table | None:
    """Vectorised decoder for the common TAP case: one BINARY2 table of fixed-width scalar fields.

    BINARY2 rows are a null bitmap followed by big-endian values, so with fixed-width fields the
    whole stream is one NumPy structured array. Returns None (use astropy) for anything else:
    variable-length or array fields, several tables, other serialisations.
    """
    data = path.read_bytes()
    start = data.find(b"<BINARY2>")
    if start < 0 or data.count(b"<TABLE") != 1:
        return None
    header = data[:start].decode("utf-8", "replace")
    fields = []
    for m in _FIELD.finditer(header):
        attrs = dict(_ATTR.findall(m.group(1)))
        dtype = _BIN2_TYPES.get(attrs.get("datatype", ""))
        if dtype is None or attrs.get("arraysize") not in (None, "1"):
            return None
        fields.append((attrs.get("name") or attrs.get("ID"), dtype))
    s0 = data.find(b">", data.find(b"<STREAM", start)) + 1
    s1 = data.find(b"</STREAM>", s0)
    if not fields or s0 <= 0 or s1 < 0 or b'encoding="base64"' not in data[start:s0]:
        return None
    raw = base64.b64decode(data[s0:s1])
    nmask = (len(fields) + 7) // 8
    dt = np.dtype([("__nulls", "u1", (nmask,))] + [(f"f{i}", t) for i, (_, t) in enumerate(fields)])
    if len(raw) % dt.itemsize:
        return None
    rows = np.frombuffer(raw, dtype=dt)
    nulls = rows["__nulls"]
    cols = {}
    for i, (name, _) in enumerate(fields):
        values = rows[f"f{i}"].astype(rows.dtype[f"f{i}"].newbyteorder("="))
        mask = ((nulls[:, i // 8] >> (7 - i % 8)) & 1).astype(bool)
        cols[name] = pa.array(values, mask=mask if mask.any() else None)
    return pa.table(cols)
