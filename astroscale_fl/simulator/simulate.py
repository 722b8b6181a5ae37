"""Public API of the survey simulator: :func:`simulate_catalog`, :func:`ceiling_r2`, :func:`write_parquet`."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path
from ..errors import ConfigError, DataError
from . import galaxy, sampler, stars
from .surveys import SURVEY_NAMES, Survey, get_survey, observe, standard_normal

#: The seven observed inputs, in this order.
INPUT_COLUMNS: list[str] = ["ra", "dec", "teff", "logg", "fe_h", "snr", "parallax"]
#: Units of the inputs.
INPUT_UNITS: dict[str, str] = {
    "ra": "deg (ICRS)",
    "dec": "deg (ICRS)",
    "teff": "K",
    "logg": "dex (cgs)",
    "fe_h": "dex",
    "snr": "dimensionless",
    "parallax": "mas",
}
#: The label: heliocentric line-of-sight velocity (as measured by the survey) over c.
TARGET = "z"
#: Truth columns (known to the simulator only; never model inputs).
TRUTH_COLUMNS: list[str] = [
    "population", "true_phase", "true_l", "true_b", "true_distance_pc", "true_parallax_mas",
    "true_teff", "true_logg", "true_fe_h", "true_mass_msun", "true_age_gyr", "true_mag",
    "true_gaia_g", "true_av", "true_vr_kms", "true_z", "expected_z",
]
#: Every column of :func:`simulate_catalog`'s frame, in order.
COLUMNS: list[str] = [*INPUT_COLUMNS, TARGET, "survey", *TRUTH_COLUMNS]

#: Default total size (like the seed data set) and the survey mix it is split into.
DEFAULT_SIZES: dict[str, int] = {name: get_survey(name).default_size for name in SURVEY_NAMES}
DEFAULT_N_STARS = sum(DEFAULT_SIZES.values())

#: Rows simulated per independent chunk (each with its own random stream).
CHUNK = 65_536


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def resolve_sizes(
    n_stars: int | None, surveys: Sequence[str] | None, sizes: Mapping[str, int] | None
) -> dict[str, int]:
    """Rows per survey.

    ``sizes`` alone gives the counts; with ``n_stars`` it gives the proportions, scaled so the
    counts add up to ``n_stars`` exactly (largest remainders).  Without ``sizes`` the default mix
    (apogee 7000, sdss 5000, rave 4000, gaia 3000) is used, restricted to ``surveys``.
    """
    if isinstance(surveys, str):
        surveys = [surveys]
    if sizes is not None:
        if not isinstance(sizes, Mapping):
            raise ConfigError(f"sizes must be a mapping survey -> count, got {type(sizes).__name__}")
        weights = {get_survey(k).name: _check_int(f"sizes[{k!r}]", v, 0) for k, v in sizes.items()}
        if surveys is not None:
            names = [get_survey(s).name for s in surveys]
            missing = [s for s in names if s not in weights]
            if missing:
                raise ConfigError(f"sizes has no entry for survey(s) {', '.join(missing)}")
            weights = {s: weights[s] for s in names}
    else:
        names = list(SURVEY_NAMES) if surveys is None else [get_survey(s).name for s in surveys]
        if len(set(names)) != len(names):
            raise ConfigError(f"surveys lists a survey twice: {names}")
        if not names:
            raise ConfigError("surveys is empty; expected at least one of " + ", ".join(SURVEY_NAMES))
        weights = {s: DEFAULT_SIZES[s] for s in names}
        if n_stars is None:
            return weights
    if n_stars is None:
        return weights
    n_stars = _check_int("n_stars", n_stars, 0)
    total = sum(weights.values())
    if total == 0:
        if n_stars == 0:
            return weights
        raise ConfigError("sizes are all zero; cannot scale them to n_stars")
    exact = {k: n_stars * v / total for k, v in weights.items()}
    counts = {k: int(np.floor(x)) for k, x in exact.items()}
    short = n_stars - sum(counts.values())
    for k in sorted(exact, key=lambda k: (counts[k] - exact[k], list(exact).index(k)))[:short]:
        counts[k] += 1
    return counts


#: Column dtypes: the inputs, the label and the velocity truth are float64 (computed in float32
#: km/s and divided by c in float64), the other truth columns float32, the categories int8 codes.
_F64_COLUMNS = {*INPUT_COLUMNS, TARGET, "true_vr_kms", "true_z", "expected_z"}
_INT8_COLUMNS = {"population", "true_phase"}


def _column_dtype(name: str):
    if name in _INT8_COLUMNS:
        return np.int8
    return np.float64 if name in _F64_COLUMNS else np.float32


def _simulate_chunk(seed: int, survey: Survey, chunk: int, n: int, out: dict[str, np.ndarray]) -> None:
    """Simulate ``n`` rows of one survey's chunk into the given (length-``n``) column slices."""
    rng = np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(sampler.hash_name(survey.name), chunk))
    )
    tables = sampler.survey_tables(survey)
    parts: list[dict] = []
    got = 0
    while got < n:
        # enough proposals that one round is short only about once in a thousand chunks
        want = (n - got) / tables.acceptance
        m = max(1024, int(want * 1.01 + 3.5 * np.sqrt(want)))
        p = sampler.sample(rng, tables, m)
        parts.append(p)
        got += p["M"].size
    if len(parts) == 1:
        s = {key: v[:n] for key, v in parts[0].items()}
    else:
        s = {key: np.concatenate([p[key] for p in parts])[:n] for key in parts[0]}
    _finish(rng, survey, s, out)


