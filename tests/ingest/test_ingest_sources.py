"""End-to-end ingest against the loopback archive: protocols, schema, provenance, cache, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from astroscale_fl.ingest.cli import main
from astroscale_fl.ingest.schema import COLUMN_TYPES, common_schema

from .conftest import REAL_CONF, read_out


def expected_gaia(server, n: int) -> pa.Table:
    t = server.archive.tables["gaiadr3.gaia_source"].slice(0, n)
    return t


def test_gaia_sync_csv_matches_archive(conf, ingest, archive_server):
    code, out = ingest("--source", "gaia", "--limit", "200")
    assert code == 0
    t = read_out(out, "gaia")
    src = expected_gaia(archive_server, 200)
    assert t.column("source_id").to_pylist() == [str(v) for v in src.column("source_id").to_pylist()]
    np.testing.assert_array_equal(t.column("ra").to_numpy(), src.column("ra").to_numpy())
    np.testing.assert_array_equal(t.column("mag_g").to_numpy(), src.column("phot_g_mean_mag").to_numpy())
    assert t.column("radial_velocity").null_count == src.column("radial_velocity").null_count > 0
    assert set(t.column("survey").to_pylist()) == {"gaia_dr3"}
    assert t.schema.names == list(COLUMN_TYPES)
    (post,) = archive_server.requests("/tap/sync")
    assert post[0] == "POST" and not archive_server.requests("/tap/async")


def test_parquet_schema_units_provenance_and_pandas(conf, ingest):
    code, out = ingest("--source", "gaia", "--limit", "50", "--where", "parallax > 1")
    assert code == 0
    f = pq.read_table(out / "gaia.parquet")
    assert f.schema.field("ra").metadata[b"unit"] == b"deg"
    assert f.schema.field("pmra").metadata[b"unit"] == b"mas/yr"
    prov = json.loads(f.schema.metadata[b"astroscale_fl.provenance"])
    side = json.loads((out / "gaia.provenance.json").read_text())
    assert prov["query"] == side["query"]
    assert "TOP 50" in prov["query"] and "WHERE (parallax > 1)" in prov["query"]
    assert side["source"] == "gaia" and side["release"] == "Gaia DR3" and side["retrieved_at"]
    assert side["rows"] == 50 and side["rejected"] == 0
    df = pd.read_parquet(out / "gaia.parquet")
    assert len(df) == 50 and (df["parallax"] > 1).all()
    assert not (out / "gaia.quarantine.csv").exists()


def test_gaia_async_job_lifecycle_votable_equals_csv(conf, ingest, archive_server):
    code, out_csv = ingest("--source", "gaia", "--limit", "1200", "--mode", "sync", out="csv")
    assert code == 0
    archive_server.clear_log()
    code, out_vot = ingest("--source", "gaia", "--limit", "1200", "--format", "votable", out="vot", cache="c2")
    assert code == 0
    log = [(m, p) for m, p, _ in archive_server.requests("/tap")]
    assert log[0] == ("POST", "/tap/async")
    job = log[1][1].removesuffix("/phase")
    assert log[1] == ("POST", f"{job}/phase")
    assert ("GET", f"{job}/phase") in log and ("GET", f"{job}/results/result") in log
    assert log[-1] == ("DELETE", job)
    assert not archive_server.archive.jobs  # deleted on the server
    assert read_out(out_vot, "gaia").equals(read_out(out_csv, "gaia"))


def test_async_job_error_reports_message_and_leaves_nothing(conf, ingest, archive_server, capsys):
    archive_server.fault("job", "job_error", "Query timed out after 7200 s")
    code, out = ingest("--source", "gaia", "--limit", "1000")
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "Query timed out after 7200 s" in err and err.count("\n") == 1
    assert "Traceback" not in err
    assert not (out / "gaia.parquet").exists()
    assert not archive_server.archive.jobs  # the failed job was deleted


def test_tap_query_error_is_not_retried(conf, ingest, archive_server, capsys):
    code, out = ingest("--source", "gaia", "--limit", "10", "--where", "no_such_col > 3")
    err = capsys.readouterr().err
    assert code == 2 and "Column 'no_such_col' not found" in err
    assert len(archive_server.requests("/tap/sync")) == 1
    assert not (out / "gaia.parquet").exists()


def test_cache_hit_makes_no_request(conf, ingest, archive_server, tmp_path):
    code, out1 = ingest("--source", "gaia", "--limit", "300", out="a")
    assert code == 0
    archive_server.clear_log()
    code, out2 = ingest("--source", "gaia", "--limit", "300", out="b")
    assert code == 0
    assert archive_server.requests() == []
    assert read_out(out2, "gaia").equals(read_out(out1, "gaia"))
    assert json.loads((out2 / "gaia.provenance.json").read_text())["from_cache"] is True
    # a different query is a miss; --no-cache refetches
    code, _ = ingest("--source", "gaia", "--limit", "301", out="c")
    assert code == 0 and len(archive_server.requests("/tap/sync")) == 1
    code, _ = ingest("--source", "gaia", "--limit", "300", "--no-cache", out="d")
    assert code == 0 and len(archive_server.requests("/tap/sync")) == 2


def test_cache_expiry_refetches(conf, ingest, archive_server):
    conf("gaia", cache_ttl_s=0)
    assert ingest("--source", "gaia", "--limit", "20")[0] == 0
    assert ingest("--source", "gaia", "--limit", "20")[0] == 0
    assert len(archive_server.requests("/tap/sync")) == 2


def test_sdss_skyserver_csv_and_sentinels(conf, ingest, archive_server):
    code, out = ingest("--source", "sdss", "--limit", "100")
    assert code == 0
    t = read_out(out, "sdss")
    src = archive_server.archive.tables["SpecObj AS s LEFT OUTER JOIN sppParams AS p ON p.specobjid = s.specobjid"]
    src = src.filter(pc.equal(src.column("s.zWarning"), 0)).slice(0, 100)
    assert t.column("source_id").to_pylist() == [str(v) for v in src.column("s.specObjID").to_pylist()]
    teff = src.column("p.teffadop").to_numpy()
    assert t.column("teff").null_count == int((teff == -9999).sum()) > 0  # -9999 -> null
    np.testing.assert_array_equal(t.column("z").to_numpy(), src.column("s.z").to_numpy())
    ((_, path, _),) = archive_server.requests("/skyserver")
    assert "format=csv" in path and "cmd=SELECT" in path


def test_sdss_sql_error_is_reported(conf, ingest, capsys):
    code, out = ingest("--source", "sdss", "--where", "bogus = 1")
    err = capsys.readouterr().err
    assert code == 2 and "SkyServer" in err and "Column 'bogus' not found" in err
    assert not (out / "sdss.parquet").exists()


@pytest.mark.parametrize("source,collection", [("hst", "HST"), ("jwst", "JWST"), ("rave", None)])
def test_mast_and_rave_over_tap(conf, ingest, archive_server, source, collection):
    code, out = ingest("--source", source, "--limit", "40")
    assert code == 0
    t = read_out(out, source)
    assert t.num_rows == 40
    if collection:
        obs = archive_server.archive.tables["ivoa.obscore"]
        ids = set(obs.filter(pc.equal(obs.column("obs_collection"), collection)).column("obs_id").to_pylist())
        assert set(t.column("source_id").to_pylist()) <= ids
        assert t.column("instrument").null_count == 0 and t.column("exptime").null_count == 0


def test_columns_subset_and_bad_column(conf, ingest, capsys):
    code, out = ingest("--source", "gaia", "--limit", "10", "--columns", "teff,logg")
    assert code == 0
    t = read_out(out, "gaia")
    assert t.column("teff").null_count == 0 and t.column("parallax").null_count == 10
    code, _ = ingest("--source", "gaia", "--columns", "z", out="o2")
    err = capsys.readouterr().err
    assert code == 2 and "--columns" in err and "'z'" in err


def test_endpoint_override_with_shipped_conf(archive_server, tmp_path, monkeypatch):
    monkeypatch.setenv("ASTROSCALE_FL_CONF", str(REAL_CONF))
    code = main(["--source", "rave", "--limit", "5", "--endpoint", archive_server.url + "/tap",
                 "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert code == 0
    assert pq.read_table(tmp_path / "o" / "rave.parquet").num_rows == 5


def test_shipped_conf_files_are_valid(monkeypatch):
    from astroscale_fl.ingest.sources import available_sources, load_source

    monkeypatch.setenv("ASTROSCALE_FL_CONF", str(REAL_CONF))
    assert available_sources() == ["apogee", "gaia", "hst", "jwst", "rave", "sdss"]
    for name in available_sources():
        cfg = load_source(name)
        assert cfg.endpoint.startswith("https://")
    assert load_source("gaia").table == "gaiadr3.gaia_source"


def test_bad_conf_is_a_one_line_error(conf, ingest, capsys):
    conf("gaia", colums={"ra": "ra"})
    code, _ = ingest("--source", "gaia")
    err = capsys.readouterr().err
    assert code == 2 and "gaia.yaml" in err and "colums" in err and err.count("\n") == 1


def test_help_lists_sources():
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_common_schema_is_documented():
    import astroscale_fl.ingest.schema as schema

    for name in common_schema().names:
        assert f"\n{name} " in schema.__doc__


def test_binary2_votable_fast_path_equals_tabledata(conf, ingest, archive_server):
    from astroscale_fl.ingest.parse import read_binary2_fixed

    code, out_td = ingest("--source", "gaia", "--limit", "300", "--format", "votable", out="td", cache="c1")
    assert code == 0
    archive_server.archive.votable_serialization = "binary2"
    code, out_b2 = ingest("--source", "gaia", "--limit", "300", "--format", "votable", out="b2", cache="c2")
    assert code == 0
    assert read_out(out_b2, "gaia").equals(read_out(out_td, "gaia"))
    assert read_out(out_b2, "gaia").column("radial_velocity").null_count > 0
    (obj,) = list((out_b2.parent / "c2").rglob("objects/*/*"))
    assert read_binary2_fixed(obj) is not None  # the vectorised decoder, not astropy, was used
