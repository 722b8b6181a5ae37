"""Vectorised sampler of the stars one survey observes.

A survey sees star s at direction n and distance d with probability density proportional to

    phi(s) * S_survey(s) * F_survey(n) * rho_pop(x(n, d)) * d^2 * [m_lo <= M(s) + mu(d) + A(n, d) <= m_hi]

(phi: the population model's natural distribution of stars, S: target-type selection, F:
footprint, rho: density law).  Sampling it forward (draw a Galaxy, then select) wastes almost
every draw, so it is sampled exactly, by rejection, in two stages against tabulated proposals:

1. Stars.  The marginal weight of a star is G(M) = sum over sky pixels of F * integral of
   rho d^2 over the distance window its magnitude limits allow (extinction-free).  Stars are
   drawn from cells (population x age bin x {main sequence, giant} x mass/evolution bin) in
   proportion to an upper bound of phi * S * G on the cell, then accepted with probability
   (phi S G) / bound.
2. Place.  Given the star, a sky pixel is drawn in proportion to F * (distance integral) for the
   star's magnitude rounded to a 0.2-mag grid, a direction uniformly inside the pixel, then a
   distance from rho d^2 inside the star's own window by inverse CDF; a rejection step corrects
   the magnitude rounding and the footprint inside the pixel, and a last one removes the stars
   that the exact extinction of their direction pushes out of the magnitude limits.  The
   distance windows (:class:`WindowTables`) already include extinction: within a pixel row (a
   band of sin b) the dust column lies between that of its most and least extincted
   directions, so the window runs from the bright limit through the most dust to the faint
   limit through the least.  Only stars in that sliver are rejected (a few per cent, where an
   extinction-free window loses up to half of Gaia's placements).

G(M) and every window integral use the same windows, so the proposals stay proportional to the
target; the acceptance ratios exceed 1 (the bounds are set from pilot runs) only on a probability
mass below 1e-4 per stage, measured in ``tests/simulator/test_sampler.py``, which also checks the
placement rate and distribution against windows solved by bisection on the exact extinction law.

The density law is tabulated on 180 x 90 equal-area sky pixels (2 deg in l, 1/45 in sin b) and
101 distance bins (1 pc to 100 kpc, 0.05 dex): within a pixel and bin the density is constant,
which is the model's only approximation beyond the physics itself.

Speed (``scripts/bench_simulator.py``: 1.7-1.8M stars/s on 2 cores): the per-star arithmetic
runs in float32, whose exp/log/sin/cos are vectorised (SIMD) in numpy where the float64 ones are
not -- about 10x cheaper -- while the cumulative distance tables and their inverse stay float64.
Discrete draws (cells, sky pixels) use guide tables (O(1) expected per draw) instead of binary
searches, main sequence and giant proposals are drawn in two contiguous blocks (each branch of the
stellar model is evaluated on its own stars only; the survivors are shuffled back into random
order), and the columns are gathered once, for the stars that survive every stage.  Batches are
sized from each survey's measured acceptance, so few proposals are drawn in vain.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from . import galaxy, stars
from .surveys import SURVEYS, Survey, standard_normal

# ---- grids ----
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
NAGE, NJ = 8, 32  # stage-1 cells per population: age bins x (MS, giant) x bins
PILOT_PER_CELL = 160
BOUND_SAFETY = 1.2
PLACE_BOUND = 1.15


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


F32 = np.float32
_LN10 = float(np.log(10.0))
_INV_LN10 = 1.0 / _LN10


# ---- discrete sampling: guide tables ----
@dataclass
class GuideTable:
    """O(1)-expected inverse-CDF sampling of many discrete distributions (Chen & Asau 1974).

    ``cum[r]`` is row r's normalised cumulative distribution (float32, last entry exactly 1);
    ``guide[r, k]`` is the first index whose cumulative exceeds k / G.  A draw looks up the guide
    entry of its uniform and steps forwards while the cumulative is <= u; with G = K guide
    entries that is < 1 step on average.  The result equals ``searchsorted(cum[r], u, "right")``.
    Steps jump over runs of equal cumulatives (zero-probability entries, e.g. pixels outside a
    footprint) through ``nxt[r, i]``, the first index after i whose cumulative is larger.
    """

    cum: np.ndarray  # (R, K) float32
    guide: np.ndarray  # (R, G) int16 / int32
    q: np.ndarray  # (G,) float32 k / G, exactly as used to build ``guide``
    nxt: np.ndarray  # (R, K) int16 / int32: next index with a larger cumulative

    @classmethod
    def build(cls, cum: np.ndarray, n_guide: int | None = None) -> "GuideTable":
        cum = np.atleast_2d(np.asarray(cum, dtype=np.float64))
        R, K = cum.shape
        G = K if n_guide is None else n_guide
        c32 = cum.astype(np.float32)
        c32[:, -1] = 1.0
        q = np.arange(G, dtype=np.float32) / np.float32(G)
        itype = np.int16 if K < 2**15 else np.int32
        # guide[r, k] = #{i : cum[r, i] <= q[k]}, by counting: each entry lands at the first k with
        # q[k] >= cum (ceil(cum G), corrected for q's float32 rounding), then a running sum over k
        q_ext = np.append(q, np.float32(np.inf))
        first = np.clip(np.ceil(c32.astype(np.float64) * G), 0, G).astype(np.intp)
        for _ in range(2):
            first += q_ext.take(first) < c32
            first -= (first > 0) & (q_ext.take(np.maximum(first - 1, 0)) >= c32)
        counts = np.bincount((first + (G + 1) * np.arange(R)[:, None]).ravel(), minlength=R * (G + 1))
        guide = np.minimum(np.cumsum(counts.reshape(R, G + 1), axis=1)[:, :G], K - 1).astype(itype)
        # nxt[r, i]: 1 + the first p >= i with cum[p + 1] > cum[p] (a suffix minimum), else K - 1
        rise = np.where(c32[:, 1:] > c32[:, :-1], np.arange(1, K), K - 1)
        nxt = np.empty((R, K), dtype=itype)
        nxt[:, :-1] = np.minimum.accumulate(rise[:, ::-1], axis=1)[:, ::-1]
        nxt[:, -1] = K - 1
        return cls(c32, guide, q, nxt)

    def sample(self, u: np.ndarray, row: np.ndarray | int = 0, with_prob: bool = False):
        """Index drawn in row(s) ``row`` for float32 uniforms ``u`` in [0, 1).

        With ``with_prob``, also the probability with which that index was drawn: the float32
        difference of consecutive cumulatives, exact for uniforms on the 2^-24 grid.
        """
        R, K = self.cum.shape
        G = self.guide.shape[1]
        k = (u * np.float32(G)).astype(np.intp)
        np.minimum(k, G - 1, out=k)
        k -= self.q.take(k) > u  # u * G may round up to the next integer in float32
        if np.ndim(row) == 0:
            base = int(row) * K
            pos = self.guide[int(row)].take(k).astype(np.intp)
        else:
            base = row * K
            pos = self.guide.take(row * G + k).astype(np.intp)
        pos += base
        cum, nxt = self.cum.ravel(), self.nxt.ravel()
        act = np.flatnonzero(cum.take(pos) <= u)
        for _ in range(4):  # a few stragglers: step forwards, over equal cumulatives at once
            if not act.size:
                break
            p = nxt.take(pos.take(act)) + (base if np.ndim(base) == 0 else base.take(act))
            pos[act] = p
            act = act[cum.take(p) <= u.take(act)]
        if act.size:  # the rare long runs of tiny probabilities: bisect the rest of the row
            lo = pos.take(act)  # cum[lo] <= u < cum[row end] = 1
            hi = (base if np.ndim(base) == 0 else base.take(act)) + (K - 1)
            ua = u.take(act)
            for _ in range(int(np.ceil(np.log2(K))) + 1):
                mid = (lo + hi) >> 1
                above = cum.take(mid) > ua
                hi = np.where(above, mid, hi)
                lo = np.where(above, lo, mid)
            pos[act] = hi
        if not with_prob:
            return pos - base
        prob = cum.take(pos)
        first = pos == base
        prev = cum.take(np.maximum(pos - 1, 0))
        prev[first] = 0.0
        prob -= prev
        return pos - base, prob


# ---- per-pixel and per-cell constants ----
_PIX_IL, _PIX_IB = np.divmod(np.arange(NPIX), NB)
PIX_L0 = (_PIX_IL * DL).astype(F32)  # lower l edge of each pixel (rad)
PIX_S0 = (-1.0 + _PIX_IB * DS).astype(F32)  # lower sin b edge
PIX_ROW = _PIX_IB.astype(np.intp)  # sin b row of each pixel
NCELL = NPOP * NAGE * 2 * NJ


def _cell_fields(cell):
    pop, rest = np.divmod(cell, NAGE * 2 * NJ)
    age_bin, rest = np.divmod(rest, 2 * NJ)
    giant, j = np.divmod(rest, NJ)
    return pop, age_bin, giant.astype(bool), j


_POP_AGE = np.array([p.age_gyr for p in galaxy.POPULATIONS])
_POP_FEH = np.array([(p.feh_mean, p.feh_sigma) for p in galaxy.POPULATIONS])
_LOG_M_MIN, _LOG_M_UP = float(np.log10(stars.M_MIN)), float(np.log10(stars.M_UP))
_GIANT_DLM = 0.4 * np.log10(1.0 + stars.GIANT_FRACTION * np.arange(NJ + 1) / NJ)
_LOG_T_MS_SUN = float(np.log10(stars.T_MS_SUN_GYR))

_CELL = np.arange(NCELL)
_C_POP, _C_AGE_BIN, _C_GIANT, _C_J = _cell_fields(_CELL)
CELL_POP = _C_POP.astype(np.intp)
CELL_AGE_STEP = ((_POP_AGE[_C_POP, 1] - _POP_AGE[_C_POP, 0]) / NAGE).astype(F32)
CELL_AGE0 = (_POP_AGE[_C_POP, 0] + _C_AGE_BIN * CELL_AGE_STEP).astype(F32)
CELL_FEH_MEAN = _POP_FEH[_C_POP, 0].astype(F32)
CELL_FEH_SIGMA = _POP_FEH[_C_POP, 1].astype(F32)
CELL_J = _C_J.astype(F32)  # main-sequence mass bin, as a float
CELL_GDLM0 = _GIANT_DLM[_C_J].astype(F32)  # giant mass bin edges above the turn-off mass
CELL_GDLM1 = _GIANT_DLM[_C_J + 1].astype(F32)
GIANT_CELLS = np.flatnonzero(_C_GIANT)
MS_CELLS = np.flatnonzero(~_C_GIANT)


@dataclass
class SurveyTables:
    """Seed-independent sampling tables of one survey (built once per process)."""

    survey: Survey
    f_max: np.ndarray  # (NPIX,) footprint maximum in each pixel
    log_g: np.ndarray  # (NPOP, NM) log of the marginal weight G(M)
    pix: GuideTable  # rows pop * NM + M bin: sky-pixel distributions
    windows: WindowTables  # distance windows per pixel row
    log_g32: np.ndarray = None  # log_g.ravel() as float32
    # stage 1
    p_giant: float = 0.0  # probability that a proposal is in a giant cell
    ms_cells: GuideTable = None  # over MS_CELLS
    giant_cells: GuideTable = None  # over GIANT_CELLS
    log_bound: np.ndarray = None  # (NCELL,) float32 log of each cell's bound of h
    acceptance: float = 0.0  # fraction of stage-1 proposals that survive both stages


def _footprint_max(survey: Survey) -> np.ndarray:
    il, ib = np.divmod(np.arange(NPIX), NB)
    best = np.zeros(NPIX)
    for fl in (0.0, 0.25, 0.5, 0.75, 1.0):
        for fs in (0.0, 0.25, 0.5, 0.75, 1.0):
            l = (il + fl) * DL
            s = np.clip(-1.0 + (ib + fs) * DS, -1.0, 1.0)
            cb = np.sqrt(1.0 - s * s)
            sd = galaxy.sin_dec(cb * np.cos(l), cb * np.sin(l), s)
            best = np.maximum(best, survey.footprint(s, sd))
    return best


_LOCKS = {name: threading.Lock() for name in SURVEYS}  # one per survey: builds run in parallel
_TABLES: dict[str, SurveyTables] = {}


def survey_tables(survey: Survey) -> SurveyTables:
    """The (cached) sampling tables of one survey; independent of the user's seed."""
    with _LOCKS[survey.name]:
        t = _TABLES.get(survey.name)
        if t is None:
            t = _build_tables(survey)
            _TABLES[survey.name] = t
        return t


