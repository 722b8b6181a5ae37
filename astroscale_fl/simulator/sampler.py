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
   that extinction pushes past the faint limit.

The density law is tabulated on 180 x 90 equal-area sky pixels (2 deg in l, 1/45 in sin b) and
101 distance bins (1 pc to 100 kpc, 0.05 dex): within a pixel and bin the density is constant,
which is the model's only approximation beyond the physics itself.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from . import galaxy, stars
from .surveys import Survey

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


def cumulative_at(rho, C, row, log_d):
    """Integral of rho d^2 from 0 to d = 10**log_d along table row(s) ``row`` (C flattened)."""
    log_d = np.minimum(log_d, LOG_D_MAX)
    j = np.clip(np.floor((log_d - LOG_D_MIN) / DLOG_D) + 1.0, 0.0, ND - 1.0).astype(np.intp)
    j = np.where(log_d < LOG_D_MIN, 0, j)
    flat_r = row * ND + j
    flat_c = row * (ND + 1) + j
    return C.ravel()[flat_c] + rho.ravel()[flat_r] * (np.power(10.0, 3.0 * log_d) - EDGES3[j]) / 3.0


def _cumulative_scalar(rhoT, CT, sl: slice, log_d: float):
    """:func:`cumulative_at` for one distance and a slice of rows (transposed tables)."""
    log_d = min(log_d, LOG_D_MAX)
    j = 0 if log_d < LOG_D_MIN else int(min(np.floor((log_d - LOG_D_MIN) / DLOG_D) + 1, ND - 1))
    return CT[j, sl] + rhoT[j, sl] * ((10.0 ** (3.0 * log_d) - EDGES3[j]) / 3.0)


EDGES3 = EDGES**3


def log_window(M, survey: Survey):
    """Extinction-free window in log10 distance (pc) where absolute magnitude M is inside the survey."""
    return (survey.mag_bright - M + 5.0) / 5.0, (survey.mag_faint - M + 5.0) / 5.0


@dataclass
class SurveyTables:
    survey: Survey
    f_max: np.ndarray  # (NPIX,) footprint maximum in each pixel
    log_g: np.ndarray  # (NPOP, NM) log of the marginal weight G(M)
    cum_pix: np.ndarray  # (NPOP * NM, NPIX) float32 normalised cumulative pixel weights
    cell_prob_cum: np.ndarray  # stage-1 cumulative cell probabilities
    cell_bound: np.ndarray  # stage-1 per-cell bound of h


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


_LOCK = threading.Lock()
_TABLES: dict[str, SurveyTables] = {}


def survey_tables(survey: Survey) -> SurveyTables:
    """The (cached) sampling tables of one survey; independent of the user's seed."""
    with _LOCK:
        t = _TABLES.get(survey.name)
        if t is None:
            t = _build_tables(survey)
            _TABLES[survey.name] = t
        return t


def _build_tables(survey: Survey) -> SurveyTables:
    rho, C = density_tables()
    rhoT, CT = np.ascontiguousarray(rho.T), np.ascontiguousarray(C.T)
    f_max = _footprint_max(survey)
    m_grid = M_GRID_MIN + M_GRID_STEP * np.arange(NM)
    ld_lo, ld_hi = log_window(m_grid, survey)
    cum_pix = np.empty((NPOP * NM, NPIX), dtype=np.float32)
    log_g = np.empty((NPOP, NM))
    for k in range(NPOP):
        rows = slice(k * NPIX, (k + 1) * NPIX)
        for b in range(NM):
            w = _cumulative_scalar(rhoT, CT, rows, ld_hi[b]) - _cumulative_scalar(rhoT, CT, rows, ld_lo[b])
            cs = np.cumsum(f_max * np.maximum(w, 0.0))
            total = cs[-1]
            log_g[k, b] = np.log(max(total, 1e-300))
            cum_pix[k * NM + b] = cs / total if total > 0 else np.linspace(0, 1, NPIX)
    tables = SurveyTables(survey, f_max, log_g, cum_pix, np.empty(0), np.empty(0))
    _build_cells(tables)
    return tables


def interp_log_g(tables: SurveyTables, pop, M):
    """log G(M) for each star, linear in M on the 0.2-mag grid (clamped at the ends)."""
    fb = np.clip((M - M_GRID_MIN) / M_GRID_STEP, 0.0, NM - 1.0)
    b0 = np.minimum(fb.astype(np.intp), NM - 2)
    t = fb - b0
    lg = tables.log_g.ravel()
    i0 = pop * NM + b0
    return lg[i0] * (1.0 - t) + lg[i0 + 1] * t, fb


# ---- stage 1: stars ----
NCELL = NPOP * NAGE * 2 * NJ