_VPHI = np.array([p.mean_vphi_kms for p in galaxy.POPULATIONS], dtype=np.float32)
_SIGMA = np.array([p.sigma_kms for p in galaxy.POPULATIONS], dtype=np.float32).T.copy()  # (3, NPOP)
_RAD2DEG = np.float32(180.0 / np.pi)
_A_G32 = galaxy._A_G.astype(np.float32)


def _radec32(nx, ny, nz):
    """(ra, dec) in degrees of Galactic unit vectors, float32 (arctan and arccos, which are SIMD)."""
    A = _A_G32
    ex = A[0, 0] * nx + A[1, 0] * ny + A[2, 0] * nz
    ey = A[0, 1] * nx + A[1, 1] * ny + A[2, 1] * nz
    ez = A[0, 2] * nx + A[1, 2] * ny + A[2, 2] * nz
    with np.errstate(divide="ignore", invalid="ignore"):
        ra = np.arctan(ey / ex)
    ra += np.where(ex < 0, np.float32(np.pi), np.where(ey < 0, np.float32(2 * np.pi), np.float32(0)))
    ra[np.isnan(ra)] = 0.0  # ex = ey = 0: a pole
    ra *= _RAD2DEG
    ra[ra >= 360.0] -= 360.0
    dec = np.float32(90.0) - np.arccos(np.clip(ez, -1.0, 1.0)) * _RAD2DEG
    return ra, dec


def _finish(rng: np.random.Generator, survey: Survey, s: dict, out: dict[str, np.ndarray]) -> None:
    """Kinematics, the label and the survey's measurements for placed stars, written into ``out``.

    Float32 arithmetic; v_r is in km/s (resolution ~3e-5 km/s) and divided by c in float64.
    """
    pop, d = s["pop"], s["d"]
    nx, ny, nz = s["nx"], s["ny"], s["nz"]
    n = d.size
    g = standard_normal(rng, 9, n)  # 3 velocity components, 6 measurement errors
    # Galactocentric x, y (pc); v_r = v_R (e_R . n) + v_phi (e_phi . n) + v_z n_z - v_sun . n
    x = d * nx - galaxy.R0_PC
    y = d * ny
    inv_r = 1.0 / np.maximum(np.sqrt(x * x + y * y), 1e-6)
    e_r = (x * nx + y * ny) * inv_r
    e_phi = (y * nx - x * ny) * inv_r
    vs = galaxy.sun_velocity()
    v_sun = vs[0] * nx + vs[1] * ny + vs[2] * nz
    vphi = _VPHI.take(pop)
    evr = vphi * e_phi - v_sun
    vr = _SIGMA[0].take(pop) * g[0] * e_r + _SIGMA[1].take(pop) * g[1] * e_phi + _SIGMA[2].take(pop) * g[2] * nz
    vr += evr
    # measurements
    logt = s["logt"]
    g_abs = s["M"] if survey.band == "G" else stars.absolute_magnitude(s["teff"], s["logl"], "G", log_teff=logt)
    g_mag = g_abs + s["mu"] + np.float32(galaxy.EXTINCTION_RATIO["G"]) * s["av"]
    plx = 1000.0 / d
    snr, teff_o, logg_o, feh_o, plx_o, vr_o = observe(
        rng, survey, s["mag"], g_mag, s["teff"], s["logg"], s["feh"], plx, vr, g=g[3:]
    )
    ra, dec = _radec32(nx, ny, nz)
    cols = {
        "ra": ra, "dec": dec, "teff": teff_o, "logg": logg_o, "fe_h": feh_o, "snr": snr, "parallax": plx_o,
        "population": pop, "true_phase": s["phase"],
        "true_l": s["l"] * _RAD2DEG, "true_b": np.float32(90.0) - np.arccos(np.clip(nz, -1.0, 1.0)) * _RAD2DEG,
        "true_distance_pc": d, "true_parallax_mas": plx, "true_teff": s["teff"], "true_logg": s["logg"],
        "true_fe_h": s["feh"], "true_mass_msun": stars.exp10(s["lm"]), "true_age_gyr": s["age"],
        "true_mag": s["mag"], "true_gaia_g": g_mag, "true_av": s["av"], "true_vr_kms": vr,
    }
    for k, v in cols.items():
        out[k][...] = v
    inv_c = 1.0 / galaxy.C_KMS
    np.multiply(vr_o, inv_c, out=out["z"], dtype=np.float64)
    np.multiply(out["true_vr_kms"], inv_c, out=out["true_z"])
    np.multiply(evr, inv_c, out=out["expected_z"], dtype=np.float64)


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def prepare_tables(surveys: Sequence[str]) -> float:
    """Build the seed-independent sampling tables of ``surveys`` that this process lacks (a few
    seconds each, on all cores; kept for the process's later catalogs); returns the seconds it took."""
    started = time.perf_counter()
    sampler.build_tables([get_survey(name) for name in surveys], _workers())
    return time.perf_counter() - started


