"""The sampler draws exactly from its target density: checks against independent computations.

The target of the placement stage, for a star of absolute magnitude M, is

    F(n) * rho(n, d) * d^2 * [m_bright <= M + mu(d) + A(n, d) <= m_faint]

over directions n and distances d.  The references here solve the visibility window of each
direction by bisection on the exact extinction law (no window tables, no rejection steps) and
integrate the tabulated density over it, stratified over every sky pixel.
"""

from __future__ import annotations

import numpy as np
import pytest

from astroscale_fl.simulator import cells, galaxy, grid
from astroscale_fl.simulator import sampler as S
from astroscale_fl.simulator.guide_table import GuideTable
from astroscale_fl.simulator.surveys import SURVEYS

DIRS_PER_PIXEL = 6


def _solve_log_d(M, sin_b, ratio, m_limit):
    """log10 d (pc) where M + 5 log d - 5 + ratio A_V(d, sin b) = m_limit, by bisection."""
    lo = np.full(sin_b.shape, -6.0)
    hi = np.full(sin_b.shape, grid.LOG_D_MAX)
    beyond = M + 5.0 * hi - 5.0 + ratio * galaxy.extinction_v(10.0**hi, sin_b) <= m_limit
    for _ in range(45):
        mid = 0.5 * (lo + hi)
        bright = M + 5.0 * mid - 5.0 + ratio * galaxy.extinction_v(10.0**mid, sin_b) < m_limit
        lo, hi = np.where(bright, mid, lo), np.where(bright, hi, mid)
    return np.where(beyond, grid.LOG_D_MAX, 0.5 * (lo + hi))


def _cumulative(row, d):
    """Integral of the tabulated rho d^2 from 0 to d along density-table row(s) ``row``."""
    rho, C = grid.density_tables()
    d = np.minimum(d, grid.D_MAX)
    j = np.clip(np.searchsorted(grid.EDGES, d, side="right") - 1, 0, grid.ND - 1)
    return C[row, j] + rho[row, j] * (d**3 - grid.EDGES[j] ** 3) / 3.0


def _reference(survey, pop, M, rng):
    """Directions stratified over the pixels, their footprint weights and exact visible windows."""
    pix = np.repeat(np.arange(grid.NPIX), DIRS_PER_PIXEL)
    u = rng.random((2, pix.size))
    l = grid.PIX_L0[pix] + u[0] * grid.DL
    sin_b = np.minimum(grid.PIX_S0[pix] + u[1] * grid.DS, 1.0)
    cos_b = np.sqrt(1.0 - sin_b**2)
    nx, ny = cos_b * np.cos(l), cos_b * np.sin(l)
    foot = survey.footprint(sin_b, galaxy.sin_dec(nx, ny, sin_b))
    ratio = galaxy.EXTINCTION_RATIO[survey.band]
    d_near = 10.0 ** _solve_log_d(M, sin_b, ratio, survey.mag_bright)
    d_far = 10.0 ** _solve_log_d(M, sin_b, ratio, survey.mag_faint)
    row = pop * grid.NPIX + pix
    c_near = _cumulative(row, d_near)
    weight = foot * np.maximum(_cumulative(row, d_far) - c_near, 0.0)
    return {"row": row, "sin_b": sin_b, "foot": foot, "d_near": d_near, "d_far": d_far,
            "c_near": c_near, "weight": weight}


@pytest.mark.parametrize(
    "survey_name, pop, M",
    [("gaia", 0, 4.73), ("rave", 1, 0.61), ("apogee", 0, -1.27), ("sdss", 2, 4.05)],
)
def test_placement_matches_the_exact_target(survey_name, pop, M):
    """Rate and distribution of placed stars equal the exactly integrated target density."""
    survey = SURVEYS[survey_name]
    tables = S.survey_tables(survey)
    rng = np.random.default_rng(11)
    n = 300_000
    Ms = np.full(n, M, dtype=np.float32)
    pops = np.full(n, pop, dtype=np.intp)
    log_g, fb = S.interp_log_g(tables, pops, Ms)
    placed = S.place_stars(rng, tables, pops, Ms, fb, log_g)
    rate = placed["idx"].size / n

    ref = _reference(survey, pop, M, np.random.default_rng(12))
    total = ref["weight"].sum()
    # each pixel's directions average its weight; the proposal normalises by G(M) and the bound
    expected_rate = total / DIRS_PER_PIXEL * np.exp(-float(log_g[0])) / S.PLACE_BOUND
    assert rate == pytest.approx(expected_rate, rel=0.005)

    # distance distribution: P(d < D) at the sample's quartiles
    for D in np.quantile(placed["d"], [0.25, 0.5, 0.75]):
        inside = np.clip(ref["d_far"], None, D)
        part = ref["foot"] * np.maximum(_cumulative(ref["row"], inside) - ref["c_near"], 0.0)
        part[inside <= ref["d_near"]] = 0.0
        assert (placed["d"] < D).mean() == pytest.approx(part.sum() / total, abs=0.01)
    # latitude distribution: P(|sin b| < s) at the sample's quartiles
    for s in np.quantile(np.abs(placed["nz"]), [0.25, 0.5, 0.75]):
        frac = ref["weight"][np.abs(ref["sin_b"]) < s].sum() / total
        assert (np.abs(placed["nz"]) < s).mean() == pytest.approx(frac, abs=0.01)
    # every placed star is inside the survey's magnitude limits
    assert placed["mag"].min() >= survey.mag_bright and placed["mag"].max() <= survey.mag_faint