def build_tables(surveys, workers: int) -> None:
    """Build the tables of several surveys, ``workers`` at a time (numpy releases the GIL)."""
    _row_major_tables()  # shared by all surveys: once, before the threads
    missing = [s for s in surveys if s.name not in _TABLES]
    if len(missing) > 1 and workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(survey_tables, missing))
    else:
        for s in missing:
            survey_tables(s)


@functools.cache
def _row_major_tables() -> tuple[np.ndarray, np.ndarray]:
    """:func:`_padded_tables` as (NPOP, NB, ND + 1, NL) arrays, for building the pixel tables."""
    Cp, Bp = _padded_tables()
    shape = (NPOP, NL, NB, ND + 1)
    return tuple(np.ascontiguousarray(t.reshape(shape).transpose(0, 2, 3, 1)) for t in (Cp, Bp))


@functools.cache
def _padded_tables() -> tuple[np.ndarray, np.ndarray]:
    """(C, B): the cumulative table and rho / 3, both (NPOP * NPIX, ND + 1), sharing flat indices."""
    rho, C = density_tables()
    B = np.zeros_like(C)
    B[:, :ND] = rho / 3.0
    return C, B


def _bin_of(log_d):
    """Distance bin (index into EDGES) containing 10**log_d; bin 0 is [0, 1 pc]."""
    j = np.floor((log_d - LOG_D_MIN) * (1.0 / DLOG_D)).astype(np.intp) + 1
    return np.clip(j, 0, ND - 1)