def _cell_fields(cell):
    pop, rest = np.divmod(cell, NAGE * 2 * NJ)
    age_bin, rest = np.divmod(rest, 2 * NJ)
    giant, j = np.divmod(rest, NJ)
    return pop, age_bin, giant.astype(bool), j


_POP_AGE = np.array([p.age_gyr for p in galaxy.POPULATIONS])
_POP_FEH = np.array([(p.feh_mean, p.feh_sigma) for p in galaxy.POPULATIONS])
_LOG_M_MIN, _LOG_M_UP = np.log10(stars.M_MIN), np.log10(stars.M_UP)
_GIANT_DLM = 0.4 * np.log10(1.0 + stars.GIANT_FRACTION * np.arange(NJ + 1) / NJ)
_LN10 = np.log(10.0)


def draw_in_cells(rng: np.random.Generator, cell: np.ndarray, survey: Survey):
    """Draw one star in each given cell from the natural distribution restricted to it.

    Within a cell the age is uniform (population ages are uniform) and log10(mass) is uniform
    over the cell's mass range at that age; ``log_w`` is the natural log of the IMF density per
    log mass times that range (the cell's target density relative to its base measure).
    """
    n = cell.size
    pop, age_bin, giant, j = _cell_fields(cell)
    u = rng.random((2, n))
    lo, hi = _POP_AGE[pop, 0], _POP_AGE[pop, 1]
    age = lo + (age_bin + u[0]) * ((hi - lo) / NAGE)
    l_age = np.log10(age)
    feh = _POP_FEH[pop, 0] + _POP_FEH[pop, 1] * rng.standard_normal(n)
    lm_to = np.minimum(0.4 * (np.log10(stars.T_MS_SUN_GYR) - l_age), _LOG_M_UP)
    span = lm_to - _LOG_M_MIN
    lm_a = np.where(giant, lm_to + _GIANT_DLM[j], _LOG_M_MIN + span * (j / NJ))
    lm_b = np.where(giant, lm_to + _GIANT_DLM[j + 1], _LOG_M_MIN + span * ((j + 1) / NJ))
    lm_b = np.minimum(lm_b, _LOG_M_UP)
    width = np.maximum(lm_b - lm_a, 0.0)
    lm = lm_a + u[1] * width
    log_w = _LN10 * stars.imf_log_density(lm) + np.log(_LN10 * np.maximum(width, 1e-300))
    # age over main-sequence lifetime
    r = np.power(10.0, l_age - np.log10(stars.T_MS_SUN_GYR) + 2.5 * lm)
    ll = np.empty(n)
    lt = np.empty(n)
    phase = np.zeros(n, dtype=np.int8)
    ms = ~giant
    ll[ms], lt[ms] = stars.main_sequence(lm[ms], np.minimum(r[ms], 1.0), feh[ms])
    gi = np.flatnonzero(giant)
    x = np.clip((r[gi] - 1.0) / stars.GIANT_FRACTION, 0.0, 1.0 - 1e-9)
    ll[gi], lt[gi], phase[gi] = stars.giant_branch(lm[gi], x, feh[gi], rng.standard_normal(gi.size))
    teff = np.power(10.0, lt)
    logg = stars.log_g(lm, ll, lt)
    M = stars.absolute_magnitude(teff, ll, survey.band, log_teff=lt)
    return {
        "pop": pop, "age": age, "feh": feh, "lm": lm, "teff": teff, "logg": logg,
        "logl": ll, "logt": lt, "phase": phase, "M": M, "log_w": log_w,
    }


