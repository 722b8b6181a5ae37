"""The four simulated surveys: footprint, magnitude window, target types and noise model.

Footprints, magnitude windows and targets follow the surveys' own descriptions, simplified:

* ``apogee`` -- APOGEE DR17 (Majewski et al. 2017, AJ 154, 94; Abdurro'uf et al. 2022, ApJS 259,
  35): 2MASS 7 < H < 12.2, colour cut (J-Ks)_0 >= 0.5 (here: Teff below ~5500 K), giants
  preferred over dwarfs; both hemispheres (APO + LCO) down to dec -80 deg, mostly |b| < 16 deg
  (disk fields) with sparser halo fields.  ASPCAP precision ~50-100 K, 0.1 dex in log g, 0.03 dex
  in [Fe/H]; RV precision ~0.1 km/s (Nidever et al. 2015).
* ``sdss`` -- SDSS/SEGUE DR17 stellar spectra (Yanny et al. 2009, AJ 137, 4377): 14 < g < 20.2,
  high Galactic latitude, mostly the northern cap (plus southern stripes), F/G/K targets;
  SSPP precision ~130 K, 0.25 dex, 0.2 dex (Lee et al. 2008); RV ~4 km/s at g ~ 18.
* ``rave`` -- RAVE DR6 (Steinmetz et al. 2020, AJ 160, 82): 9 < I < 12, southern sky (dec < 2
  deg), the plane under-sampled; no colour cut; ~100-300 K, 0.3-0.4 dex, 0.2 dex; RV ~2 km/s.
* ``gaia`` -- Gaia DR3 RVS stars (Katz et al. 2023, A&A 674, A5): all sky, bright (G_RVS < 14,
  here G < 14.5), 3100 < Teff < 14500 K; GSP-Phot parameters (Andrae et al. 2023, A&A 674, A27)
  ~200 K, 0.25 dex, 0.3 dex in [M/H]; RV ~1 km/s bright to ~6 km/s at the faint end.

Parallaxes of every survey come from Gaia DR3 (all four surveys are cross-matched with it):
sigma_parallax(G) from the Gaia science-performance formula, which reproduces the DR3 values of
Lindegren et al. 2021, A&A 649, A2 (0.02-0.03 mas at G < 15, 0.07 at 17, 0.5 at 20), plus a
10 uas floor and the DR3 parallax zero-point offset of -17 uas (Lindegren et al. 2021).

S/N is photon-limited, S/N = snr_ref 10^(-0.2 (m - m_ref)) with 0.1 dex scatter; the errors of
Teff, log g, [Fe/H] and v_r are sigma0 sqrt(1 + (snr_knee / snr)^2).  Survey-specific
zero-point offsets (``*_bias``) are illustrative, of the size the surveys report between each
other, and make the node split non-IID in the labels' inputs as well as in their coverage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError


# Footprints take sin(b) and sin(dec) (cheap, and enough for latitude / declination cuts).
def _sin(deg: float) -> float:
    return float(np.sin(np.radians(deg)))


# Weights as float32 scalars: float32 inputs give float32 weights, float64 inputs float64 ones.
def _f(x: float) -> np.float32:
    return np.float32(x)


_ONE, _ZERO = _f(1.0), _f(0.0)


def _apogee_footprint(sin_b, sin_dec):
    return np.where(sin_dec > _sin(-80.0), np.where(np.abs(sin_b) < _sin(16.0), _ONE, _f(0.12)), _ZERO)


def _sdss_footprint(sin_b, sin_dec):
    ok = sin_dec > _sin(-15.0)
    return np.where(ok & (sin_b > _sin(25.0)), _ONE, np.where(ok & (sin_b < -_sin(25.0)), _f(0.25), _ZERO))


def _rave_footprint(sin_b, sin_dec):
    return np.where(sin_dec < _sin(2.0), np.where(np.abs(sin_b) > _sin(15.0), _ONE, _f(0.25)), _ZERO)


def _gaia_footprint(sin_b, sin_dec):
    sin_b = np.asarray(sin_b)
    return np.ones_like(sin_b, dtype=np.result_type(sin_b, np.float32))


def _logistic(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _apogee_targets(teff, logg):
    cool = _logistic((5500.0 - teff) / 120.0)  # (J-Ks)_0 >= 0.5
    return cool * np.where(logg < 3.8, _ONE, _f(0.35))


def _sdss_targets(teff, logg):
    return 0.3 + 0.7 * _logistic((teff - 4500.0) / 150.0) * _logistic((7000.0 - teff) / 200.0)


def _rave_targets(teff, logg):
    teff = np.asarray(teff)
    return np.ones_like(teff, dtype=np.result_type(teff, np.float32))


def _gaia_targets(teff, logg):
    teff = np.asarray(teff)
    return ((teff > 3100.0) & (teff < 14500.0)).astype(np.result_type(teff, np.float32))


@dataclass(frozen=True)
class Survey:
    """One survey: how it selects stars and how it measures them."""

    name: str
    description: str
    band: str  # selection band, one of stars.BANDS
    mag_bright: float
    mag_faint: float
    footprint: Callable = field(repr=False)  # (sin b, sin dec) -> weight in [0, 1]
    targets: Callable = field(repr=False)  # (teff, logg) -> selection probability in [0, 1]
    default_size: int = 1000
    # noise model
    snr_ref: float = 50.0  # S/N at mag_ref
    mag_ref: float = 12.0
    snr_max: float = 1000.0
    snr_knee: float = 20.0
    sigma_teff: float = 100.0
    sigma_logg: float = 0.1
    sigma_feh: float = 0.05
    sigma_vr_kms: float = 1.0
    teff_bias: float = 0.0
    logg_bias: float = 0.0
    feh_bias: float = 0.0


SURVEYS: dict[str, Survey] = {
    s.name: s
    for s in (
        Survey(
            "apogee", "APOGEE DR17: infrared, giants, low latitude, both hemispheres",
            "H", 7.0, 12.2, _apogee_footprint, _apogee_targets, default_size=7000,
            snr_ref=100.0, mag_ref=12.2, snr_max=1500.0, snr_knee=70.0,
            sigma_teff=60.0, sigma_logg=0.07, sigma_feh=0.03, sigma_vr_kms=0.1,
        ),
        Survey(
            "sdss", "SDSS/SEGUE DR17: optical, faint, high latitude, north",
            "g", 14.0, 20.2, _sdss_footprint, _sdss_targets, default_size=5000,
            snr_ref=10.0, mag_ref=19.5, snr_max=150.0, snr_knee=15.0,
            sigma_teff=130.0, sigma_logg=0.25, sigma_feh=0.2, sigma_vr_kms=4.0,
            teff_bias=40.0, logg_bias=0.05, feh_bias=-0.05,
        ),
        Survey(
            "rave", "RAVE DR6: bright, southern sky, no colour cut",
            "I", 9.0, 12.0, _rave_footprint, _rave_targets, default_size=4000,
            snr_ref=50.0, mag_ref=10.5, snr_max=250.0, snr_knee=25.0,
            sigma_teff=200.0, sigma_logg=0.35, sigma_feh=0.2, sigma_vr_kms=1.8,
            teff_bias=-30.0, logg_bias=0.1, feh_bias=0.05,
        ),
        Survey(
            "gaia", "Gaia DR3 RVS: bright, all sky",
            "G", 3.0, 14.5, _gaia_footprint, _gaia_targets, default_size=3000,
            snr_ref=15.0, mag_ref=14.0, snr_max=500.0, snr_knee=20.0,
            sigma_teff=180.0, sigma_logg=0.25, sigma_feh=0.3, sigma_vr_kms=1.0,
            teff_bias=20.0, logg_bias=-0.05, feh_bias=-0.1,
        ),
    )
}

#: Survey names in their default order (also their integer codes).
SURVEY_NAMES: tuple[str, ...] = tuple(SURVEYS)

#: Parallax zero-point of Gaia DR3 (mas; Lindegren et al. 2021).
PARALLAX_ZERO_POINT_MAS = -0.017


def get_survey(name: str) -> Survey:
    """The survey called ``name``; a ConfigError naming the known ones otherwise."""
    try:
        return SURVEYS[name]
    except KeyError:
        raise ConfigError(
            f"unknown survey {name!r}; expected one of {', '.join(SURVEY_NAMES)}"
        ) from None


_LN10 = float(np.log(10.0))


def parallax_sigma_mas(g_mag: np.ndarray) -> np.ndarray:
    """Gaia parallax uncertainty (mas) at apparent G (science-performance formula + floor).

    Keeps the input's float dtype (float32 in the simulator's hot path).
    """
    z = np.exp((0.4 * _LN10) * (np.maximum(g_mag, 12.09) - 15.0))
    sig_uas2 = np.maximum(-1.631 + 680.766 * z + 32.732 * z * z, 0.0)
    return np.sqrt(sig_uas2 + 10.0**2) * 1e-3


def standard_normal(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """``(k, n)`` float32 standard normal deviates by the Box-Muller transform.

    About 3x faster than ``rng.standard_normal`` here, because float32 log/sin/cos are
    vectorised (SIMD) and the float64 ones are not.  Uniforms are multiples of 2^-24, so the
    deviates are exact normal draws truncated at |g| = 5.77 (a probability of 8e-9).
    """
    h = (k + 1) // 2
    u = rng.random((2, h, n), dtype=np.float32)
    r = np.subtract(1.0, u[0], out=u[0])  # in (0, 1]
    np.log(r, out=r)
    np.sqrt(np.multiply(r, -2.0, out=r), out=r)
    t = np.multiply(u[1], 2.0 * np.pi, out=u[1])
    out = np.empty((2 * h, n), dtype=np.float32)
    np.multiply(r, np.cos(t), out=out[:h])
    np.multiply(r, np.sin(t), out=out[h:])
    return out[:k]


def observe(rng: np.random.Generator, survey: Survey, mag, g_mag, teff, logg, feh, parallax_mas, vr_kms,
            g: np.ndarray | None = None):
    """Apply the survey's noise model; returns observed (snr, teff, logg, feh, parallax, vr).

    ``g`` may pass the six rows of standard normal deviates to use (drawn here otherwise).
    Float32 inputs give float32 outputs.
    """
    n = mag.size
    if g is None:
        g = standard_normal(rng, 6, n)
    snr = survey.snr_ref * np.exp(_LN10 * (-0.2 * (mag - survey.mag_ref) + 0.1 * g[0]))
    np.clip(snr, 1.0, survey.snr_max, out=snr)
    k = survey.snr_knee / snr
    k = np.sqrt(k * k + 1.0)
    teff_o = teff + survey.teff_bias + survey.sigma_teff * k * g[1]
    logg_o = logg + survey.logg_bias + survey.sigma_logg * k * g[2]
    feh_o = feh + survey.feh_bias + survey.sigma_feh * k * g[3]
    plx_o = parallax_mas + PARALLAX_ZERO_POINT_MAS + parallax_sigma_mas(g_mag) * g[4]
    vr_o = vr_kms + survey.sigma_vr_kms * k * g[5]
    return snr, teff_o, logg_o, feh_o, plx_o, vr_o