def _build_tables(survey: Survey) -> SurveyTables:
    f_max = _footprint_max(survey)
    windows = WindowTables.build(survey)
    m_grid = (M_GRID_MIN + M_GRID_STEP * np.arange(NM)).astype(F32)
    ld_lo, ld_hi = windows.window(survey, np.arange(NB)[:, None], m_grid[None, :])  # (NB, NM)
    ld_lo, ld_hi = ld_lo.astype(np.float64), ld_hi.astype(np.float64)
    # every pixel's window weight: the same (row, M bin) window along each pixel's density row;
    # the tables are read as (pop, sin b row, distance bin, l) so that the l's of a row are contiguous
    Cr, Br = _row_major_tables()
    j_lo, j_hi = _bin_of(ld_lo), _bin_of(ld_hi)  # (NB, NM)
    x_lo = (10.0 ** (3.0 * ld_lo) - EDGES3.take(j_lo))[..., None]
    x_hi = (10.0 ** (3.0 * ld_hi) - EDGES3.take(j_hi))[..., None]
    ib = np.arange(NB)[:, None]
    cum_pix = np.empty((NPOP * NM, NPIX))
    log_g = np.empty((NPOP, NM))
    for k in range(NPOP):
        w = Cr[k][ib, j_hi] + Br[k][ib, j_hi] * x_hi - Cr[k][ib, j_lo] - Br[k][ib, j_lo] * x_lo  # (NB, NM, NL)
        w = w.transpose(1, 2, 0).reshape(NM, NPIX)  # pixel order il * NB + ib
        np.maximum(w, 0.0, out=w)
        w *= f_max
        cs = np.cumsum(w, axis=1)
        total = cs[:, -1:]
        log_g[k] = np.log(np.maximum(total[:, 0], 1e-300))
        with np.errstate(invalid="ignore", divide="ignore"):
            cum_pix[k * NM : (k + 1) * NM] = np.where(total > 0, cs / total, np.linspace(0, 1, NPIX))
    tables = SurveyTables(survey, f_max, log_g, GuideTable.build(cum_pix), windows)
    tables.log_g32 = log_g.ravel().astype(F32)
    _build_cells(tables)
    _measure_acceptance(tables)
    return tables


