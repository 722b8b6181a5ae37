"""Fault injection: every fault either recovers with identical results or fails cleanly."""

from __future__ import annotations

import hashlib
import json
import time

import pyarrow.csv as pacsv
import pytest

from .conftest import read_out
from .servers import table_to_csv


@pytest.fixture
def baseline(conf, ingest, archive_server):
    """The clean result of a 400-row Gaia sync query."""
    code, out = ingest("--source", "gaia", "--limit", "400", out="clean", cache="clean-cache")
    assert code == 0
    archive_server.clear_log()
    return read_out(out, "gaia")


def test_429_retry_after_is_honoured(baseline, ingest, archive_server):
    archive_server.fault("sync", "status", 429, {"Retry-After": "1"})
    t0 = time.monotonic()
    code, out = ingest("--source", "gaia", "--limit", "400")
    assert code == 0 and time.monotonic() - t0 >= 1.0
    assert read_out(out, "gaia").equals(baseline)


def test_503_burst_recovers(baseline, ingest, archive_server):
    for _ in range(3):
        archive_server.fault("sync", "status", 503)
    code, out = ingest("--source", "gaia", "--limit", "400")
    assert code == 0 and read_out(out, "gaia").equals(baseline)
    assert len(archive_server.requests("/tap/sync")) == 4


def test_503_forever_gives_clear_error_and_no_output(conf, ingest, archive_server, capsys, tmp_path):
    for _ in range(10):
        archive_server.fault("sync", "status", 503)
    code, out = ingest("--source", "gaia", "--limit", "400")
    err = capsys.readouterr().err
    assert code == 2 and "giving up after 4 attempts" in err and "HTTP 503" in err
    assert not out.exists() or not any(out.iterdir())
    assert not list((tmp_path / "cache").rglob("objects/*/*"))


def test_404_is_not_retried(conf, ingest, archive_server, capsys):
    conf("gaia", endpoint=archive_server.url + "/nowhere")
    code, _ = ingest("--source", "gaia", "--limit", "10")
    assert code == 2 and "HTTP 404" in capsys.readouterr().err
    assert len(archive_server.requests("/nowhere")) == 1


@pytest.mark.parametrize("kind", ["reset", "truncate"])
def test_body_cut_mid_stream_recovers(baseline, ingest, archive_server, kind):
    archive_server.fault("sync", kind, 0.5)
    code, out = ingest("--source", "gaia", "--limit", "400")
    assert code == 0 and read_out(out, "gaia").equals(baseline)
    assert len(archive_server.requests("/tap/sync")) == 2


def test_async_result_reset_recovers(baseline, conf, ingest, archive_server):
    archive_server.fault("result", "reset", 0.3)
    archive_server.fault("phase", "status", 503)
    code, out = ingest("--source", "gaia", "--limit", "400", "--mode", "async")
    assert code == 0 and read_out(out, "gaia").equals(baseline)


def test_slow_response_times_out_then_recovers(baseline, conf, ingest, archive_server):
    # the server stalls 3 s, well past the 1 s limit; the retry's own reply has that 1 s to start
    conf("gaia", transport={"timeout_s": 1.0})
    archive_server.fault("sync", "slow", 3.0)
    code, out = ingest("--source", "gaia", "--limit", "400")
    assert code == 0 and read_out(out, "gaia").equals(baseline)
    assert len(archive_server.requests("/tap/sync")) == 2  # the stalled one, then the retry


def test_always_slow_is_a_timeout_error(conf, ingest, archive_server, capsys):
    conf("gaia", transport={"max_attempts": 2, "timeout_s": 0.5})
    for _ in range(2):
        archive_server.fault("sync", "slow", 2.0)  # 4x the limit: a loaded machine still times out
    code, out = ingest("--source", "gaia", "--limit", "400")
    err = capsys.readouterr().err
    assert code == 2 and "timed out" in err and "limit 0.5 s" in err
    assert not (out / "gaia.parquet").exists()


