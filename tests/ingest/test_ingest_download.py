"""APOGEE: ranged concurrent download, resume, checksum and ETag verification, FITS extraction."""

from __future__ import annotations

import hashlib
import re

import numpy as np
from astropy.io import fits

from .conftest import read_out

NAME = "allStar-dr17-synspec_rev1.fits"


def file_bytes(server) -> bytes:
    return server.archive.files[NAME].data


def test_ranged_download_is_byte_identical_and_extracted(conf, ingest, archive_server, tmp_path):
    code, out = ingest("--source", "apogee")
    assert code == 0
    data = file_bytes(archive_server)
    objs = list((tmp_path / "cache").rglob("objects/*/*"))
    assert len(objs) == 1 and objs[0].read_bytes() == data
    ranges = [h.get("Range") for m, p, h in archive_server.requests("/files/" + NAME) if m == "GET"]
    assert len(ranges) == -(-len(data) // 65536) and all(r and r.startswith("bytes=") for r in ranges)
    t = read_out(out, "apogee")
    with fits.open(objs[0]) as hdul:
        src = hdul[1].data
        assert t.column("source_id").to_pylist() == [s.strip() for s in src["APOGEE_ID"]]
        np.testing.assert_array_equal(t.column("dec").to_numpy(), src["DEC"])
        assert t.column("teff").null_count == int((src["TEFF"] == -9999).sum()) > 0
    assert "sha1 checksum verified" in " ".join(
        __import__("json").loads((out / "apogee.provenance.json").read_text())["notes"])


def test_where_and_limit_on_file_source(conf, ingest):
    code, out = ingest("--source", "apogee", "--where", "teff > 5000 AND snr >= 100", "--limit", "50")
    assert code == 0
    t = read_out(out, "apogee").to_pandas()
    assert len(t) == 50 and (t.teff > 5000).all() and (t.snr >= 100).all()


def test_reset_mid_segment_resumes_from_bytes_on_disk(conf, ingest, archive_server, tmp_path):
    archive_server.fault("file", "reset", 0.5)
    archive_server.fault("file", "truncate", 0.25)
    code, out = ingest("--source", "apogee")
    assert code == 0
    gets = [h["Range"] for m, p, h in archive_server.requests("/files/" + NAME) if m == "GET"]
    starts = [int(re.match(r"bytes=(\d+)-", r).group(1)) for r in gets]
    segments = -(-len(file_bytes(archive_server)) // 65536)
    assert len(starts) == segments + 2  # two retries ...
    assert sorted(s % 65536 for s in starts if s % 65536) == [16384, 32768]  # ... from where each cut fell
    (obj,) = list((tmp_path / "cache").rglob("objects/*/*"))
    assert obj.read_bytes() == file_bytes(archive_server)


def test_resume_after_interrupted_run(conf, ingest, archive_server, tmp_path):
    data = file_bytes(archive_server)
    conf("apogee", segment_mb=16, transport={"max_attempts": 1})  # one segment, no retries
    archive_server.fault("file", "reset", 0.6)
    code, _ = ingest("--source", "apogee")
    assert code == 2
    parts = list((tmp_path / "cache" / "partial").glob("*.part"))
    assert len(parts) == 1 and not list((tmp_path / "cache").rglob("objects/*/*"))
    archive_server.clear_log()
    code, out = ingest("--source", "apogee", "--resume")
    assert code == 0
    (get,) = [h for m, p, h in archive_server.requests("/files/" + NAME) if m == "GET"]
    start = int(re.match(r"bytes=(\d+)-", get["Range"]).group(1))
    assert start > 0 and get["If-Range"] == archive_server.archive.files[NAME].etag
    (obj,) = list((tmp_path / "cache").rglob("objects/*/*"))
    assert obj.read_bytes() == data
    assert read_out(out, "apogee").num_rows == 4000


def test_without_resume_partial_is_discarded(conf, ingest, archive_server, tmp_path):
    conf("apogee", segment_mb=16, transport={"max_attempts": 1})
    archive_server.fault("file", "reset", 0.6)
    assert ingest("--source", "apogee")[0] == 2
    archive_server.clear_log()
    assert ingest("--source", "apogee")[0] == 0
    (get,) = [h for m, p, h in archive_server.requests("/files/" + NAME) if m == "GET"]
    assert "Range" not in get or get["Range"].startswith("bytes=0-")


def test_changed_file_restarts_download(conf, ingest, archive_server, tmp_path):
    conf("apogee", segment_mb=16, transport={"max_attempts": 1}, checksum_file=None)
    archive_server.fault("file", "reset", 0.6)
    assert ingest("--source", "apogee")[0] == 2
    new = file_bytes(archive_server)[:-2880] + b"\0" * 2880  # same size, new content and ETag
    archive_server.add_file(NAME, new)
    assert ingest("--source", "apogee", "--resume")[0] == 0
    (obj,) = list((tmp_path / "cache").rglob("objects/*/*"))
    assert obj.read_bytes() == new


def test_transient_checksum_mismatch_recovers(conf, ingest, archive_server, tmp_path):
    conf("apogee", segment_mb=16)
    archive_server.fault("file", "corrupt")
    code, out = ingest("--source", "apogee")
    assert code == 0
    (obj,) = list((tmp_path / "cache").rglob("objects/*/*"))
    assert obj.read_bytes() == file_bytes(archive_server)


def test_persistent_checksum_mismatch_fails_cleanly(conf, ingest, archive_server, tmp_path, capsys):
    data = file_bytes(archive_server)
    archive_server.add_file("dr17.sha1sum", f"{'ab' * 20}  {NAME}\n".encode())
    code, out = ingest("--source", "apogee")
    err = capsys.readouterr().err
    assert code == 2 and "checksum mismatch" in err and hashlib.sha1(data).hexdigest() in err
    assert not (out / "apogee.parquet").exists()
    assert not list((tmp_path / "cache").rglob("objects/*/*"))
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_file_cache_hit_makes_no_request(conf, ingest, archive_server):
    assert ingest("--source", "apogee", out="a")[0] == 0
    archive_server.clear_log()
    code, out = ingest("--source", "apogee", out="b")
    assert code == 0 and archive_server.requests() == []
    assert read_out(out, "apogee").equals(read_out(out.parent / "a", "apogee"))


def test_missing_fits_column_names_it(conf, ingest, capsys):
    conf("apogee", columns={"source_id": "APOGEE_ID", "ra": "RA", "dec": "DEC", "teff": "TEFF_SPEC"})
    code, _ = ingest("--source", "apogee")
    err = capsys.readouterr().err
    assert code == 2 and "TEFF_SPEC" in err and NAME in err
