"""Derived features computed from raw inputs (vectorised, stateless formulas)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# ICRS -> Galactic rotation matrix (Hipparcos catalogue, vol. 1, sec. 1.5.3).
_ICRS_TO_GAL = np.array(
    [
        [-0.0548755604, -0.8734370902, -0.4838350155],
        [+0.4941094279, -0.4448296300, +0.7469822445],
        [-0.8676661490, -0.1980763734, +0.4559837762],
    ]
)


def galactic_latitude_sin(ra_rad: np.ndarray, dec_rad: np.ndarray) -> np.ndarray:
    """sin(b) of Galactic latitude for ICRS coordinates in radians."""
    cos_dec = np.cos(dec_rad)
    xyz = np.stack([cos_dec * np.cos(ra_rad), cos_dec * np.sin(ra_rad), np.sin(dec_rad)])
    return _ICRS_TO_GAL[2] @ xyz


def reduced_proper_motion(mag: np.ndarray, pm_total_mas_yr: np.ndarray) -> np.ndarray:
    """Reduced proper motion ``H = m + 5 log10(mu / (1 arcsec/yr)) + 5``.

    Proper motions under 0.1 mas/yr (below Hipparcos' precision) are floored to keep H finite.
    """
    mu_arcsec = np.maximum(pm_total_mas_yr, 0.1) / 1000.0
    return mag + 5.0 * np.log10(mu_arcsec) + 5.0


Columns = Mapping[str, np.ndarray]


def _pm_total(c: Columns) -> np.ndarray:
    return np.hypot(c["pmRA"], c["pmDE"])


def _sin_b(c: Columns) -> np.ndarray:
    return galactic_latitude_sin(c["RArad"], c["DErad"])


#: Derived feature name -> function of the columns. Formulas are documented on the helpers.
DERIVED_FEATURES = {
    "pm_total": _pm_total,
    "reduced_pm": lambda c: reduced_proper_motion(c["Hpmag"], _pm_total(c)),
    "sin_b": _sin_b,
    "cos_b": lambda f: np.sqrt(np.clip(1.0 - _sin_b(f) ** 2, 0.0, 1.0)),
}


def distance_pc(parallax_mas: np.ndarray, parallax_error_mas: np.ndarray, min_snr: float) -> np.ndarray:
    """Distance ``1000 / parallax`` in parsecs where ``parallax / error >= min_snr``, else NaN (missing).

    Inverting a noisy parallax is biased and unbounded at low signal-to-noise; those rows get a
    missing distance, which the imputer then fills like any other gap.
    """
    plx = np.asarray(parallax_mas, dtype=np.float64)
    err = np.asarray(parallax_error_mas, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        good = (plx > 0) & (err > 0) & (plx / err >= min_snr)
        return np.where(good, 1000.0 / plx, np.nan)


MJD_UNIX_EPOCH = 40587.0  # MJD of 1970-01-01T00:00:00 UTC


def to_mjd(values) -> np.ndarray:
    """Times as Modified Julian Dates: numbers are taken as MJD, strings parsed as ISO 8601 (UTC).

    Unparseable or missing times become NaN (missing)."""
    array = np.asarray(values)
    if array.dtype.kind in "fiub":
        return array.astype(np.float64)
    import pandas as pd

    stamps = pd.to_datetime(pd.Series(array, dtype="object"), errors="coerce", utc=True, format="ISO8601")
    seconds = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
    return np.where(stamps.isna().to_numpy(), np.nan, MJD_UNIX_EPOCH + seconds / 86400.0)


def decimal_year_and_day_phase(mjd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(decimal year, fraction of the year elapsed in [0, 1)) of MJDs (Julian years of 365.25 d from J2000)."""
    years = 2000.0 + (np.asarray(mjd, dtype=np.float64) - 51544.5) / 365.25
    return years, years - np.floor(years)
