"""Population model: mass, age and metallicity -> Teff, log g and absolute magnitudes.

Deliberately simple, but each relation is a textbook one:

* Initial mass function -- Kroupa 2001, MNRAS 322, 231: dN/dm ~ m^-1.3 for 0.08 < m < 0.5 Msun,
  m^-2.3 above; stars of 0.1 to 8 Msun are drawn.
* Main-sequence lifetime t_MS = 10 Gyr (M/Msun)^-2.5; a star older than t_MS is evolved.
* Zero-age main sequence: L ~ 0.23 M^2.3 (M < 0.43), M^4 (0.43-2), 1.4 M^3.5 (M > 2) (the usual
  piecewise mass-luminosity relation, e.g. Salaris & Cassisi 2005), R ~ M^0.8 (M < 1), M^0.57
  (M > 1) (e.g. Demircan & Kahraman 1991); along the main sequence L = L_ZAMS 0.7 (1 + 1.6
  tau^1.5) and R = R_ZAMS (0.92 + 0.45 tau^2), tau = age / t_MS (the Sun today, tau = 0.46, has
  L ~ R ~ 1, and turns off at L ~ 1.8, R ~ 1.4).  Metal-poor stars are hotter and
  brighter at a fixed mass: Teff x 10^(-0.025 [Fe/H]), L x 10^(-0.1 [Fe/H]).
* Evolved stars spend a further 12% of t_MS as giants: the first 35% of that as a subgiant
  (from the turn-off to the base of the red giant branch at L = max(10, L_TO) Lsun), 45% on the
  red giant branch (log L rising as the cube of the elapsed fraction to the tip at 10^3.3 Lsun,
  so that the luminosity function falls steeply) and 20% in the red clump / horizontal branch
  (log L = 1.7 +- 0.05).  RGB Teff = 4850 - 450 (log L - 1) - 230 [Fe/H] K; clump Teff =
  4750 - 300 [Fe/H] K.  Older stars are remnants (white dwarfs), which no survey here targets.
* log g = 4.438 + log M - 2 log R (cgs; solar 4.438), R from L and Teff (Teff_sun = 5772 K).
* Bolometric correction BC_V(Teff) -- Reed 1998, JRASC 92, 36 (his polynomial fit to Flower 1996);
  M_bol,sun = 4.74 (IAU 2015 B2).  Colours from Teff through theta = 5040/Teff, linear fits to
  the usual dwarf and giant colour-temperature scales: V-I = 0.70 + 2.2 (theta - 0.873),
  V-H = 1.50 + 5.0 (theta - 0.873) (solar V-I = 0.70, V-H = 1.50); Gaia G from V and V-I with the
  Riello et al. 2021, A&A 649, A3 polynomial; SDSS g = V + 0.55 (V-I) - 0.09 (solar g-V = 0.30).
"""

from __future__ import annotations

import numpy as np

M_MIN, M_BREAK, M_UP = 0.1, 0.5, 8.0
ALPHA_LOW, ALPHA_HIGH = 1.3, 2.3
T_MS_SUN_GYR = 10.0
GIANT_FRACTION = 0.12  # giant-phase duration as a fraction of t_MS
SUBGIANT_END, RGB_END = 0.35, 0.8  # phase boundaries in the giant-phase coordinate x in [0, 1)
LOGL_RGB_BASE, LOGL_RGB_TIP, LOGL_CLUMP = 1.0, 3.3, 1.7
TEFF_SUN = 5772.0
LOGG_SUN = 4.438
MBOL_SUN = 4.74

#: Phase codes.
MS, SUBGIANT, RGB, CLUMP = 0, 1, 2, 3
PHASE_NAMES = ("ms", "subgiant", "rgb", "clump")

#: Bands with absolute magnitudes (Johnson V, Cousins I, 2MASS H, Gaia G, SDSS g).
BANDS = ("V", "I", "H", "G", "g")


_LN10 = float(np.log(10.0))
_INV_LN10 = 1.0 / _LN10


def log10(x):
    """log10 that keeps float32 float32 and uses the fast (SIMD) natural log."""
    return np.log(x) * _INV_LN10


def exp10(x):
    """10**x through the fast (SIMD) exp; keeps float32 float32."""
    return np.exp(x * _LN10)


# ---- Kroupa IMF over [M_MIN, M_UP], normalised CDF and its inverse ----
def _seg_int(a: float, m0: float, m1):
    """Integral of m^-a from m0 to m1 (a != 1)."""
    return (np.power(m1, 1.0 - a) - m0 ** (1.0 - a)) / (1.0 - a)