def simulate_catalog(
    n_stars: int | None = None,
    seed: int = 0,
    surveys: Sequence[str] | None = None,
    sizes: Mapping[str, int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """Simulate the stars four spectroscopic surveys would observe in a model Milky Way.

    Parameters
    ----------
    n_stars
        Total rows; ``None`` means the default mix (19,000 stars: apogee 7000, sdss 5000,
        rave 4000, gaia 3000), or ``sizes`` exactly.  With ``sizes`` it rescales them.
    seed
        Non-negative integer; the same seed (and sizes) give an identical frame.  Each survey
        and each 65,536-row chunk has its own random stream, so adding a survey does not change
        the others.
    surveys
        Subset of ``apogee, sdss, rave, gaia`` (default: all four, or the keys of ``sizes``).
    sizes
        Rows (or, with ``n_stars``, proportions) per survey.
    progress
        Called with the number of rows just finished after each chunk (from worker threads).

    Returns
    -------
    A frame with :data:`INPUT_COLUMNS` (degrees, K, dex cgs, dex, S/N, mas), the label ``z``
    (measured heliocentric v_r / c), ``survey`` and the truth columns :data:`TRUTH_COLUMNS`
    (``expected_z`` is E[v_r | position, distance, population] / c; see :func:`ceiling_r2`).
    Rows are grouped by survey in the order given.
    """
    seed = _check_int("seed", seed, 0)
    counts = resolve_sizes(n_stars, surveys, sizes)
    total = sum(counts.values())
    cols = {k: np.empty(total, dtype=_column_dtype(k)) for k in COLUMNS if k != "survey"}
    survey_codes = np.empty(total, dtype=np.int8)
    jobs = []
    offset = 0
    prepare_tables([name for name, n in counts.items() if n])  # before the chunks start
    for name, n in counts.items():
        survey = get_survey(name)
        survey_codes[offset : offset + n] = SURVEY_NAMES.index(name)
        for c, start in enumerate(range(0, n, CHUNK)):
            m = min(CHUNK, n - start)
            jobs.append((survey, c, m, {k: v[offset + start : offset + start + m] for k, v in cols.items()}))
        offset += n

    def run(job) -> None:
        _simulate_chunk(seed, *job)
        if progress is not None:
            progress(job[2])

    if len(jobs) > 1 and _workers() > 1:
        jobs.sort(key=lambda job: -job[2])  # largest first: the threads finish together
        with ThreadPoolExecutor(max_workers=_workers()) as pool:
            list(pool.map(run, jobs))
    else:
        for job in jobs:
            run(job)
    return _to_frame(cols, survey_codes)


def _to_frame(cols: dict[str, np.ndarray], survey_codes: np.ndarray) -> pd.DataFrame:
    """The frame, in :data:`COLUMNS` order, without copying the columns."""
    data = {}
    for k in COLUMNS:
        if k == "survey":
            data[k] = pd.Categorical.from_codes(survey_codes, categories=list(SURVEY_NAMES))
        elif k == "population":
            data[k] = pd.Categorical.from_codes(cols[k], categories=list(galaxy.POPULATION_NAMES))
        elif k == "true_phase":
            data[k] = pd.Categorical.from_codes(cols[k], categories=list(stars.PHASE_NAMES))
        else:
            data[k] = cols[k]
    return pd.DataFrame(data, index=pd.RangeIndex(survey_codes.size), copy=False)


def ceiling_r2(df: pd.DataFrame) -> float:
    """R^2 of ``expected_z`` (the simulator's own E[z | position, distance, population]) against ``z``.

    No model of the observed inputs can beat it in expectation: the inputs are noisy functions of
    the position, distance and star, and the rest of z is the star's random peculiar velocity and
    the survey's velocity error.
    """
    for col in (TARGET, "expected_z"):
        if col not in df.columns:
            raise DataError(f"ceiling_r2 needs column {col!r}; the frame has {list(df.columns)}")
    z = np.asarray(df[TARGET], dtype=float)
    ez = np.asarray(df["expected_z"], dtype=float)
    if z.size < 2:
        raise DataError(f"ceiling_r2 needs at least 2 rows, got {z.size}")
    ss_tot = float(np.sum((z - z.mean()) ** 2))
    if ss_tot == 0.0:
        raise DataError("ceiling_r2: z is constant; R^2 is undefined")
    return 1.0 - float(np.sum((z - ez) ** 2)) / ss_tot


def write_parquet(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a simulated frame to Parquet atomically, with the units in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[b"astroscale_fl.simulator"] = json.dumps(
        {"inputs": INPUT_COLUMNS, "units": INPUT_UNITS, "target": TARGET, "c_kms": galaxy.C_KMS}
    ).encode()
    table = table.replace_schema_metadata(meta)
    final = Path(path)
    with atomic_path(final) as tmp:
        pq.write_table(table, tmp)
    return final