def interp_log_g(tables: SurveyTables, pop, M):
    """log G(M) for each star, linear in M on the 0.2-mag grid (clamped at the ends); and the grid coordinate."""
    fb = np.clip((M - M_GRID_MIN) * (1.0 / M_GRID_STEP), 0.0, NM - 1.0)
    b0 = np.minimum(fb.astype(np.intp), NM - 2)
    t = fb - b0
    lg = tables.log_g32 if M.dtype == np.float32 else tables.log_g.ravel()
    i0 = pop * NM + b0
    lo = lg.take(i0)
    return lo + (lg.take(i0 + 1) - lo) * t, fb


# ---- stage 1: stars ----
def draw_in_cells(rng: np.random.Generator, cell: np.ndarray, survey: Survey, n_ms: int | None = None) -> dict:
    """Draw one star in each given cell from the natural distribution restricted to it.

    Within a cell the age is uniform (population ages are uniform) and log10(mass) is uniform
    over the cell's mass range at that age; ``log_w`` is the natural log of the IMF density per
    log mass times that range (the cell's target density relative to its base measure).

    ``cell[:n_ms]`` must be main-sequence cells and ``cell[n_ms:]`` giant cells (default: they
    are sorted here, stably, which keeps the draws in ``cell``'s order only when it is sorted).
    Float32 throughout.
    """
    n = cell.size
    if n_ms is None:
        order = np.argsort(_C_GIANT[cell], kind="stable")
        cell = cell[order]
        n_ms = int(np.count_nonzero(~_C_GIANT[cell]))
    n_g = n - n_ms
    u = rng.random((2, n), dtype=F32)
    g = standard_normal(rng, 1, n + n_g)[0]
    pop = CELL_POP.take(cell)
    age = CELL_AGE0.take(cell) + u[0] * CELL_AGE_STEP.take(cell)
    l_age = stars.log10(age)
    feh = CELL_FEH_MEAN.take(cell) + CELL_FEH_SIGMA.take(cell) * g[:n]
    lm_to = np.minimum(0.4 * (_LOG_T_MS_SUN - l_age), _LOG_M_UP)
    ms, gi = slice(0, n_ms), slice(n_ms, n)
    lm_a = np.empty(n, dtype=F32)
    width = np.empty(n, dtype=F32)
    # main sequence: NJ equal bins in log mass between M_MIN and the turn-off
    span = lm_to[ms] - _LOG_M_MIN
    np.multiply(span, (1.0 / NJ), out=width[ms])
    lm_a[ms] = _LOG_M_MIN + width[ms] * CELL_J.take(cell[ms])
    # giants: NJ bins of the giant phase just above the turn-off mass
    c_g = cell[gi]
    lm_a[gi] = lm_to[gi] + CELL_GDLM0.take(c_g)
    lm_b = np.minimum(lm_to[gi] + CELL_GDLM1.take(c_g), _LOG_M_UP)
    np.maximum(lm_b - lm_a[gi], 0.0, out=width[gi])
    lm = lm_a + u[1] * width
    log_w = _LN10 * stars.imf_log_density(lm) + np.log(np.maximum(_LN10 * width, 1e-30))
    # age over main-sequence lifetime
    r = stars.exp10(l_age - _LOG_T_MS_SUN + 2.5 * lm)
    ll = np.empty(n, dtype=F32)
    lt = np.empty(n, dtype=F32)
    phase = np.zeros(n, dtype=np.int8)
    ll[ms], lt[ms] = stars.main_sequence(lm[ms], np.minimum(r[ms], 1.0), feh[ms])
    x = np.clip((r[gi] - 1.0) * (1.0 / stars.GIANT_FRACTION), 0.0, 1.0)
    ll[gi], lt[gi], phase[gi] = stars.giant_branch(lm[gi], x, feh[gi], g[n:])
    teff = stars.exp10(lt)
    logg = stars.log_g(lm, ll, lt)
    M = stars.absolute_magnitude(teff, ll, survey.band, log_teff=lt)
    return {
        "cell": cell, "pop": pop, "age": age, "feh": feh, "lm": lm, "teff": teff, "logg": logg,
        "logl": ll, "logt": lt, "phase": phase, "M": M, "log_w": log_w,
    }