def _target_h(tables: SurveyTables, s: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    log_g, fb = interp_log_g(tables, s["pop"], s["M"])
    h = np.exp(s["log_w"] + log_g) * tables.survey.targets(s["teff"], s["logg"])
    return h, log_g, fb


def _build_cells(tables: SurveyTables) -> None:
    rng = np.random.default_rng(np.random.SeedSequence(20240601, spawn_key=(hash_name(tables.survey.name),)))
    cells = np.repeat(np.arange(NCELL), PILOT_PER_CELL)
    s = draw_in_cells(rng, cells, tables.survey)
    h, _, _ = _target_h(tables, s)
    hmax = h.reshape(NCELL, PILOT_PER_CELL).max(axis=1)
    bound = BOUND_SAFETY * hmax
    prob = bound / NAGE  # each cell's base measure is 1/NAGE of its population
    cum = np.cumsum(prob)
    tables.cell_prob_cum = cum / cum[-1]
    tables.cell_bound = bound


def hash_name(name: str) -> int:
    """A stable small integer for a name (Python's hash() is salted per process)."""
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def draw_stars(rng: np.random.Generator, tables: SurveyTables, n: int) -> dict:
    """Stage 1: ``n`` proposals, of which those accepted are returned."""
    cell = np.searchsorted(tables.cell_prob_cum, rng.random(n), side="right")
    cell = np.minimum(cell, NCELL - 1)
    s = draw_in_cells(rng, cell, tables.survey)
    h, log_g, fb = _target_h(tables, s)
    bound = tables.cell_bound[cell]
    keep = np.flatnonzero(rng.random(n) * bound < h)
    out = {k: v[keep] for k, v in s.items()}
    out["log_g"] = log_g[keep]
    out["fb"] = fb[keep]
    out["clipped"] = int(np.count_nonzero(h > bound))
    return out


# ---- stage 2: place ----
def place_stars(rng: np.random.Generator, tables: SurveyTables, s: dict) -> dict:
    """Stage 2: direction and distance for accepted stars; returns the stars that survive."""
    rho, C = density_tables()
    survey = tables.survey
    n = s["M"].size
    pop = s["pop"]
    b_star = np.clip(np.rint(s["fb"]).astype(np.intp), 0, NM - 1)
    row2 = pop * NM + b_star
    pix = np.empty(n, dtype=np.intp)
    u = rng.random((5, n))
    u0 = u[0].astype(np.float32)
    order = np.argsort(row2, kind="stable")
    sorted_rows = row2[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])
    ends = np.r_[starts[1:], n]
    cum_pix = tables.cum_pix
    for a, e in zip(starts.tolist(), ends.tolist()):
        idx = order[a:e]
        pix[idx] = np.searchsorted(cum_pix[sorted_rows[a]], u0[idx], side="right")
    np.minimum(pix, NPIX - 1, out=pix)
    il, ib = np.divmod(pix, NB)
    l = (il + u[1]) * DL
    sinb = np.clip(-1.0 + (ib + u[2]) * DS, -1.0, 1.0)
    cb = np.sqrt(1.0 - sinb * sinb)
    nx, ny, nz = cb * np.cos(l), cb * np.sin(l), sinb
    foot = survey.footprint(sinb, galaxy.sin_dec(nx, ny, nz))
    row = pop * NPIX + pix
    ld_lo, ld_hi = log_window(s["M"], survey)
    c_lo = cumulative_at(rho, C, row, ld_lo)
    c_hi = cumulative_at(rho, C, row, ld_hi)
    w_exact = c_hi - c_lo
    t_lo, t_hi = log_window(M_GRID_MIN + M_GRID_STEP * b_star, survey)
    w_tab = cumulative_at(rho, C, row, t_hi) - cumulative_at(rho, C, row, t_lo)
    lg_b = tables.log_g.ravel()[row2]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (w_exact / w_tab) * np.exp(lg_b - s["log_g"])
        accept_p = foot / tables.f_max[pix] * ratio * (1.0 / PLACE_BOUND)
    k_idx = np.flatnonzero((u[3] < accept_p) & (w_exact > 0))
    clipped = int(np.count_nonzero(ratio[k_idx] > PLACE_BOUND))
    # distance by inverse CDF within the window, along the pixel's row
    row_k = row[k_idx]
    c = c_lo[k_idx] + u[4, k_idx] * w_exact[k_idx]
    Cf = C.ravel()
    base = row_k * (ND + 1)
    lo = np.zeros(k_idx.size, dtype=np.intp)
    step = 1 << int(np.ceil(np.log2(ND + 1)))
    while step > 1:  # branch-free binary search: largest lo with C[row, lo] <= c
        step //= 2
        cand = np.minimum(lo + step, ND)
        lo = np.where(Cf[base + cand] <= c, cand, lo)
    lo = np.minimum(lo, ND - 1)
    r = rho.ravel()[row_k * ND + lo]
    d = np.cbrt(EDGES3[lo] + 3.0 * (c - Cf[base + lo]) / r)
    log_d = np.clip(np.log10(d), ld_lo[k_idx], ld_hi[k_idx])
    out = {k: v[k_idx] for k, v in s.items() if isinstance(v, np.ndarray)}
    out.update(nx=nx[k_idx], ny=ny[k_idx], nz=nz[k_idx], log_d=log_d)
    # extinction: drop stars pushed past the faint limit
    d = np.power(10.0, log_d)
    av = galaxy.extinction_v(d, out["nz"])
    mu = 5.0 * log_d - 5.0
    mag = out["M"] + mu + galaxy.EXTINCTION_RATIO[survey.band] * av
    vis = np.flatnonzero((mag <= survey.mag_faint) & (mag >= survey.mag_bright))
    out = {k: v[vis] for k, v in out.items()}
    out["d"] = d[vis]
    out["av"] = av[vis]
    out["mu"] = mu[vis]
    out["mag"] = mag[vis]
    out["clipped"] = clipped
    return out
