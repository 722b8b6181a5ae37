"""The sampler's grids: sky pixels, distance bins, the tabulated density law and distance windows.

The density law is tabulated on 180 x 90 equal-area sky pixels (2 deg in l, 1/45 in sin b) and
101 distance bins (1 pc to 100 kpc, 0.05 dex): within a pixel and bin the density is constant.
:class:`WindowTables` gives, per pixel row, the distance window outside which a star of a given
absolute magnitude is never seen by a survey, with the row's extinction range folded in.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import galaxy
from .surveys import Survey

F32 = np.float32

NL, NB = 180, 90
NPIX = NL * NB
DL = 2.0 * np.pi / NL
DS = 2.0 / NB
LOG_D_MIN, LOG_D_MAX, DLOG_D = 0.0, 5.0, 0.05
ND = 1 + int(round((LOG_D_MAX - LOG_D_MIN) / DLOG_D))  # first bin [0, 1 pc]
EDGES = np.concatenate([[0.0], 10.0 ** np.linspace(LOG_D_MIN, LOG_D_MAX, ND)])
D_MAX = EDGES[-1]
M_GRID_MIN, M_GRID_STEP, NM = -9.0, 0.2, 146
NPOP = len(galaxy.POPULATIONS)


def _pixel_centres():
    il, ib = np.divmod(np.arange(NPIX), NB)
    l = (il + 0.5) * DL
    s = -1.0 + (ib + 0.5) * DS
    return l, s


@functools.cache
def density_tables() -> tuple[np.ndarray, np.ndarray]:
    """(rho, C): density per (population x pixel, distance bin) and its cumulative r^2 integral.

    Rows are ``pop * NPIX + pix``; ``C[row, k]`` is the integral of rho d^2 dd from 0 to EDGES[k]
    (per steradian, pc^3, relative to the thin disk's local density).
    """
    l, s = _pixel_centres()
    cb = np.sqrt(1.0 - s * s)
    nx, ny, nz = cb * np.cos(l), cb * np.sin(l), s
    mid = np.concatenate([[0.5], np.sqrt(EDGES[1:-1] * EDGES[2:])])
    vol = np.diff(EDGES**3) / 3.0
    x, y, z = galactocentric(nx[:, None], ny[:, None], nz[:, None], mid[None, :])
    R = np.sqrt(x * x + y * y)
    rho = np.empty((NPOP * NPIX, ND))
    for k, pop in enumerate(galaxy.POPULATIONS):
        rho[k * NPIX : (k + 1) * NPIX] = pop.density(R, z)
    C = np.zeros((NPOP * NPIX, ND + 1))
    np.cumsum(rho * vol[None, :], axis=1, out=C[:, 1:])
    return rho, C


galactocentric = galaxy.galactocentric


EDGES3 = EDGES**3


# ---- per-pixel constants ----
_PIX_IL, _PIX_IB = np.divmod(np.arange(NPIX), NB)
PIX_L0 = (_PIX_IL * DL).astype(F32)  # lower l edge of each pixel (rad)
PIX_S0 = (-1.0 + _PIX_IB * DS).astype(F32)  # lower sin b edge
PIX_ROW = _PIX_IB.astype(np.intp)  # sin b row of each pixel


# ---- distance windows with extinction ----
# ---- distance windows with extinction ----
WINDOW_Y_STEP = 0.02  # mag: grid of (apparent - absolute magnitude) of the window tables
WINDOW_LD_STEP = 0.001  # dex: distance grid the windows are solved on
WINDOW_PAD = 1e-3  # dex added on both sides; covers the tables' linear interpolation (< 1e-5 dex)
_M_ABS_RANGE = (-15.0, 30.0)  # absolute magnitudes the tables cover (stars span about -9 to 20)


@dataclass
class WindowTables:
    """Distance window of a star per sky-pixel row, with the row's extinction range folded in.

    Along a line of sight the apparent magnitude M + mu(d) + A(n, d) grows with d, and the dust
    column A falls with |sin b| (a plane-parallel exponential layer), so inside a pixel row
    (fixed sin b band) a star of absolute magnitude M can be visible only between ``near`` (the
    bright limit reached through the row's most extincted direction) and ``far`` (the faint limit
    through its least extincted one).  Tabulated as log10 d (pc) against y = m_limit - M on a
    0.02-mag grid; :meth:`lookup` interpolates linearly and pads by :data:`WINDOW_PAD`.
    """

    y0: float
    near: np.ndarray  # (NB, NY) float32
    far: np.ndarray  # (NB, NY) float32

    @classmethod
    def build(cls, survey: Survey) -> "WindowTables":
        ratio = galaxy.EXTINCTION_RATIO[survey.band]
        y0 = survey.mag_bright - _M_ABS_RANGE[1]
        ny = int(np.ceil((survey.mag_faint - _M_ABS_RANGE[0] - y0) / WINDOW_Y_STEP)) + 2
        y = y0 + WINDOW_Y_STEP * np.arange(ny)
        ld = np.arange(LOG_D_MIN - 6.0, LOG_D_MAX + WINDOW_LD_STEP / 2, WINDOW_LD_STEP)
        d = 10.0**ld
        lower, upper = -1.0 + DS * np.arange(NB), -1.0 + DS * np.arange(1, NB + 1)  # each row's sin b range
        s_hi = np.maximum(np.abs(lower), np.abs(upper))
        s_lo = np.where((lower < 0) & (upper > 0), 0.0, np.minimum(np.abs(lower), np.abs(upper)))
        near = np.empty((NB, ny), dtype=F32)
        far = np.empty((NB, ny), dtype=F32)
        for ib in range(NB):
            for out, sin_b in ((near, s_lo[ib]), (far, s_hi[ib])):
                x = 5.0 * ld - 5.0 + ratio * galaxy.extinction_v(d, np.full_like(d, sin_b))
                out[ib] = np.interp(y, x, ld, left=ld[0], right=LOG_D_MAX)
        return cls(float(y0), near, far)

    def lookup(self, table: np.ndarray, row, y):
        """log10 distance from ``table`` (``near`` or ``far``) at pixel row(s) ``row`` and y = m - M."""
        ny = table.shape[1]
        fy = np.clip((y - np.float32(self.y0)) * np.float32(1.0 / WINDOW_Y_STEP), 0.0, ny - 1.001)
        k = fy.astype(np.intp)
        t = fy - k
        flat = table.ravel()
        i = row * ny + k
        lo = flat.take(i)
        return lo + t * (flat.take(i + 1) - lo)

    def window(self, survey: Survey, row, M):
        """(lo, hi) log10 distance (pc) outside which a star of absolute magnitude M is never seen."""
        lo = self.lookup(self.near, row, survey.mag_bright - M) - np.float32(WINDOW_PAD)
        hi = self.lookup(self.far, row, survey.mag_faint - M) + np.float32(WINDOW_PAD)
        return np.minimum(lo, LOG_D_MAX), np.minimum(hi, LOG_D_MAX)


@functools.cache
def row_major_tables() -> tuple[np.ndarray, np.ndarray]:
    """:func:`padded_tables` as (NPOP, NB, ND + 1, NL) arrays, for building the pixel tables."""
    Cp, Bp = padded_tables()
    shape = (NPOP, NL, NB, ND + 1)
    return tuple(np.ascontiguousarray(t.reshape(shape).transpose(0, 2, 3, 1)) for t in (Cp, Bp))


@functools.cache
def padded_tables() -> tuple[np.ndarray, np.ndarray]:
    """(C, B): the cumulative table and rho / 3, both (NPOP * NPIX, ND + 1), sharing flat indices."""
    rho, C = density_tables()
    B = np.zeros_like(C)
    B[:, :ND] = rho / 3.0
    return C, B


def bin_of(log_d):
    """Distance bin (index into EDGES) containing 10**log_d; bin 0 is [0, 1 pc]."""
    j = np.floor((log_d - LOG_D_MIN) * (1.0 / DLOG_D)).astype(np.intp) + 1
    return np.clip(j, 0, ND - 1)
