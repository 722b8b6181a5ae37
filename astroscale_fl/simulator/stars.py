"""Population model: mass, age and metallicity -> Teff, log g and absolute magnitudes.

Deliberately simple, but each relation is a textbook one:

* Initial mass function -- Kroupa 2001, MNRAS 322, 231: dN/dm ~ m^-1.3 for 0.08 < m < 0.5 Msun,
  m^-2.3 above; stars of 0.1 to 8 Msun are drawn.
* Main-sequence lifetime t_MS = 10 Gyr (M/Msun)^-2.5; a star older than t_MS is evolved.
* Zero-age main sequence: L ~ 0.23 M^2.3 (M < 0.43), M^4 (0.43-2), 1.4 M^3.5 (M > 2) (the usual
  piecewise mass-luminosity relation, e.g. Salaris & Cassisi 2005), R ~ M^0.8 (M < 1), M^0.57
  (M > 1) (e.g. Demircan & Kahraman 1991); on the main sequence L grows by 1.25x and R by 1.25x
  (so the Sun today, at 46% of its lifetime, has L = R = 1).  Metal-poor stars are hotter and
  brighter at a fixed mass: Teff x 10^(-0.025 [Fe/H]), L x 10^(-0.1 [Fe/H]).
* Evolved stars spend a further 15% of t_MS as giants: the first 10% of that as a subgiant
  (from the turn-off to the base of the red giant branch at L = max(10, L_TO) Lsun), 60% on the
  red giant branch (log L rising as the cube of the elapsed fraction to the tip at 10^3.3 Lsun,
  so that the luminosity function falls steeply), and 30% in the red clump / horizontal branch
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
GIANT_FRACTION = 0.15  # giant-phase duration as a fraction of t_MS
SUBGIANT_END, RGB_END = 0.1, 0.7  # phase boundaries in the giant-phase coordinate x in [0, 1)
LOGL_RGB_BASE, LOGL_RGB_TIP, LOGL_CLUMP = 1.0, 3.3, 1.7
TEFF_SUN = 5772.0
LOGG_SUN = 4.438
MBOL_SUN = 4.74

#: Phase codes.
MS, SUBGIANT, RGB, CLUMP = 0, 1, 2, 3
PHASE_NAMES = ("ms", "subgiant", "rgb", "clump")

#: Bands with absolute magnitudes (Johnson V, Cousins I, 2MASS H, Gaia G, SDSS g).
BANDS = ("V", "I", "H", "G", "g")


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


def turnoff_mass(age_gyr):
    """Mass whose main-sequence lifetime equals ``age_gyr`` (capped at M_UP)."""
    return np.minimum(np.power(T_MS_SUN_GYR / age_gyr, 0.4), M_UP)


def _zams(m):
    """ZAMS luminosity and radius (solar units)."""
    L = np.where(m < 0.43, 0.23 * np.power(m, 2.3), np.where(m < 2.0, m**4, 1.4 * np.power(m, 3.5)))
    R = np.where(m < 1.0, np.power(m, 0.8), np.power(m, 0.57))
    return L, R


def _teff_from(L, R):
    return TEFF_SUN * np.power(L / (R * R), 0.25)


def stellar_parameters(mass, age_gyr, feh, phase, x, clump_dlogl):
    """Teff (K), log g (cgs) and log L (Lsun) of stars.

    ``phase`` is MS for main-sequence stars, else anything (the giant sub-phase is derived from
    ``x``, the elapsed fraction of the giant phase).  ``clump_dlogl`` is a standard-normal deviate
    for the clump luminosity scatter.
    """
    L0, R0 = _zams(mass)
    tau = np.clip(age_gyr / t_ms_gyr(mass), 0.0, 1.0)
    # main sequence
    L_ms = L0 * (0.8 + 0.45 * tau)
    R_ms = R0 * (0.9 + 0.35 * tau)
    t_shift = np.power(10.0, -0.025 * feh)
    l_shift = np.power(10.0, -0.1 * feh)
    teff_ms = _teff_from(L_ms, R_ms) * t_shift
    logl_ms = np.log10(L_ms * l_shift)

    giant = phase != MS
    # giant branch (computed everywhere, selected below)
    L_to = L0 * 1.25 * l_shift
    T_to = _teff_from(L0 * 1.25, R0 * 1.25) * t_shift
    logl_to = np.log10(L_to)
    logl_base = np.maximum(LOGL_RGB_BASE, logl_to)
    big = mass > 2.2  # no helium flash: a short, faint giant branch
    logl_tip = np.where(big, logl_base + 1.0, LOGL_RGB_TIP)
    teff_rgb_of = lambda lg: 4850.0 - 450.0 * (lg - LOGL_RGB_BASE) - 230.0 * feh  # noqa: E731
    # subgiant: straight line in (log L, log Teff) from the turn-off to the RGB base
    f = np.clip(x / SUBGIANT_END, 0.0, 1.0)
    t_base = teff_rgb_of(logl_base)
    logl_sg = logl_to + f * (logl_base - logl_to)
    teff_sg = np.power(10.0, np.log10(T_to) + f * (np.log10(t_base) - np.log10(T_to)))
    u = np.clip((x - SUBGIANT_END) / (RGB_END - SUBGIANT_END), 0.0, 1.0)
    logl_rgb = logl_base + (logl_tip - logl_base) * u**3
    teff_rgb = teff_rgb_of(logl_rgb)
    logl_rc = np.maximum(LOGL_CLUMP, logl_to + 0.1) + 0.05 * clump_dlogl
    teff_rc = np.clip(4750.0 - 300.0 * feh, 4400.0, 6500.0)

    sub = np.where(x < SUBGIANT_END, SUBGIANT, np.where(x < RGB_END, RGB, CLUMP))
    phase_out = np.where(giant, sub, MS).astype(np.int8)
    logl = np.select([~giant, sub == SUBGIANT, sub == RGB], [logl_ms, logl_sg, logl_rgb], logl_rc)
    teff = np.select([~giant, sub == SUBGIANT, sub == RGB], [teff_ms, teff_sg, teff_rgb], teff_rc)
    # radius from L and Teff; log g from mass and radius
    log_r = 0.5 * logl - 2.0 * np.log10(teff / TEFF_SUN)
    logg = LOGG_SUN + np.log10(mass) - 2.0 * log_r
    return teff, logg, logl, phase_out


def bc_v(teff):
    """Bolometric correction in V (Reed 1998 fit to Flower 1996)."""
    t = np.log10(teff) - 4.0
    return (((-8.499 * t + 13.421) * t - 8.131) * t - 3.901) * t - 0.438


def absolute_magnitudes(teff, logl) -> dict[str, np.ndarray]:
    """Absolute magnitudes in :data:`BANDS` from Teff and log L."""
    mv = MBOL_SUN - 2.5 * logl - bc_v(teff)
    theta = 5040.0 / teff
    vi = np.clip(0.70 + 2.2 * (theta - 0.873), -0.4, 4.5)
    vh = np.clip(1.50 + 5.0 * (theta - 0.873), -1.0, 7.0)
    vi_g = np.clip(vi, -0.5, 2.75)  # validity range of the Riello et al. polynomial
    g_minus_v = -0.01760 - 0.006860 * vi_g - 0.1732 * vi_g * vi_g
    return {"V": mv, "I": mv - vi, "H": mv - vh, "G": mv + g_minus_v, "g": mv + 0.55 * vi - 0.09}
