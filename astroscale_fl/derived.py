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

#: Physical bounds of each derived feature, from the bounds of its inputs (hipparcos_absmag:
#: |pm| <= 2e4 mas/yr per axis, Hpmag in [-2, 16]); used to clip values for DP statistics.
DERIVED_RANGES = {
    "pm_total": (0.0, 2e4 * 2**0.5),
    "reduced_pm": (-17.0, 28.3),  # Hpmag + 5 log10(pm / 1000) + 5, pm in [0.1, 28,285] mas/yr
    "sin_b": (-1.0, 1.0),
    "cos_b": (0.0, 1.0),
}
