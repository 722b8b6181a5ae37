"""Issue 23: bad ``ingest`` options are one line before any request; a failed fetch leaves no work folders."""

from __future__ import annotations

import pytest

OPTION_CASES = {
    # name: (arguments, words the error line must hold)
    "timeout_negative": (["--source", "gaia", "--timeout", "-1"], ["--timeout", "> 0", "-1"]),
    "timeout_nan": (["--source", "gaia", "--timeout", "nan"], ["--timeout", "> 0", "nan"]),
    "timeout_inf": (["--source", "gaia", "--timeout", "inf"], ["--timeout", "> 0", "inf"]),
    "retries_zero": (["--source", "gaia", "--retries", "0"], ["--retries", ">= 1", "0"]),
    "retries_negative": (["--source", "gaia", "--retries", "-2"], ["--retries", ">= 1", "-2"]),
    "retries_not_a_number": (["--source", "gaia", "--retries", "many"], ["--retries", "invalid int value"]),
    "apogee_where_injection": (["--source", "apogee", "--where", "teff >> 3; rm -rf /"],
                               ["--where", "'teff >> 3; rm -rf /'", "<column> <op> <number>"]),
    "apogee_where_unknown_column": (["--source", "apogee", "--where", "mass > 3"], ["--where", "unknown column 'mass'"]),
    "limit_negative": (["--source", "gaia", "--limit", "-5"], ["--limit", ">= 0"]),
    "unknown_source": (["--source", "nosuch"], ["--source", "invalid choice"]),
}


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and not captured.out
    return lines[0]


@pytest.mark.parametrize("case", OPTION_CASES, ids=list(OPTION_CASES))
def test_bad_option_is_one_line_before_any_request(case, conf, ingest, archive_server, capsys, tmp_path):
    args, words = OPTION_CASES[case]
    try:
        code, _ = ingest(*args)
    except SystemExit as exc:  # an argparse mistake (not a number, not a choice)
        code = exc.code
    line = _one_line(capsys)
    assert code == 2
    for word in words:
        assert word in line, line
    assert archive_server.requests() == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("flag", ["--out", "--cache-dir"])
@pytest.mark.parametrize("under", [False, True], ids=["the_file", "under_the_file"])
def test_directory_option_naming_a_file_is_one_line(flag, under, conf, archive_server, capsys, tmp_path):
    from astroscale_fl.ingest.cli import main

    blocker = tmp_path / "plain.txt"
    blocker.write_text("keep me\n")
    target = blocker / "sub" if under else blocker
    dirs = {"--out": str(tmp_path / "out"), "--cache-dir": str(tmp_path / "cache"), flag: str(target)}
    code = main(["--source", "gaia", "--limit", "10", "--no-progress", *[a for kv in dirs.items() for a in kv]])
    line = _one_line(capsys)
    assert code == 2 and flag in line and f"{blocker} is a file, not a directory" in line
    assert blocker.read_text() == "keep me\n"
    assert archive_server.requests() == []


@pytest.mark.parametrize("fault", [("status", 503), ("status", 400), ("reset", 0.0)], ids=["503", "400", "reset"])
def test_failed_fetch_leaves_no_empty_tmp_folder(fault, conf, ingest, archive_server, tmp_path):
    for _ in range(10):
        archive_server.fault("sync", *fault)
    code, out = ingest("--source", "gaia", "--limit", "400")
    assert code == 2
    cache = tmp_path / "cache"
    assert not (cache / "tmp").exists() and not (cache / "jobs").exists()
    assert not out.exists() or not any(out.iterdir())


def test_successful_fetch_leaves_no_empty_tmp_folder(conf, ingest, tmp_path):
    code, _ = ingest("--source", "gaia", "--limit", "400", "--mode", "async")
    assert code == 0
    assert not (tmp_path / "cache" / "tmp").exists() and not (tmp_path / "cache" / "jobs").exists()

