"""The common catalog schema every source is mapped to, and its normalisation.

Every ingested file has exactly these columns, in this order (missing values are null):

============================  =========  ======  ==============================================
column                        type       unit    meaning
============================  =========  ======  ==============================================
survey                        string             survey tag, e.g. ``gaia_dr3``, ``sdss_dr17``
source_id                     string             the archive's own object/observation id
ra                            float64    deg     right ascension (ICRS)
dec                           float64    deg     declination (ICRS)
parallax                      float64    mas     trigonometric parallax
parallax_error                float64    mas     parallax standard error
pmra                          float64    mas/yr  proper motion in RA (times cos dec)
pmdec                         float64    mas/yr  proper motion in Dec
mag_g                         float64    mag     G-band magnitude (Gaia G; SDSS g for SDSS)
bp_rp                         float64    mag     Gaia BP-RP colour
radial_velocity               float64    km/s    heliocentric radial velocity
radial_velocity_error         float64    km/s    its standard error
teff                          float64    K       effective temperature
logg                          float64    dex     log10 surface gravity (cgs)
fe_h                          float64    dex     metallicity [Fe/H] (or [M/H] where that is all)
snr                           float64            spectral signal-to-noise ratio
z                             float64            redshift
z_err                         float64            redshift error
target_name                   string             target name (MAST observations)
instrument                    string             instrument name (MAST observations)
exptime                       float64    s       exposure time (MAST observations)
obs_mjd                       float64    d       observation start, MJD (MAST observations)
============================  =========  ======  ==============================================

Units are stored as Arrow field metadata (``unit``, ``description``); provenance (source,
release, endpoint, query, retrieval time, checksums, row counts) is stored as JSON under the
schema metadata key ``astroscale_fl.provenance`` and in ``<source>.provenance.json``.

Rows that cannot be used (missing id or position, position out of range, values that are not
numbers, rows with the wrong number of fields) are not written to the catalog; they go to
``<source>.quarantine.csv`` with a ``reason`` column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from astroscale_fl.errors import DataError

#: Schema version written into the Parquet metadata.
SCHEMA_VERSION = "1"
PROVENANCE_KEY = b"astroscale_fl.provenance"

# name, type, unit, description
_FIELDS: list[tuple[str, pa.DataType, str, str]] = [
    ("survey", pa.string(), "", "survey tag"),
    ("source_id", pa.string(), "", "archive object or observation identifier"),
    ("ra", pa.float64(), "deg", "right ascension (ICRS)"),
    ("dec", pa.float64(), "deg", "declination (ICRS)"),
    ("parallax", pa.float64(), "mas", "trigonometric parallax"),
    ("parallax_error", pa.float64(), "mas", "parallax standard error"),
    ("pmra", pa.float64(), "mas/yr", "proper motion in right ascension (times cos dec)"),
    ("pmdec", pa.float64(), "mas/yr", "proper motion in declination"),
    ("mag_g", pa.float64(), "mag", "G-band magnitude"),
    ("bp_rp", pa.float64(), "mag", "BP-RP colour"),
    ("radial_velocity", pa.float64(), "km/s", "heliocentric radial velocity"),
    ("radial_velocity_error", pa.float64(), "km/s", "radial velocity standard error"),
    ("teff", pa.float64(), "K", "effective temperature"),
    ("logg", pa.float64(), "dex", "log10 surface gravity (cgs)"),
    ("fe_h", pa.float64(), "dex", "metallicity [Fe/H]"),
    ("snr", pa.float64(), "", "spectral signal-to-noise ratio"),
    ("z", pa.float64(), "", "redshift"),
    ("z_err", pa.float64(), "", "redshift error"),
    ("target_name", pa.string(), "", "target name"),
    ("instrument", pa.string(), "", "instrument name"),
    ("exptime", pa.float64(), "s", "exposure time"),
    ("obs_mjd", pa.float64(), "d", "observation start (MJD)"),
]

#: Column name -> Arrow type of the common schema.
COLUMN_TYPES: dict[str, pa.DataType] = {name: typ for name, typ, _, _ in _FIELDS}
#: Column name -> unit string ("" for dimensionless or none).
UNITS: dict[str, str] = {name: unit for name, _, unit, _ in _FIELDS}
#: Columns a source may map (everything except the constant ``survey``).
MAPPABLE = [name for name, _, _, _ in _FIELDS if name != "survey"]
#: Columns every source must provide.
REQUIRED = ("source_id", "ra", "dec")


def common_schema(provenance: dict | None = None) -> pa.Schema:
    """Return the common Arrow schema, with units as field metadata and optional provenance."""
    fields = [
        pa.field(name, typ, nullable=True, metadata={"unit": unit, "description": desc})
        for name, typ, unit, desc in _FIELDS
    ]
    meta = {b"astroscale_fl.schema_version": SCHEMA_VERSION.encode()}
    if provenance is not None:
        meta[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, default=str).encode()
    return pa.schema(fields, metadata=meta)


@dataclass
class Normalised:
    """A table in the common schema, and the rows rejected on the way (with ``reason``)."""

    table: pa.Table
    quarantine: pa.Table


def _to_type(name: str, col: pa.ChunkedArray, target: pa.DataType, origin: str) -> pa.ChunkedArray:
    if col.type == target:
        return col
    try:
        if pa.types.is_string(target) and pa.types.is_floating(col.type):
            # ids delivered as floats (e.g. by a VOTable double) would print as 1.0e18; refuse.
            raise pa.ArrowInvalid("floating-point identifiers are not supported")
        return pc.cast(col, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"{origin}: column '{name}' has type {col.type}, expected {target} ({exc})"
        ) from None


def _nullify(col: pa.ChunkedArray, null_values: list[float]) -> pa.ChunkedArray:
    """Replace NaN and sentinel values (e.g. -9999) of a float column with null."""
    bad = pc.is_nan(col)
    for value in null_values:
        bad = pc.or_(bad, pc.equal(col, pa.scalar(float(value))))
    if not pc.any(bad).as_py():
        return col
    return pc.if_else(bad, pa.scalar(None, col.type), col)


def normalise(
    table: pa.Table,
    survey: str,
    *,
    origin: str,
    null_values: list[float] | None = None,
) -> Normalised:
    """Map a result table whose columns already carry common names onto the common schema.

    Casts every column to its schema type, turns NaN and the source's sentinels into null,
    and moves rows with a missing id or an impossible position to the quarantine table.
    Fully vectorised (Arrow compute kernels); ``origin`` names the input in error messages.
    """
    unknown = [c for c in table.column_names if c not in COLUMN_TYPES or c == "survey"]
    if unknown:
        raise DataError(f"{origin}: unexpected columns {unknown}; expected a subset of {MAPPABLE}")
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise DataError(
            f"{origin}: result lacks required column(s) {missing} (got {table.column_names})"
        )
    null_values = list(null_values or [])
    cols: dict[str, pa.ChunkedArray] = {}
    for name in table.column_names:
        col = _to_type(name, table.column(name), COLUMN_TYPES[name], origin)
        if pa.types.is_floating(col.type):
            col = _nullify(col, null_values)
        elif pa.types.is_string(col.type):
            if name != "source_id" or not pa.types.is_integer(table.column(name).type):
                col = pc.utf8_trim_whitespace(col)
                col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
        cols[name] = col

    ra, dec, sid = cols["ra"], cols["dec"], cols["source_id"]
    rules = [  # first matching rule names the reason
        (pc.is_null(sid), "missing source_id"),
        (pc.is_null(ra), "missing ra"),
        (pc.is_null(dec), "missing dec"),
        (pc.invert(pc.and_(pc.greater_equal(ra, 0.0), pc.less_equal(ra, 360.0))), "ra outside [0, 360] deg"),
        (pc.invert(pc.and_(pc.greater_equal(dec, -90.0), pc.less_equal(dec, 90.0))), "dec outside [-90, 90] deg"),
    ]
    n = table.num_rows
    reason = pa.nulls(n, pa.string())
    for mask, text in reversed(rules):
        mask = pc.fill_null(mask, False)
        reason = pc.if_else(mask, pa.scalar(text), reason)
    bad = pc.is_valid(reason)
    good = pc.invert(bad)

    n_bad = pc.sum(bad.cast(pa.int64())).as_py() or 0 if n else 0
    kept_n = n - n_bad
    out_cols = []
    for name, typ in COLUMN_TYPES.items():
        if name == "survey":
            out_cols.append(pa.repeat(pa.scalar(survey), kept_n))
            continue
        col = cols.get(name)
        if col is None:
            out_cols.append(pa.nulls(kept_n, typ))
        else:
            out_cols.append(pc.filter(col, good) if n_bad else col)
    kept = pa.Table.from_arrays(out_cols, schema=common_schema())

    q = pa.table({name: cols[name] for name in table.column_names}).filter(bad)
    q = q.append_column("reason", pc.filter(reason, bad))
    return Normalised(kept, q)


def with_provenance(table: pa.Table, provenance: dict) -> pa.Table:
    """Return ``table`` with the common schema carrying ``provenance`` as JSON metadata."""
    return table.cast(common_schema(provenance))
