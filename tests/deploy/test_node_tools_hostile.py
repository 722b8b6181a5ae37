"""Issue 23: the node tools and `astroscale-fl status` on hostile files, answers and flags: one line, exit 2,
nothing written."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from astroscale_fl.deploy.cli import status_main
from astroscale_fl.deploy.node_cli import LAUNCHER_FILE, launcher_main
from astroscale_fl.deploy.node_cli import status_main as node_status_main
from astroscale_fl.deploy.node_status import status_path


def _exit_and_line(func, argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as raised:
        func(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err and not captured.out
    return raised.value.code, lines[0]


STATUS_FILES = {
    # name: (file content, words the line must hold)
    "a_list": ("[]", ["expected a JSON object", "got list"]),
    "epsilon_text": ('{"epsilon": "abc"}', ["'epsilon' must be a number", "'abc'"]),
    "in_progress_kind_number": ('{"in_progress": {"kind": 5}}', ["'in_progress'", "'kind' (text)"]),
    "rounds_negative": ('{"rounds_trained": -1}', ["'rounds_trained'", "whole number >= 0", "-1"]),
    "declines_bool": ('{"declines": true}', ["'declines'", "True"]),
    "not_json": ("{epsilon", ["not JSON"]),
    "binary": (b"\xff\xfe\x00garbage", ["cannot read the node status"]),
}


@pytest.mark.parametrize("case", STATUS_FILES, ids=list(STATUS_FILES))
def test_node_status_on_a_hostile_status_file_is_one_line(case, tmp_path, capsys):
    content, words = STATUS_FILES[case]
    path = status_path(tmp_path)
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = path.read_bytes()
    code, line = _exit_and_line(node_status_main, ["--data-dir", str(tmp_path)], capsys)
    assert code == 2 and str(path) in line
    for word in words:
        assert word in line, line
    assert path.read_bytes() == before


@pytest.mark.parametrize("answer", [b"[]", b'{"launcher": {"pid": "x"}}', b'{"rows": 1.5}'])
def test_node_status_on_a_hostile_launcher_answer_is_one_line(answer, tmp_path, capsys):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        info = tmp_path / ".astroscale" / LAUNCHER_FILE
        info.parent.mkdir()
        info.write_text(json.dumps({"pid": os.getpid(), "metrics_port": server.server_address[1]}))
        code, line = _exit_and_line(node_status_main, ["--data-dir", str(tmp_path)], capsys)
    finally:
        server.shutdown()
    assert code == 2 and f"http://127.0.0.1:{server.server_address[1]}/status" in line


LAUNCHER_FLAGS = {
    "port_too_big": (["--runtime-api-address", "127.0.0.1:99999"], ["--runtime-api-address 127.0.0.1:99999", "1..65535"]),
    "port_not_a_number": (["--runtime-api-address", "127.0.0.1:abc"], ["HOST:PORT"]),
    "no_port": (["--runtime-api-address", "127.0.0.1"], ["HOST:PORT"]),
    "not_loopback": (["--runtime-api-address", "10.1.2.3:9094"], ["keep it on loopback"]),
    "metrics_host_unresolvable": (["--metrics-port", "9400", "--metrics-host", "999.0.0.1"], ["--metrics-host 999.0.0.1"]),
    "metrics_port_too_big": (["--metrics-port", "70000"], ["--metrics-port", "0..65535"]),
    "poll_not_a_number": (["--poll", "fast"], ["--poll", "invalid float value"]),
}


@pytest.mark.parametrize("case", LAUNCHER_FLAGS, ids=list(LAUNCHER_FLAGS))
def test_node_launcher_bad_flags_are_one_line_and_write_nothing(case, tmp_path, capsys):
    flags, words = LAUNCHER_FLAGS[case]
    code, line = _exit_and_line(launcher_main, ["--data-dir", str(tmp_path), *flags], capsys)
    assert code == 2
    for word in words:
        assert word in line, line
    assert list(tmp_path.iterdir()) == []  # no .astroscale/launcher.json


@pytest.mark.parametrize("flags, words", [
    (["--timeout", "-1"], ["--timeout", "> 0", "-1"]),
    (["--timeout", "nan"], ["--timeout", "> 0", "nan"]),
    (["--connection", "nosuch"], ["no Flower configuration at", "--superlink HOST:PORT"]),
    ([], ["no Flower configuration at"]),
], ids=["timeout_negative", "timeout_nan", "unknown_connection", "no_connection"])
def test_status_refuses_before_flwr_writes_its_config(flags, words, tmp_path, monkeypatch, capsys):
    home = tmp_path / "flwr-home"
    home.mkdir()
    monkeypatch.setenv("FLWR_HOME", str(home))
    code, line = _exit_and_line(status_main, flags, capsys)
    assert code == 2
    for word in words:
        assert word in line, line
    assert list(home.iterdir()) == []  # Flower wrote no config.toml (and started no local SuperLink)


def test_status_names_the_connections_a_config_has(tmp_path, monkeypatch, capsys):
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "prod"\n\n[superlink.prod]\naddress = "127.0.0.1:1"\n')
    monkeypatch.setenv("FLWR_HOME", str(home))
    code, line = _exit_and_line(status_main, ["--connection", "nosuch"], capsys)
    assert code == 2 and "no [superlink.nosuch]" in line and "['prod']" in line
    assert sorted(p.name for p in home.iterdir()) == ["config.toml"]


@pytest.mark.parametrize("info", ["[]", '{"pid": "x"}', '{"pid": 1, "metrics_port": "abc"}', "{"])
def test_node_status_ignores_a_launcher_file_of_the_wrong_shape(info, tmp_path, capsys):
    (tmp_path / ".astroscale").mkdir()
    (tmp_path / ".astroscale" / LAUNCHER_FILE).write_text(info)
    assert node_status_main(["--data-dir", str(tmp_path)]) == 0  # no launcher: the status file (none yet)
    out = capsys.readouterr().out
    assert "rounds trained    0" in out and "not running" in out