def test_circuit_breaker_fails_fast(conf, ingest, archive_server, capsys):
    conf("gaia", transport={"max_attempts": 10, "breaker_threshold": 3, "breaker_cooldown_s": 60})
    for _ in range(10):
        archive_server.fault("sync", "status", 502)
    code, _ = ingest("--source", "gaia", "--limit", "10")
    err = capsys.readouterr().err
    assert code == 2 and "circuit open" in err
    assert len(archive_server.requests("/tap/sync")) == 3


def test_malformed_rows_go_to_quarantine(conf, ingest, archive_server):
    from astroscale_fl.ingest.sources import load_source

    mapping = load_source("gaia").columns  # common name -> archive column, in query order
    good = archive_server.archive.tables["gaiadr3.gaia_source"].slice(0, 30)
    good = good.select(list(mapping.values())).rename_columns(list(mapping))
    lines = table_to_csv(good).decode().splitlines()
    header = list(mapping)

    def row(**values) -> str:
        return ",".join(str(values.get(c, "1")) for c in header)

    bad = [
        "1,2,3",                               # too few fields
        row(source_id=42, ra="abc"),           # ra not a number
        row(source_id=43, ra=400.5),           # ra out of range
        row(source_id=""),                     # missing source_id
    ]
    body = "\n".join([lines[0]] + lines[1:11] + bad + lines[11:]) + "\n"
    archive_server.archive.raw_csv["gaiadr3.gaia_source"] = body.encode()
    code, out = ingest("--source", "gaia", "--limit", "30")
    assert code == 0
    t = read_out(out, "gaia")
    assert t.num_rows == 30
    assert t.column("source_id").to_pylist() == [str(v) for v in good.column("source_id").to_pylist()]
    q = pacsv.read_csv(out / "gaia.quarantine.csv").to_pylist()
    reasons = sorted(r["reason"] for r in q)
    assert len(q) == 4
    assert any("expected 14 fields, got 3" in r for r in reasons)
    assert any("column 'ra': abc is not a number" in r for r in reasons)
    assert "ra outside [0, 360] deg" in reasons and "missing source_id" in reasons
    prov = json.loads((out / "gaia.provenance.json").read_text())
    assert prov["rejected"] == 4 and prov["rows"] == 30


def test_garbage_votable_is_a_clear_error(conf, ingest, archive_server, capsys, tmp_path):
    archive_server.fault("sync", "garbage", b"<?xml version='1.0'?><VOTABLE><RESOURCE><TABLE><FIELD")
    code, out = ingest("--source", "gaia", "--limit", "10", "--format", "votable")
    err = capsys.readouterr().err
    assert code == 2 and "not a readable VOTable" in err
    assert not (out / "gaia.parquet").exists()
    assert not list((tmp_path / "cache").rglob("objects/*/*"))  # bad answers are not cached


def test_failed_run_keeps_previous_complete_output(baseline, conf, ingest, archive_server):
    code, out = ingest("--source", "gaia", "--limit", "400", out="keep")
    before = hashlib.sha256((out / "gaia.parquet").read_bytes()).hexdigest()
    for _ in range(4):
        archive_server.fault("sync", "status", 500)
    code, out = ingest("--source", "gaia", "--limit", "401", out="keep")
    assert code == 2
    assert hashlib.sha256((out / "gaia.parquet").read_bytes()).hexdigest() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_interrupted_query_leaves_no_file_in_cache_tmp(conf, ingest, monkeypatch, tmp_path):
    """Ctrl-C while the result downloads: exit 130 and no cache/tmp/ left (not even a 0-byte file)."""
    from astroscale_fl.ingest.tap import TapClient

    async def interrupted(self, query, limit, dest, on_bytes):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.touch()  # the download has opened its file
        raise KeyboardInterrupt

    monkeypatch.setattr(TapClient, "sync", interrupted)
    code, _ = ingest("--source", "gaia", "--limit", "400")
    assert code == 130
    assert not (tmp_path / "cache" / "tmp").exists()  # neither the 0-byte file nor the empty folder


def test_result_left_by_a_killed_ingest_is_removed_by_the_next(conf, ingest, tmp_path):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    stale = tmp_path / "cache" / "tmp" / f"{'a' * 64}.{dead.pid}.csv"
    stale.parent.mkdir(parents=True)
    stale.touch()
    code, _ = ingest("--source", "gaia", "--limit", "400")
    assert code == 0 and not stale.exists()