# continuity at the break: xi = k1 m^-1.3 below, k2 m^-2.3 above, with k2 = k1 * M_BREAK
_K2 = M_BREAK ** (ALPHA_HIGH - ALPHA_LOW)
_N_LOW = float(_seg_int(ALPHA_LOW, M_MIN, M_BREAK))
_N_TOT = _N_LOW + _K2 * float(_seg_int(ALPHA_HIGH, M_BREAK, M_UP))


def imf_cdf(m: np.ndarray) -> np.ndarray:
    """Fraction of stars (Kroupa IMF, M_MIN..M_UP) with mass below ``m``."""
    m = np.clip(m, M_MIN, M_UP)
    low = _seg_int(ALPHA_LOW, M_MIN, np.minimum(m, M_BREAK))
    high = _K2 * _seg_int(ALPHA_HIGH, M_BREAK, np.maximum(m, M_BREAK))
    return (low + high) / _N_TOT


def imf_ppf(q: np.ndarray) -> np.ndarray:
    """Inverse of :func:`imf_cdf`."""
    t = q * _N_TOT
    a1, a2 = 1.0 - ALPHA_LOW, 1.0 - ALPHA_HIGH
    low = np.power(np.maximum(M_MIN**a1 + a1 * t, 1e-300), 1.0 / a1)
    th = (t - _N_LOW) / _K2
    high = np.power(np.maximum(M_BREAK**a2 + a2 * th, 1e-300), 1.0 / a2)
    return np.clip(np.where(t < _N_LOW, low, high), M_MIN, M_UP)


def t_ms_gyr(m):
    """Main-sequence lifetime in Gyr."""
    return T_MS_SUN_GYR * np.power(m, -2.5)


_LOG_TSUN = float(np.log10(TEFF_SUN))
# Python floats (not numpy scalars), so that float32 arrays stay float32 (NEP 50).
_LOG_043, _LOG_023, _LOG_14, _LOG2 = (float(np.log10(v)) for v in (0.43, 0.23, 1.4, 2.0))
#: log10 of the turn-off L and R in units of the ZAMS values (0.7 x 2.6 and 1.37; see below)
_LOG_LFAC_TO, _LOG_RFAC_TO = float(np.log10(0.7 * 2.6)), float(np.log10(1.37))


def zams_log(lm):
    """log10 L and log10 R (solar units) on the zero-age main sequence, from log10 mass."""
    ll = np.where(lm < _LOG_043, _LOG_023 + 2.3 * lm, np.where(lm < _LOG2, 4.0 * lm, _LOG_14 + 3.5 * lm))
    lr = np.where(lm < 0.0, 0.8 * lm, 0.57 * lm)
    return ll, lr


def main_sequence(lm, tau, feh):
    """log10 L and log10 Teff of main-sequence stars at fractional age ``tau`` = age / t_MS.

    L = L_ZAMS 0.7 (1 + 1.6 tau^1.5), R = R_ZAMS (0.92 + 0.45 tau^2): the Sun (tau = 0.46) has
    L ~ R ~ 1 and leaves the main sequence at L ~ 1.8, R ~ 1.4; metal-poor stars are hotter and
    brighter (Teff x 10^(-0.025 [Fe/H]), L x 10^(-0.1 [Fe/H])).
    """
    ll0, lr0 = zams_log(lm)
    lfac = log10(0.7 * (1.0 + 1.6 * tau * np.sqrt(tau)))
    rfac = log10(0.92 + 0.45 * tau * tau)
    lt = _LOG_TSUN + 0.25 * (ll0 + lfac - 2.0 * (lr0 + rfac)) - 0.025 * feh
    return ll0 + lfac - 0.1 * feh, lt


_LOG_22 = float(np.log10(2.2))
_LOG_M_BREAK, _LOG_K2, _LOG_N_TOT = float(np.log10(M_BREAK)), float(np.log10(_K2)), float(np.log10(_N_TOT))


