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
   distance windows (:class:`.grid.WindowTables`) already include extinction: within a pixel row (a
   band of sin b) the dust column lies between that of its most and least extincted
   directions, so the window runs from the bright limit through the most dust to the faint
   limit through the least.  Only stars in that sliver are rejected (a few per cent, where an
   extinction-free window loses up to half of Gaia's placements).

G(M) and every window integral use the same windows, so the proposals stay proportional to the
target; the acceptance ratios exceed 1 (the bounds are set from pilot runs) only on a probability
mass below 1e-4 per stage, measured in ``tests/simulator/test_sampler.py``, which also checks the
placement rate and distribution against windows solved by bisection on the exact extinction law.

The density law is tabulated on 180 x 90 equal-area sky pixels and 101 distance bins
(:mod:`.grid`): within a pixel and bin the density is constant, which is the model's only
approximation beyond the physics itself.  Stage-1 cells live in :mod:`.cells`, the guide tables
of the discrete draws in :mod:`.guide_table`.

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

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import galaxy, stars
from .cells import GIANT_CELLS, MS_CELLS, NAGE, NCELL, draw_in_cells
from .grid import (
    DL,
    DS,
    EDGES3,
    F32,
    M_GRID_MIN,
    M_GRID_STEP,
    NB,
    ND,
    NM,
    NPIX,
    NPOP,
    PIX_L0,
    PIX_ROW,
    PIX_S0,
    WindowTables,
    bin_of,
    padded_tables,
    row_major_tables,
)
from .guide_table import GuideTable
from .surveys import SURVEYS, Survey

PILOT_PER_CELL = 160
BOUND_SAFETY = 1.2
PLACE_BOUND = 1.15
_INV_LN10 = 1.0 / float(np.log(10.0))


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
    row_major_tables()  # shared by all surveys: once, before the threads
    missing = [s for s in surveys if s.name not in _TABLES]
    if len(missing) > 1 and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(survey_tables, missing))
    else:
        for s in missing:
            survey_tables(s)


def _build_tables(survey: Survey) -> SurveyTables:
    f_max = _footprint_max(survey)
    windows = WindowTables.build(survey)
    m_grid = (M_GRID_MIN + M_GRID_STEP * np.arange(NM)).astype(F32)
    ld_lo, ld_hi = windows.window(survey, np.arange(NB)[:, None], m_grid[None, :])  # (NB, NM)
    ld_lo, ld_hi = ld_lo.astype(np.float64), ld_hi.astype(np.float64)
    # every pixel's window weight: the same (row, M bin) window along each pixel's density row;
    # the tables are read as (pop, sin b row, distance bin, l) so that the l's of a row are contiguous
    Cr, Br = row_major_tables()
    j_lo, j_hi = bin_of(ld_lo), bin_of(ld_hi)  # (NB, NM)
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
    Cp, Bp = padded_tables()
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
    j_lo, j_hi = bin_of(ld_lo), bin_of(ld_hi)
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
    Cp, Bp = padded_tables()
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