def _log_h(tables: SurveyTables, s: dict):
    """(log of h without the target selection, target selection, log G, grid coordinate) of stars."""
    log_g, fb = interp_log_g(tables, s["pop"], s["M"])
    return s["log_w"] + log_g, tables.survey.targets(s["teff"], s["logg"]), log_g, fb


def _build_cells(tables: SurveyTables) -> None:
    """Stage-1 proposal: cells in proportion to a bound of h found by a pilot run (fixed seed)."""
    rng = np.random.default_rng(np.random.SeedSequence(20240601, spawn_key=(hash_name(tables.survey.name),)))
    cells = np.repeat(np.arange(NCELL), PILOT_PER_CELL)
    s = draw_in_cells(rng, cells, tables.survey)
    lh, target, _, _ = _log_h(tables, s)
    h = np.exp(lh.astype(np.float64)) * target
    hmax = np.zeros(NCELL)
    np.maximum.at(hmax, s["cell"], h)
    bound = BOUND_SAFETY * hmax
    with np.errstate(divide="ignore"):
        tables.log_bound = np.log(bound).astype(F32)
    prob = bound / NAGE  # each cell's base measure is 1/NAGE of its population
    p_ms, p_g = prob[MS_CELLS], prob[GIANT_CELLS]
    tables.p_giant = float(p_g.sum() / prob.sum())
    tables.ms_cells = GuideTable.build(np.cumsum(p_ms) / p_ms.sum(), 4 * MS_CELLS.size)
    tables.giant_cells = GuideTable.build(np.cumsum(p_g) / max(p_g.sum(), 1e-300), 4 * GIANT_CELLS.size)


