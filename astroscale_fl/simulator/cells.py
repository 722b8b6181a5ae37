"""Stage-1 cells of the sampler: population x age bin x {main sequence, giant} x mass bin.

Per-cell constants (flat arrays indexed by cell) and :func:`draw_in_cells`, which draws one star
from the natural distribution restricted to each given cell, in float32.
"""

from __future__ import annotations

import numpy as np

from . import galaxy, stars
from .grid import F32, NPOP
from .surveys import Survey, standard_normal

NAGE, NJ = 8, 32  # stage-1 cells per population: age bins x (MS, giant) x bins
NCELL = NPOP * NAGE * 2 * NJ
_LN10 = float(np.log(10.0))


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
