"""Column extraction from the APOGEE allStar FITS file (astropy, memory-mapped, vectorised).

``--where`` on a file source accepts simple conditions on the *common* column names, joined
with AND: ``teff > 4000 AND snr >= 70 AND fe_h < 0``. Conditions are applied with Arrow compute.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from astroscale_fl.errors import DataError

_COND = re.compile(r"^\s*([A-Za-z_]\w*)\s*(<=|>=|!=|<>|=|==|<|>)\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")
_OPS = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal,
        "=": pc.equal, "==": pc.equal, "!=": pc.not_equal, "<>": pc.not_equal}


def extract_fits(path: Path, hdu: int | str, columns: dict[str, str], *, origin: str) -> pa.Table:
    """Read the mapped FITS columns (``common name -> FITS column``) into an Arrow table."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hdul = fits.open(path, memmap=True)
    except Exception as exc:
        raise DataError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from None
    try:
        try:
            table_hdu = hdul[hdu]
        except (IndexError, KeyError):
            raise DataError(f"{path}: no HDU {hdu!r} (file has {len(hdul)} HDUs)") from None
        data = table_hdu.data
        if data is None or not hasattr(data, "columns"):
            raise DataError(f"{path}: HDU {hdu!r} is not a table")
        names = {n.upper(): n for n in data.columns.names}
        missing = [f for f in columns.values() if f.upper() not in names]
        if missing:
            raise DataError(f"{origin}: FITS column(s) {missing} not in HDU {hdu!r}; it has {list(names.values())}")
        out = {}
        for name, fits_col in columns.items():
            values = np.asarray(data[names[fits_col.upper()]])
            if values.ndim > 1:
                raise DataError(f"{origin}: FITS column {fits_col} is a vector column; expected scalars")
            if values.dtype.kind == "S":
                values = np.char.strip(values.astype("U"))
            elif values.dtype.byteorder == ">":
                values = values.astype(values.dtype.newbyteorder("="))
            out[name] = pa.array(values)
        return pa.table(out)
    finally:
        hdul.close()


def parse_where(expr: str | None, columns) -> list[tuple[str, str, float]]:
    """``a > 1 AND b <= 2`` as ``(column, op, number)`` conditions on ``columns``; a condition of any
    other shape, or on another column, is a one-line error (checked before any download)."""
    if not expr or not expr.strip():
        return []
    conditions = []
    for part in re.split(r"\s+AND\s+", expr.strip(), flags=re.I):
        m = _COND.match(part.strip().strip("()"))
        if not m:
            raise DataError(f"--where: cannot use {part.strip()!r} on a file source; expected "
                            "'<column> <op> <number>' conditions joined by AND (ops: < <= > >= = !=)")
        if m.group(1) not in columns:
            raise DataError(f"--where: unknown column {m.group(1)!r}; available: {list(columns)}")
        conditions.append((m.group(1), m.group(2), float(m.group(3))))
    return conditions


def where_filter(table: pa.Table, expr: str | None) -> pa.Table:
    """Apply ``a > 1 AND b <= 2`` style conditions (on table columns) to ``table``."""
    conditions = parse_where(expr, table.column_names)
    if not conditions:
        return table
    mask = None
    for col, op, value in conditions:
        cond = pc.fill_null(_OPS[op](table.column(col), value), False)
        mask = cond if mask is None else pc.and_(mask, cond)
    return table.filter(mask)
