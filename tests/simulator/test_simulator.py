"""Fast tests of the survey simulator: API contract, determinism, and physics that must hold."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from astroscale_fl.errors import AstroScaleError, ConfigError
from astroscale_fl.simulator import (
    COLUMNS,
    INPUT_COLUMNS,
    INPUT_UNITS,
    TARGET,
    ceiling_r2,
    galaxy,
    resolve_sizes,
    simulate_catalog,
    stars,
    write_parquet,
)
from astroscale_fl.simulator.surveys import SURVEYS, parallax_sigma_mas

C = galaxy.C_KMS


@pytest.fixture(scope="module")
def cat() -> pd.DataFrame:
    """The default catalog (19,000 stars, seed 0)."""
    return simulate_catalog(seed=0)


@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    """A larger sample for statistical physics checks."""
    return simulate_catalog(seed=3, sizes={"apogee": 30_000, "gaia": 40_000})


# ---- API contract ----
def test_columns_units_and_target(cat):
    assert INPUT_COLUMNS == ["ra", "dec", "teff", "logg", "fe_h", "snr", "parallax"]
    assert list(INPUT_UNITS) == INPUT_COLUMNS
    assert INPUT_UNITS["teff"] == "K" and INPUT_UNITS["parallax"] == "mas"
    assert TARGET == "z"
    assert list(cat.columns) == COLUMNS
    assert list(cat.columns[:8]) == [*INPUT_COLUMNS, "z"]
    truth = [c for c in cat.columns if c not in (*INPUT_COLUMNS, "z", "survey")]
    assert all(c.startswith("true_") or c in ("population", "expected_z") for c in truth)
    for col in (*INPUT_COLUMNS, "z", "expected_z", "true_vr_kms"):
        assert cat[col].dtype == np.float64, col
        assert np.isfinite(cat[col]).all(), col


def test_default_sizes_and_ranges(cat):
    assert len(cat) == 19_000
    counts = cat["survey"].value_counts().to_dict()
    assert counts == {"apogee": 7000, "sdss": 5000, "rave": 4000, "gaia": 3000}
    assert cat["ra"].between(0, 360).all() and cat["dec"].between(-90, 90).all()
    assert cat["teff"].between(2000, 25000).all()
    assert cat["true_teff"].between(2500, 20000).all()
    assert cat["snr"].gt(0).all()
    assert cat["true_distance_pc"].between(1, 1e5 + 1).all()
    # |v_r| well below 1000 km/s: z is a Doppler shift of order 1e-4
    assert cat["z"].abs().max() < 1000 / C
    assert 1e-4 < cat["z"].std() < 1e-3
    assert set(cat["population"].unique()) == {"thin", "thick", "halo"}


def test_radec_matches_astropy(cat):
    astropy_coords = pytest.importorskip("astropy.coordinates")
    import astropy.units as u

    sub = cat.sample(300, random_state=0)
    c = astropy_coords.SkyCoord(ra=sub["ra"].values * u.deg, dec=sub["dec"].values * u.deg, frame="icrs")
    g = c.galactic
    dl = (g.l.deg - sub["true_l"].values + 180) % 360 - 180
    assert np.abs(dl * np.cos(np.radians(g.b.deg))).max() < 1e-3
    assert np.abs(g.b.deg - sub["true_b"].values).max() < 1e-3


def test_deterministic_for_a_seed():
    a = simulate_catalog(3000, seed=7)
    b = simulate_catalog(3000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    c = simulate_catalog(3000, seed=8)
    assert not np.allclose(a["z"].values, c["z"].values)


def test_same_catalog_on_any_number_of_threads(monkeypatch):
    """Chunks have their own random streams and rows: threads change the speed, not the stars."""
    from astroscale_fl.simulator import simulate as sim

    monkeypatch.setattr(sim, "CHUNK", 4096)  # small chunks: 9 of them (2-3 per survey) shared by the threads
    threaded = simulate_catalog(30_000, seed=4)
    monkeypatch.setattr(sim, "_workers", lambda: 1)
    pd.testing.assert_frame_equal(threaded, simulate_catalog(30_000, seed=4))


def test_survey_streams_are_independent():
    both = simulate_catalog(seed=5, sizes={"rave": 500, "gaia": 400})
    alone = simulate_catalog(seed=5, sizes={"gaia": 400})
    pd.testing.assert_frame_equal(
        both[both["survey"] == "gaia"].reset_index(drop=True), alone.reset_index(drop=True)
    )


def test_sizes_resolution_and_errors():
    assert resolve_sizes(None, None, None) == {"apogee": 7000, "sdss": 5000, "rave": 4000, "gaia": 3000}
    scaled = resolve_sizes(1001, None, None)
    assert sum(scaled.values()) == 1001 and scaled["apogee"] > scaled["gaia"]
    assert resolve_sizes(10, ["rave", "gaia"], None) == {"rave": 6, "gaia": 4}
    assert resolve_sizes(None, None, {"sdss": 5}) == {"sdss": 5}
    assert resolve_sizes(100, None, {"sdss": 1, "rave": 3}) == {"sdss": 25, "rave": 75}
    assert len(simulate_catalog(0)) == 0
    with pytest.raises(ConfigError, match="unknown survey 'lamost'"):
        simulate_catalog(10, surveys=["lamost"])
    with pytest.raises(ConfigError, match="seed"):
        simulate_catalog(10, seed=-1)
    with pytest.raises(AstroScaleError, match="n_stars"):
        simulate_catalog(-5)


# ---- the population model ----
def test_imf_cdf_inverse_and_slope():
    q = np.linspace(0.001, 0.999, 50)
    assert np.allclose(stars.imf_cdf(stars.imf_ppf(q)), q, atol=1e-9)
    m = stars.imf_ppf(np.random.default_rng(0).random(200_000))
    # Kroupa slope 2.3 above 0.5 Msun: N(1-2) / N(2-4) = 2^1.3 = 2.46
    ratio = np.count_nonzero((m > 1) & (m < 2)) / np.count_nonzero((m > 2) & (m < 4))
    assert 2.25 < ratio < 2.7
    # the sampler's density per log mass is the derivative of the CDF
    lm = np.linspace(-0.9, 0.8, 40)
    h = 1e-5
    num = (stars.imf_cdf(10 ** (lm + h)) - stars.imf_cdf(10 ** (lm - h))) / (2 * h)
    assert np.allclose(np.log(10) * 10 ** stars.imf_log_density(lm), num, rtol=1e-4)


def test_sun_and_giants_physical():
    teff, logg, logl, phase = stars.stellar_parameters(
        np.array([1.0]), np.array([4.6]), np.array([0.0]), np.array([stars.MS]), np.array([0.0]), np.array([0.0])
    )
    assert abs(teff[0] - 5772) < 150 and abs(logg[0] - 4.44) < 0.1 and abs(logl[0]) < 0.1
    mv = stars.absolute_magnitudes(teff, logl)["V"]
    assert abs(mv[0] - 4.83) < 0.3
    x = np.linspace(0.4, 0.99, 30)  # RGB and clump
    n = x.size
    _, glogg, gl, gph = stars.stellar_parameters(
        np.full(n, 1.0), np.full(n, 11.0), np.zeros(n), np.full(n, stars.RGB), x, np.zeros(n)
    )
    assert (glogg < 3.5).all() and (gl > 0.9).all()
    assert set(gph.tolist()) <= {stars.RGB, stars.CLUMP}


def test_giants_and_dwarfs_in_catalog(cat):
    giants = cat["true_phase"].isin(["rgb", "clump"])
    assert cat.loc[giants, "true_logg"].max() < 3.5
    assert cat.loc[cat["true_phase"] == "ms", "true_logg"].quantile(0.05) > 3.7
    # observed log g separates them too (noisy)
    assert cat.loc[giants, "logg"].median() < 3.0 < cat.loc[~giants, "logg"].median()


# ---- survey selection ----
def test_survey_magnitude_windows(cat):
    for name, s in SURVEYS.items():
        sub = cat[cat["survey"] == name]
        assert sub["true_mag"].between(s.mag_bright - 1e-4, s.mag_faint + 1e-4).all(), name


def test_apogee_giants_low_latitude(cat):
    a = cat[cat["survey"] == "apogee"]
    assert cat["true_phase"][a.index].isin(["rgb", "clump"]).mean() > 0.8
    assert a["true_b"].abs().median() < 10
    assert (a["true_b"].abs() < 16).mean() > 0.7
    assert a["dec"].min() > -80


def test_rave_south(cat):
    r = cat[cat["survey"] == "rave"]
    assert r["dec"].max() < 5.0
    assert (r["dec"] < 0).mean() > 0.9


def test_sdss_high_latitude_north(cat):
    s = cat[cat["survey"] == "sdss"]
    assert (s["true_b"].abs() > 20).mean() > 0.97
    assert (s["true_b"] > 0).mean() > 0.7
    assert s["dec"].min() > -20
    assert s["true_mag"].median() > 16  # faint


def test_gaia_all_sky_bright(cat):
    g = cat[cat["survey"] == "gaia"]
    assert g["true_gaia_g"].max() <= 14.5 + 1e-4
    assert 0.3 < (g["true_b"] > 0).mean() < 0.7
    assert 0.3 < (g["dec"] > 0).mean() < 0.7
    assert g["true_l"].between(90, 270).mean() > 0.2  # anticentre covered too


def test_noise_levels_per_survey(cat):
    def err(col, name):
        sub = cat[cat["survey"] == name]
        return float((sub[col] - sub[f"true_{col}"]).std())

    assert err("teff", "apogee") < 100 < err("teff", "rave")
    assert err("teff", "apogee") < err("teff", "sdss")
    assert err("fe_h", "apogee") < 0.08 < err("fe_h", "sdss")
    assert err("logg", "apogee") < err("logg", "gaia") < err("logg", "rave")
    med = cat.groupby("survey", observed=True)["snr"].median()
    assert med["apogee"] > med["sdss"]
    # parallaxes: Gaia-like errors and the -17 uas zero-point
    resid = cat["parallax"] - cat["true_parallax_mas"]
    pull = (resid + 0.017) / parallax_sigma_mas(cat["true_gaia_g"].values)
    assert 0.9 < pull.std() < 1.1
    assert abs(resid.median() + 0.017) < 0.005
    faint = cat["true_gaia_g"] > 18
    assert resid[faint].std() > 3 * resid[~faint].std()


def test_snr_falls_with_magnitude(cat):
    for name in SURVEYS:
        sub = cat[cat["survey"] == name]
        assert np.corrcoef(sub["true_mag"], np.log(sub["snr"]))[0, 1] < -0.5, name


# ---- kinematics: the label's physics ----
def test_solar_reflex_dipole(big):
    """Nearby thin-disk stars: v_r = -(v_sun - <v_pop>) . n, i.e. (U, V + drift, W) of the Sun."""
    near = big[(big["true_distance_pc"] < 400) & (big["population"] == "thin")]
    assert len(near) > 2000
    l, b = np.radians(near["true_l"].values), np.radians(near["true_b"].values)
    X = np.column_stack([np.cos(b) * np.cos(l), np.cos(b) * np.sin(l), np.sin(b), np.ones(len(l))])
    coef, *_ = np.linalg.lstsq(X, near["true_vr_kms"].values, rcond=None)
    U, V, W = -coef[:3]
    assert abs(U - 11.1) < 3.0
    assert abs(V - (12.24 + 15.0)) < 3.0  # solar V plus the thin disk's asymmetric drift
    assert abs(W - 7.25) < 3.0
    apex_l = np.degrees(np.arctan2(V, U))
    assert 50 < apex_l < 80


def test_galactic_rotation_quadrants(big):
    """Distant disk stars show differential rotation: v_r signs +, -, +, - in quadrants I-IV."""
    disk = big[(big["population"] == "thin") & big["true_distance_pc"].between(1500, 6000)
               & (big["true_b"].abs() < 10)]
    l, b = np.radians(disk["true_l"].values), np.radians(disk["true_b"].values)
    U, V, W = galaxy.SOLAR_PECULIAR_KMS
    reflex = U * np.cos(b) * np.cos(l) + (V - galaxy.THIN.v_asym_kms) * np.cos(b) * np.sin(l) + W * np.sin(b)
    vr = disk["true_vr_kms"].values + reflex
    ldeg = disk["true_l"].values
    means = [vr[(ldeg > lo) & (ldeg < lo + 60)].mean() for lo in (15, 105, 195, 285)]
    assert means[0] > 10 and means[1] < -10 and means[2] > 10 and means[3] < -10, means


def test_velocity_dispersions_by_population(big):
    resid = (big["true_vr_kms"] - big["expected_z"] * C)
    sd = resid.groupby(big["population"], observed=True).std()
    assert 15 < sd["thin"] < 40
    assert sd["thin"] < sd["thick"] < sd["halo"]
    assert 80 < sd["halo"] < 170
    # the expectation is unbiased: residual mean ~0 in each population
    mean = resid.groupby(big["population"], observed=True).mean()
    assert (mean.abs() < 5).all()


def test_halo_lags_rotation(big):
    """Halo stars barely rotate, so towards l = 90 they approach at ~ the solar rotation speed."""
    pro = big[(big["true_l"].between(60, 120)) & (big["true_b"].abs() < 30)]
    halo = pro[pro["population"] == "halo"]["true_vr_kms"].mean()
    thin = pro[pro["population"] == "thin"]["true_vr_kms"].mean()
    assert halo < -120 and thin > -60


def test_ceiling(cat, big):
    r2 = ceiling_r2(cat)
    assert 0.3 < r2 < 0.95
    # beats the no-information model (R^2 = 0) and is the regression of z on E[z]: slope ~ 1
    slope = np.polyfit(big["expected_z"], big["z"], 1)[0]
    assert abs(slope - 1) < 0.05
    # a wrong (e.g. reflex-free) expectation must do worse
    wrong = cat.assign(expected_z=cat["expected_z"] * -1)
    assert ceiling_r2(wrong) < 0
    with pytest.raises(AstroScaleError):
        ceiling_r2(cat[["z"]])


# ---- output ----
def test_write_parquet_roundtrip(tmp_path):
    df = simulate_catalog(500, seed=1)
    path = write_parquet(df, tmp_path / "sub" / "sim.parquet")
    back = pd.read_parquet(path)
    assert list(back.columns) == list(df.columns)
    np.testing.assert_array_equal(back["z"].values, df["z"].values)
    assert back["survey"].astype(str).tolist() == df["survey"].astype(str).tolist()
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["sim.parquet"]
    import pyarrow.parquet as pq

    assert b"astroscale_fl.simulator" in pq.read_schema(path).metadata


def test_cli(tmp_path, capsys):
    """The entry in this process (it reuses the survey tables this module built; a fresh interpreter
    rebuilds them, ~10 s), and once as a real process for the exit path, which fails before any table."""
    from astroscale_fl.simulator.__main__ import main

    out = tmp_path / "nodes"
    assert main(["--n", "400", "--seed", "2", "--out", str(out), "--per-survey", "--no-truth"]) == 0
    assert "ceiling" in capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir())
    assert files == ["apogee.parquet", "gaia.parquet", "rave.parquet", "sdss.parquet"]
    part = pd.read_parquet(out / "rave.parquet")
    assert list(part.columns) == [*INPUT_COLUMNS, "z", "survey"]
    bad = subprocess.run(
        [sys.executable, "-m", "astroscale_fl.simulator", "--n", "10", "--out", str(tmp_path / "x.parquet"),
         "--surveys", "lamost"],
        capture_output=True, text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown survey") and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and not (tmp_path / "x.parquet").exists()