PILOT_PROPOSALS = 131_072


def _measure_acceptance(tables: SurveyTables) -> None:
    """Overall acceptance of :func:`sample`, from a pilot run (fixed seed, ~0.4% relative error).

    Callers size their proposal batches with it, so that one round nearly always yields the
    stars asked for without drawing (and discarding) many more.
    """
    rng = np.random.default_rng(np.random.SeedSequence(20240602, spawn_key=(hash_name(tables.survey.name),)))
    tables.acceptance = max(sample(rng, tables, PILOT_PROPOSALS)["M"].size / PILOT_PROPOSALS, 1e-4)


def hash_name(name: str) -> int:
    """A stable small integer for a name (Python's hash() is salted per process)."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def draw_stars(rng: np.random.Generator, tables: SurveyTables, n: int) -> dict:
    """Stage 1: ``n`` proposals (main-sequence block, then giant block), all returned.

    ``keep`` (indices) marks those accepted, with their ``log_g`` and grid coordinate ``fb``
    (full length).  Columns are gathered later, only for the stars that survive every stage.
    """
    n_g = int(rng.binomial(n, tables.p_giant)) if n else 0
    n_ms = n - n_g
    u = rng.random((2, n), dtype=F32)
    cell = np.empty(n, dtype=np.intp)
    cell[:n_ms] = MS_CELLS.take(tables.ms_cells.sample(u[0, :n_ms]))
    cell[n_ms:] = GIANT_CELLS.take(tables.giant_cells.sample(u[0, n_ms:]))
    s = draw_in_cells(rng, cell, tables.survey, n_ms)
    lh, target, log_g, fb = _log_h(tables, s)
    lh -= tables.log_bound.take(cell)
    h = np.exp(lh, out=lh)
    h *= target
    s["keep"] = np.flatnonzero(u[1] < h)
    s["log_g"] = log_g
    s["fb"] = fb
    return s


# ---- stage 2: place ----
def _cum(C, B, flat, j, d3):
    """Integral of rho d^2 from 0 to d (d3 = d^3) at flat table index ``flat`` (bin ``j``)."""
    return C.take(flat) + B.take(flat) * (d3 - EDGES3.take(j))


def _propose_placement(rng: np.random.Generator, tables: SurveyTables, pop, M, fb, log_g) -> dict:
    """Stage-2 proposal for each star: a sky pixel, a direction inside it and the star's window.

    ``ratio`` is target / (PLACE_BOUND x proposal density) for the proposal: the pixel was drawn
    with probability ``q_pix`` (~ f_max w_tab / G for the star's 0.2-mag bin) and the direction
    uniformly inside it; the target weighs it by the footprint and the star's own window weight
    ``w_exact`` over G(M).  ``u`` carries the uniforms for the acceptance test and the distance.
    """
    Cp, Bp = _padded_tables()
    survey = tables.survey
    b_star = np.rint(fb).astype(np.intp)
    u = rng.random((5, M.size), dtype=F32)
    pix, q_pix = tables.pix.sample(u[0], pop * NM + b_star, with_prob=True)
    l = PIX_L0.take(pix) + u[1] * np.float32(DL)
    sinb = np.minimum(PIX_S0.take(pix) + u[2] * np.float32(DS), 1.0)
    cb = np.sqrt(np.maximum(1.0 - sinb * sinb, 0.0))
    nx, ny, nz = cb * np.cos(l), cb * np.sin(l), sinb
    foot = survey.footprint(sinb, galaxy.sin_dec(nx, ny, nz))
    ld_lo, ld_hi = tables.windows.window(survey, PIX_ROW.take(pix), M)
    j_lo, j_hi = _bin_of(ld_lo), _bin_of(ld_hi)
    base = (pop * NPIX + pix) * (ND + 1)
    c_lo = _cum(Cp, Bp, base + j_lo, j_lo, stars.exp10(3.0 * ld_lo))
    w_exact = _cum(Cp, Bp, base + j_hi, j_hi, stars.exp10(3.0 * ld_hi)) - c_lo
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = w_exact.astype(F32) * np.exp(-log_g) * foot / (q_pix * np.float32(PLACE_BOUND))
    ratio[~(w_exact > 0)] = 0.0
    return {"u": u, "l": l, "nx": nx, "ny": ny, "nz": nz, "ld_lo": ld_lo, "ld_hi": ld_hi,
            "j_lo": j_lo, "j_hi": j_hi, "base": base, "c_lo": c_lo, "w_exact": w_exact, "ratio": ratio}


def placement_ratio(rng: np.random.Generator, tables: SurveyTables, pop, M, fb, log_g) -> np.ndarray:
    """Stage-2 acceptance ratio of one proposal per star (above 1 only on a negligible mass)."""
    return _propose_placement(rng, tables, pop, M, fb, log_g)["ratio"]


def place_stars(rng: np.random.Generator, tables: SurveyTables, pop, M, fb, log_g) -> dict:
    """Stage 2: direction and distance for accepted stars (arrays of equal length, float32).

    Returns the placement of the stars that survive (``idx``: their indices in the inputs), as
    float32 columns ``l`` (rad), ``nx, ny, nz``, ``log_d``, ``d``, ``av``, ``mu``, ``mag``.
    """
    Cp, Bp = _padded_tables()
    survey = tables.survey
    p = _propose_placement(rng, tables, pop, M, fb, log_g)
    u, ld_lo, ld_hi, j_lo, c_lo, w_exact = (p[k] for k in ("u", "ld_lo", "ld_hi", "j_lo", "c_lo", "w_exact"))
    k_idx = np.flatnonzero(u[3] < p["ratio"])
    # distance by inverse CDF within the window, along the pixel's row
    base_k, jlo_k = p["base"].take(k_idx), j_lo.take(k_idx)
    c = c_lo.take(k_idx) + u[4].take(k_idx) * w_exact.take(k_idx)
    lo = jlo_k.copy()  # C[row, j_lo] <= c_lo <= c
    span = int(np.max(p["j_hi"].take(k_idx) - jlo_k, initial=0)) + 1
    step = 1 << int(np.ceil(np.log2(span + 1)))
    while step > 1:  # branch-free binary search: largest lo with C[row, lo] <= c
        step //= 2
        cand = np.minimum(lo + step, ND)
        lo = np.where(Cp.take(base_k + cand) <= c, cand, lo)
    np.minimum(lo, ND - 1, out=lo)
    f = base_k + lo
    d3 = EDGES3.take(lo) + (c - Cp.take(f)) / np.maximum(Bp.take(f), 1e-300)
    log_d = np.log(d3.astype(F32)) * np.float32(_INV_LN10 / 3.0)
    np.clip(log_d, ld_lo.take(k_idx), ld_hi.take(k_idx), out=log_d)
    # the exact extinction of the direction: drop the stars it pushes out of the magnitude limits
    nz_k = p["nz"].take(k_idx)
    d = stars.exp10(log_d)
    av = extinction_v32(d, nz_k)
    mu = 5.0 * log_d - 5.0
    mag = M.take(k_idx) + mu + np.float32(galaxy.EXTINCTION_RATIO[survey.band]) * av
    vis = np.flatnonzero((mag <= survey.mag_faint) & (mag >= survey.mag_bright))
    keep = k_idx.take(vis)
    return {
        "idx": keep, "l": p["l"].take(keep), "nx": p["nx"].take(keep), "ny": p["ny"].take(keep), "nz": nz_k.take(vis),
        "log_d": log_d.take(vis), "d": d.take(vis), "av": av.take(vis), "mu": mu.take(vis), "mag": mag.take(vis),
    }


def extinction_v32(d_pc: np.ndarray, sin_b: np.ndarray) -> np.ndarray:
    """:func:`galaxy.extinction_v` in float32 (1 - exp(-x) with its series below x = 1e-3)."""
    h = DUST_H32
    s = np.abs(sin_b)
    path = d_pc * s * (1.0 / galaxy.DUST_SCALE_HEIGHT_PC)
    with np.errstate(divide="ignore", invalid="ignore"):
        col = np.where(path < 1e-3, d_pc * (1.0 - 0.5 * path), (h / s) * (1.0 - np.exp(-path)))
    col *= np.float32(galaxy.DUST_AV_PER_PC)
    return col


DUST_H32 = np.float32(galaxy.DUST_SCALE_HEIGHT_PC)
_STAR_COLUMNS = ("pop", "age", "feh", "lm", "teff", "logg", "logl", "logt", "phase", "M")


def sample(rng: np.random.Generator, tables: SurveyTables, n: int) -> dict:
    """One round: ``n`` stage-1 proposals; the stars that survive both stages, in random order.

    Returns float32 columns (``pop`` intp, ``phase`` int8): the star's ``age, feh, lm, teff, logg,
    logl, logt, M`` and its placement ``l, nx, ny, nz, log_d, d, av, mu, mag``.
    """
    s = draw_stars(rng, tables, n)
    keep = s["keep"]
    p = place_stars(rng, tables, s["pop"].take(keep), s["M"].take(keep), s["fb"].take(keep),
                    s["log_g"].take(keep))
    perm = rng.permutation(p["idx"].size)  # the proposals came in MS / giant blocks
    src = keep.take(p.pop("idx").take(perm))
    out = {k: s[k].take(src) for k in _STAR_COLUMNS}
    out.update({k: v.take(perm) for k, v in p.items()})
    return out
