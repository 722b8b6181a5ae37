"""Fixtures: a loopback archive with Gaia/RAVE/ObsCore/SDSS tables and an APOGEE FITS file, and a
conf directory whose sources point at it with short retry/backoff settings."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from astroscale_fl.config import conf_dir
from astroscale_fl.ingest.cli import main

from .servers import Archive, LoopbackServer

REAL_CONF = conf_dir()  # the repository's conf/, or the copy inside an installed wheel

#: Fast retries. The read/connect timeouts are generous: they are not under test here (a loaded
#: machine can stall a loopback reply for a second); the timeout tests set their own.
FAST_TRANSPORT = {
    "max_concurrency": 4, "rate_per_s": 0, "burst": 1, "timeout_s": 10.0, "connect_timeout_s": 10.0,
    "max_attempts": 4, "backoff_base_s": 0.01, "backoff_max_s": 0.05, "max_retry_after_s": 5,
    "breaker_threshold": 50, "breaker_cooldown_s": 1.0, "poll_min_s": 0.01, "poll_max_s": 0.02,
    "job_timeout_s": 10,
}


def gaia_table(n: int = 3000, seed: int = 1) -> pa.Table:
    """A Gaia-like gaia_source table (with some null radial velocities)."""
    rng = np.random.default_rng(seed)
    rv = rng.normal(0, 40, n)
    rv_mask = rng.random(n) < 0.3
    return pa.table({
        "source_id": pa.array(rng.integers(1 << 40, 1 << 62, n, dtype=np.int64)),
        "ra": rng.uniform(0, 360, n),
        "dec": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
        "parallax": rng.exponential(2, n),
        "parallax_error": rng.uniform(0.01, 0.5, n),
        "pmra": rng.normal(0, 10, n),
        "pmdec": rng.normal(0, 10, n),
        "phot_g_mean_mag": rng.uniform(6, 20, n),
        "bp_rp": rng.normal(1, 0.4, n),
        "radial_velocity": pa.array(rv, mask=rv_mask),
        "radial_velocity_error": pa.array(rng.uniform(0.1, 5, n), mask=rv_mask),
        "teff_gspphot": rng.uniform(3500, 8000, n),
        "logg_gspphot": rng.uniform(1, 5, n),
        "mh_gspphot": rng.normal(-0.2, 0.4, n),
    })


def rave_tables(n: int = 400) -> dict[str, pa.Table]:
    """RAVE DR6 obsdata+madera, pre-joined under the join expression used by conf/source/rave.yaml."""
    rng = np.random.default_rng(2)
    return {
        "rave_obs_id": pa.array([f"20040402_{i:04d}m1{i % 9}_{i:03d}" for i in range(n)]),
        "ra_input": rng.uniform(0, 360, n), "dec_input": rng.uniform(-90, 0, n),
        "hrv_sparv": rng.normal(0, 50, n), "hrv_error_sparv": rng.uniform(0.5, 3, n),
        "snr_med_sparv": rng.uniform(10, 100, n), "teff_cal_madera": rng.uniform(4000, 7000, n),
        "logg_cal_madera": rng.uniform(1, 5, n), "m_h_cal_madera": rng.normal(-0.3, 0.3, n),
    }


def obscore_table(n: int = 300) -> pa.Table:
    """A MAST ObsCore-like table with HST and JWST observations."""
    rng = np.random.default_rng(3)
    coll = np.where(np.arange(n) % 3 == 0, "JWST", "HST")
    return pa.table({
        "obs_id": pa.array([f"obs{i:05d}" for i in range(n)]),
        "obs_collection": pa.array(coll.tolist()),
        "s_ra": rng.uniform(0, 360, n), "s_dec": rng.uniform(-90, 90, n),
        "target_name": pa.array([f"NGC{1000 + i}" for i in range(n)]),
        "instrument_name": pa.array(np.where(coll == "JWST", "NIRCAM", "WFC3/IR").tolist()),
        "t_exptime": rng.uniform(10, 3000, n), "t_min": rng.uniform(50000, 60000, n),
    })


def sdss_table(n: int = 500) -> pa.Table:
    """SkyServer SpecObj x sppParams (with -9999 sentinels where SSPP has no answer)."""
    rng = np.random.default_rng(4)
    teff = rng.uniform(4000, 8000, n)
    teff[::7] = -9999
    return pa.table({
        "s.specObjID": pa.array(rng.integers(1 << 60, (1 << 63) - 1, n, dtype=np.int64)),
        "s.ra": rng.uniform(0, 360, n), "s.dec": rng.uniform(-10, 70, n),
        "s.z": rng.uniform(-0.001, 3, n), "s.zErr": rng.uniform(1e-5, 1e-3, n),
        "s.snMedian": rng.uniform(1, 60, n), "p.teffadop": teff,
        "p.loggadop": rng.uniform(1, 5, n), "p.fehadop": rng.normal(-0.5, 0.5, n),
        "p.elodierv": rng.normal(0, 30, n), "s.zWarning": pa.array(np.where(np.arange(n) % 10 == 0, 4, 0)),
    })


def allstar_fits(n: int = 4000) -> bytes:
    """A small allStar-like FITS file (HDU 1 binary table, -9999 sentinels, a vector column)."""
    from astropy.io import fits

    rng = np.random.default_rng(5)
    teff = rng.uniform(3500, 6500, n).astype(np.float32)
    teff[::11] = -9999
    cols = [
        fits.Column("APOGEE_ID", "18A", array=np.array([f"2M{i:08d}+{i % 997:07d}" for i in range(n)])),
        fits.Column("RA", "D", array=rng.uniform(0, 360, n)),
        fits.Column("DEC", "D", array=rng.uniform(-90, 90, n)),
        fits.Column("TEFF", "E", array=teff),
        fits.Column("LOGG", "E", array=rng.uniform(0, 5, n).astype(np.float32)),
        fits.Column("FE_H", "E", array=rng.normal(-0.2, 0.3, n).astype(np.float32)),
        fits.Column("VHELIO_AVG", "E", array=rng.normal(0, 60, n).astype(np.float32)),
        fits.Column("SNR", "E", array=rng.uniform(20, 500, n).astype(np.float32)),
        fits.Column("GAIAEDR3_PARALLAX", "D", array=rng.exponential(1, n)),
        fits.Column("GAIAEDR3_PARALLAX_ERROR", "D", array=rng.uniform(0.01, 0.2, n)),
        fits.Column("FELEM", "3E", array=rng.normal(0, 0.2, (n, 3)).astype(np.float32)),
    ]
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)])
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


@pytest.fixture
def archive_server():
    """A running loopback archive (function-scoped: fresh faults, jobs and log per test)."""
    archive = Archive()
    archive.tables["gaiadr3.gaia_source"] = gaia_table()
    archive.tables["ravedr6.dr6_obsdata AS o JOIN ravedr6.dr6_madera AS m ON o.rave_obs_id = m.rave_obs_id"] = \
        pa.table({("o." if k in ("rave_obs_id", "ra_input", "dec_input", "hrv_sparv", "hrv_error_sparv",
                                 "snr_med_sparv") else "m.") + k: v for k, v in rave_tables().items()})
    archive.tables["ivoa.obscore"] = obscore_table()
    archive.tables["SpecObj AS s LEFT OUTER JOIN sppParams AS p ON p.specobjid = s.specobjid"] = sdss_table()
    server = LoopbackServer(archive).start()
    data = allstar_fits()
    server.add_file("allStar-dr17-synspec_rev1.fits", data)
    digest = hashlib.sha1(data).hexdigest()
    server.add_file("dr17.sha1sum", f"{'0' * 40}  other.fits\n{digest}  allStar-dr17-synspec_rev1.fits\n".encode())
    yield server
    server.stop()


@pytest.fixture
def conf(tmp_path, archive_server, monkeypatch):
    """A conf dir with the shipped sources pointed at the loopback server, fast retries; returns a
    function to tweak one source's YAML."""
    root = tmp_path / "conf"
    (root / "source").mkdir(parents=True)
    endpoints = {"tap": "/tap", "skyserver": "/skyserver/SqlSearch", "file": "/files"}

    def write(name: str, **changes) -> Path:
        cfg = yaml.safe_load((REAL_CONF / "source" / f"{name}.yaml").read_text())
        cfg["endpoint"] = archive_server.url + endpoints[cfg["protocol"]]
        cfg["transport"] = dict(FAST_TRANSPORT)
        if cfg["protocol"] == "tap":
            cfg["sync_max_rows"] = 500
        if cfg["protocol"] == "file":
            cfg["segment_mb"] = 64 / 1024  # 64 KiB segments -> several concurrent ranges
            cfg["checksum_file"] = "dr17.sha1sum"
        for key, value in changes.items():
            if key == "transport":
                cfg["transport"].update(value)
            else:
                cfg[key] = value
        path = root / "source" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    for name in ("gaia", "sdss", "apogee", "rave", "hst", "jwst"):
        write(name)
    monkeypatch.setenv("ASTROSCALE_FL_CONF", str(root))
    return write


@pytest.fixture
def ingest(tmp_path):
    """Run the CLI with per-test --out/--cache-dir; returns (exit code, out dir)."""

    def run(*args: str, out: str = "out", cache: str = "cache") -> tuple[int, Path]:
        out_dir = tmp_path / out
        code = main([*args, "--out", str(out_dir), "--cache-dir", str(tmp_path / cache), "--no-progress"])
        return code, out_dir

    return run


def read_out(out_dir: Path, source: str) -> pa.Table:
    """The ingested table without schema metadata (for comparisons across runs)."""
    return pq.read_table(out_dir / f"{source}.parquet").replace_schema_metadata(None)
