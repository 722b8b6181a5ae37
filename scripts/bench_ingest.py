"""Benchmark: parse + normalise throughput of ingest results (records/s).

Generates a Gaia-like TAP result of N rows (default 1,000,000; 14 columns, aliased to the common
schema) as CSV and as VOTable (BINARY2, what TAP services serve as ``votable``), then times:

* ours:    astroscale_fl.ingest.parse.read_csv / read_votable + schema.normalise
* naive:   csv module row loop (float() per cell) building dicts, pandas.read_csv (+ the same
           range checks), and astropy's generic VOTable reader -- in this process, same files.

Usage: python scripts/bench_ingest.py [--rows N] [--repeat R] [--skip-naive-csv]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from astroscale_fl.ingest.parse import read_csv, read_votable
from astroscale_fl.ingest.schema import COLUMN_TYPES, normalise

COLUMNS = ["source_id", "ra", "dec", "parallax", "parallax_error", "pmra", "pmdec", "mag_g", "bp_rp",
           "radial_velocity", "radial_velocity_error", "teff", "logg", "fe_h"]


def make_table(n: int, seed: int = 0) -> pa.Table:
    """A Gaia-like result with realistic value ranges and ~70% null radial velocities."""
    rng = np.random.default_rng(seed)
    rv_null = rng.random(n) < 0.7
    cols = {
        "source_id": pa.array(rng.integers(1 << 40, 1 << 62, n, dtype=np.int64)),
        "ra": rng.uniform(0, 360, n), "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
        "parallax": rng.exponential(1, n), "parallax_error": rng.uniform(0.01, 0.5, n),
        "pmra": rng.normal(0, 10, n), "pmdec": rng.normal(0, 10, n), "mag_g": rng.uniform(6, 21, n),
        "bp_rp": rng.normal(1, 0.4, n),
        "radial_velocity": pa.array(rng.normal(0, 40, n), mask=rv_null),
        "radial_velocity_error": pa.array(rng.uniform(0.1, 5, n), mask=rv_null),
        "teff": rng.uniform(3500, 8000, n), "logg": rng.uniform(1, 5, n), "fe_h": rng.normal(-0.2, 0.4, n),
    }
    return pa.table(cols)


_VOT_TYPES = {"int64": ("long", ">i8"), "double": ("double", ">f8")}


def write_votable(table: pa.Table, path: Path) -> None:
    """Write a TAP-style BINARY2 VOTable (null bitmap + big-endian values, base64) with NumPy.

    astropy's writer loops over rows in Python (minutes for 1M rows); the output of this writer
    is checked against astropy's reader on a sample in :func:`check_votable_writer`.
    """
    import base64

    names = table.column_names
    nmask = (len(names) + 7) // 8
    dt = np.dtype([("__nulls", "u1", (nmask,))] + [(c, _VOT_TYPES[str(table.column(c).type)][1]) for c in names])
    rows = np.zeros(table.num_rows, dtype=dt)
    for i, c in enumerate(names):
        col = table.column(c)
        rows[c] = col.fill_null(0).to_numpy()
        nulls = col.is_null().to_numpy(zero_copy_only=False)
        rows["__nulls"][:, i // 8] |= (nulls.astype(np.uint8) << (7 - i % 8))
    fields = "".join(f'<FIELD name="{c}" datatype="{_VOT_TYPES[str(table.column(c).type)][0]}"/>' for c in names)
    with open(path, "wb") as fh:
        fh.write(('<?xml version="1.0" encoding="utf-8"?>\n<VOTABLE version="1.4" '
                  'xmlns="http://www.ivoa.net/xml/VOTable/v1.3">\n<RESOURCE type="results">\n'
                  '<INFO name="QUERY_STATUS" value="OK"/>\n<TABLE>\n' + fields +
                  '\n<DATA><BINARY2><STREAM encoding="base64">\n').encode())
        fh.write(base64.encodebytes(rows.tobytes()))
        fh.write(b"</STREAM></BINARY2></DATA>\n</TABLE>\n</RESOURCE>\n</VOTABLE>\n")


def check_votable_writer(tmp: Path) -> None:
    """The NumPy BINARY2 writer must agree with astropy's reader (and our reader)."""
    from astropy.io.votable import parse

    sample = make_table(1000, seed=7)
    p = tmp / "sample.vot"
    write_votable(sample, p)
    ref = parse(str(p)).get_first_table().array
    ours = read_votable(p, origin="check").table
    for c in sample.column_names:
        a = np.ma.filled(ref[c].astype(float), np.nan)
        b = ours.column(c).to_numpy(zero_copy_only=False).astype(float)
        assert np.array_equal(a, b, equal_nan=True), c