@pytest.mark.parametrize("survey_name", list(SURVEYS))
def test_window_tables_contain_the_exact_windows(survey_name):
    """The tabulated window of a pixel row contains each direction's exact one, and little more."""
    survey = SURVEYS[survey_name]
    windows = S.survey_tables(survey).windows
    rng = np.random.default_rng(3)
    n = 40_000
    row = rng.integers(0, grid.NB, n)
    sin_b = -1.0 + (row + rng.random(n)) * grid.DS
    M = rng.uniform(-8.0, 15.0, n)
    lo, hi = windows.window(survey, row, M.astype(np.float32))
    ratio = galaxy.EXTINCTION_RATIO[survey.band]
    near = _solve_log_d(M, sin_b, ratio, survey.mag_bright)
    far = _solve_log_d(M, sin_b, ratio, survey.mag_faint)
    assert np.all(lo <= np.minimum(near, grid.LOG_D_MAX) + 1e-6)
    assert np.all(hi >= np.minimum(far, grid.LOG_D_MAX) - 1e-6)
    # where the dust column barely changes across a row, the far edge is the padding away
    top = np.abs(sin_b) > 0.9
    assert np.max(hi[top] - np.minimum(far[top], grid.LOG_D_MAX)) < 3 * grid.WINDOW_PAD


@pytest.mark.parametrize("survey_name", list(SURVEYS))
def test_rejection_bounds_hold(survey_name):
    """Stage-1 and stage-2 acceptance ratios exceed 1 on a negligible probability mass (< 2e-4)."""
    survey = SURVEYS[survey_name]
    t = S.survey_tables(survey)
    rng = np.random.default_rng(5)
    n = 300_000
    n_g = int(rng.binomial(n, t.p_giant))
    u = rng.random(n, dtype=np.float32)
    cell = np.concatenate([cells.MS_CELLS.take(t.ms_cells.sample(u[: n - n_g])),
                           cells.GIANT_CELLS.take(t.giant_cells.sample(u[n - n_g:]))])
    s = cells.draw_in_cells(rng, cell, survey, n - n_g)
    lh, target, log_g, fb = S._log_h(t, s)
    ratio1 = np.exp((lh - t.log_bound.take(cell)).astype(np.float64)) * target
    assert np.maximum(ratio1 - 1.0, 0.0).sum() / ratio1.sum() < 2e-4

    keep = np.flatnonzero(rng.random(n) < ratio1)
    ratio2 = S.placement_ratio(rng, t, s["pop"][keep], s["M"][keep], fb[keep], log_g[keep])
    assert np.maximum(ratio2 - 1.0, 0.0).sum() / ratio2.sum() < 2e-4


def test_guide_table_equals_searchsorted():
    """Guide-table draws are exactly ``searchsorted(cum, u, 'right')``, zero-probability runs included."""
    rng = np.random.default_rng(0)
    for K, G in ((300, 300), (300, 1200), (1000, 64)):
        p = rng.random((40, K))
        p[p < 0.5] = 0.0
        p[:, :20] = 0.0
        p[3] = 0.0
        p[3, -1] = 1.0
        p[4, K // 2] = 1e-9
        cum = np.cumsum(p, axis=1)
        cum /= cum[:, -1:]
        table = GuideTable.build(cum, G)
        u = rng.random(50_000, dtype=np.float32)
        rows = rng.integers(0, 40, u.size)
        got, prob = table.sample(u, rows, with_prob=True)
        want = np.array([np.searchsorted(table.cum[r], x, side="right") for r, x in zip(rows, u)])
        np.testing.assert_array_equal(got, want)
        prev = np.where(want > 0, table.cum[rows, np.maximum(want - 1, 0)], 0.0)
        np.testing.assert_array_equal(prob, table.cum[rows, want] - prev)
        assert np.all(prob > 0)