def giant_branch(lm, x, feh, clump_dev):
    """(log10 L, log10 Teff, phase code) of evolved stars at giant-phase coordinate ``x``."""
    ll0, lr0 = zams_log(lm)
    ll_to = ll0 + _LOG_LFAC_TO - 0.1 * feh
    lt_to = _LOG_TSUN + 0.25 * (ll0 + _LOG_LFAC_TO - 2.0 * (lr0 + _LOG_RFAC_TO)) - 0.025 * feh
    ll_base = np.maximum(LOGL_RGB_BASE, ll_to)
    ll_tip = np.where(lm > _LOG_22, ll_base + 1.0, LOGL_RGB_TIP)  # no He flash above 2.2
    lt_base = log10(4850.0 - 450.0 * (ll_base - LOGL_RGB_BASE) - 230.0 * feh)
    f = np.minimum(x / SUBGIANT_END, 1.0)
    u = np.clip((x - SUBGIANT_END) / (RGB_END - SUBGIANT_END), 0.0, 1.0)
    ll_rgb = ll_base + (ll_tip - ll_base) * u * u * u
    ll_rc = np.maximum(LOGL_CLUMP, ll_to + 0.1) + 0.05 * clump_dev
    is_sg, is_rgb = x < SUBGIANT_END, x < RGB_END
    ll = np.where(is_sg, ll_to + f * (ll_base - ll_to), np.where(is_rgb, ll_rgb, ll_rc))
    t_lin = np.where(
        is_rgb, 4850.0 - 450.0 * (ll_rgb - LOGL_RGB_BASE) - 230.0 * feh,
        np.clip(4750.0 - 300.0 * feh, 4400.0, 6500.0),
    )
    lt = np.where(is_sg, lt_to + f * (lt_base - lt_to), log10(t_lin))
    phase = np.where(is_sg, SUBGIANT, np.where(is_rgb, RGB, CLUMP)).astype(np.int8)
    return ll, lt, phase


def log_g(lm, ll, lt):
    """log g (cgs) from log10 mass, log10 L and log10 Teff."""
    lr = 0.5 * ll - 2.0 * (lt - _LOG_TSUN)
    return LOGG_SUN + lm - 2.0 * lr


def imf_log_density(lm):
    """log10 of dN/dlog10(m) (up to ln 10) for the Kroupa IMF normalised over [M_MIN, M_UP]."""
    return np.where(
        lm < _LOG_M_BREAK, (1.0 - ALPHA_LOW) * lm, _LOG_K2 + (1.0 - ALPHA_HIGH) * lm
    ) - _LOG_N_TOT


def stellar_parameters(mass, age_gyr, feh, phase, x, clump_dlogl):
    """Teff (K), log g (cgs), log L (Lsun) and phase code of stars (scalar-friendly wrapper).

    ``phase`` is MS for main-sequence stars, anything else for evolved ones (whose sub-phase
    follows from ``x``, the elapsed fraction of the giant phase).
    """
    lm = np.log10(mass)
    tau = np.clip(age_gyr / t_ms_gyr(mass), 0.0, 1.0)
    ll_ms, lt_ms = main_sequence(lm, tau, feh)
    ll_g, lt_g, ph_g = giant_branch(lm, x, feh, clump_dlogl)
    giant = np.asarray(phase) != MS
    ll = np.where(giant, ll_g, ll_ms)
    lt = np.where(giant, lt_g, lt_ms)
    return 10.0**lt, log_g(lm, ll, lt), ll, np.where(giant, ph_g, MS).astype(np.int8)


def bc_v(teff=None, log_teff=None):
    """Bolometric correction in V (Reed 1998 fit to Flower 1996)."""
    t = (log10(teff) if log_teff is None else log_teff) - 4.0
    return (((-8.499 * t + 13.421) * t - 8.131) * t - 3.901) * t - 0.438


def absolute_magnitudes(teff, logl, log_teff=None) -> dict[str, np.ndarray]:
    """Absolute magnitudes in :data:`BANDS` from Teff and log L."""
    mv = MBOL_SUN - 2.5 * logl - bc_v(teff, log_teff)
    theta = 5040.0 / teff
    vi = np.clip(0.70 + 2.2 * (theta - 0.873), -0.4, 4.5)
    vh = np.clip(1.50 + 5.0 * (theta - 0.873), -1.0, 7.0)
    vi_g = np.clip(vi, -0.5, 2.75)  # validity range of the Riello et al. polynomial
    g_minus_v = -0.01760 - 0.006860 * vi_g - 0.1732 * vi_g * vi_g
    return {"V": mv, "I": mv - vi, "H": mv - vh, "G": mv + g_minus_v, "g": mv + 0.55 * vi - 0.09}


def absolute_magnitude(teff, logl, band: str, log_teff=None):
    """Absolute magnitude in one band (cheaper than :func:`absolute_magnitudes`)."""
    mv = MBOL_SUN - 2.5 * logl - bc_v(teff, log_teff)
    if band == "V":
        return mv
    theta = 5040.0 / teff
    if band == "H":
        return mv - np.clip(1.50 + 5.0 * (theta - 0.873), -1.0, 7.0)
    vi = np.clip(0.70 + 2.2 * (theta - 0.873), -0.4, 4.5)
    if band == "I":
        return mv - vi
    if band == "g":
        return mv + 0.55 * vi - 0.09
    if band == "G":
        vi_g = np.clip(vi, -0.5, 2.75)
        return mv - 0.01760 - 0.006860 * vi_g - 0.1732 * vi_g * vi_g
    raise ValueError(f"unknown band {band!r}; expected one of {BANDS}")