def astropy_votable(path: Path) -> int:
    """Baseline: astropy's generic VOTable reader (row-by-row BINARY2 decoding) + the same checks."""
    from astropy.io.votable import parse

    arr = parse(str(path)).get_first_table().array
    ok = (arr["ra"] >= 0) & (arr["ra"] <= 360) & (arr["dec"] >= -90) & (arr["dec"] <= 90)
    return int(np.ma.filled(ok, False).sum())


def ours_csv(path: Path) -> int:
    parsed = read_csv(path, COLUMN_TYPES, origin="bench")
    return normalise(parsed.table, "gaia_dr3", origin="bench").table.num_rows


def ours_votable(path: Path) -> int:
    parsed = read_votable(path, origin="bench")
    return normalise(parsed.table, "gaia_dr3", origin="bench").table.num_rows


def naive_csv_module(path: Path) -> int:
    """What the replaced system did: a Python loop over rows."""
    out = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            row = {"source_id": rec["source_id"]}
            for k in COLUMNS[1:]:
                v = rec[k]
                row[k] = float(v) if v not in ("", "null") else None
            if row["ra"] is not None and 0 <= row["ra"] <= 360 and row["dec"] is not None and -90 <= row["dec"] <= 90:
                out.append(row)
    return len(out)


def naive_pandas(path: Path) -> int:
    import pandas as pd

    df = pd.read_csv(path, dtype={"source_id": str})
    ok = df["ra"].between(0, 360) & df["dec"].between(-90, 90) & df["source_id"].notna()
    return int(ok.sum())


def timed(fn, path: Path, repeat: int) -> tuple[float, int]:
    best, rows = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        rows = fn(path)
        best = min(best, time.perf_counter() - t0)
    return best, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-naive-csv", action="store_true", help="skip the slow csv-module baseline")
    args = ap.parse_args()
    n = args.rows
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        table = make_table(n)
        csv_path, vot_path = tmp / "result.csv", tmp / "result.vot"
        pacsv.write_csv(table, csv_path)
        write_votable(table, vot_path)
        print(f"generated {n:,} rows in {time.perf_counter() - t0:.1f} s: CSV {csv_path.stat().st_size / 1e6:.0f} MB, "
              f"VOTable BINARY2 {vot_path.stat().st_size / 1e6:.0f} MB; {os.cpu_count()} CPUs")
        results = {}
        results["ours csv (pyarrow.csv + normalise)"] = timed(ours_csv, csv_path, args.repeat)
        results["naive pandas.read_csv (+ checks)"] = timed(naive_pandas, csv_path, 1)
        if not args.skip_naive_csv:
            results["naive csv module row loop"] = timed(naive_csv_module, csv_path, 1)
        check_votable_writer(tmp)
        results["ours votable BINARY2 (+ normalise)"] = timed(ours_votable, vot_path, args.repeat)
        if not args.skip_naive_csv:
            results["astropy votable parse (+ checks)"] = timed(astropy_votable, vot_path, 1)
        base = results["ours csv (pyarrow.csv + normalise)"][0]
        print(f"{'path':40s} {'seconds':>8s} {'records/s':>14s} {'vs ours csv':>12s}")
        for name, (sec, rows) in results.items():
            assert rows == n, (name, rows)
            print(f"{name:40s} {sec:8.2f} {n / sec:14,.0f} {sec / base:11.1f}x")


if __name__ == "__main__":
    main()
