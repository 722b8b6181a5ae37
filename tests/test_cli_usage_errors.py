"""Issue 23: a mistyped flag is one ``error: PROG: ...`` line and exit 2 (argparse alone prints the whole
usage first), for every command that takes flags from a user; ``--help`` still prints the usage."""

from __future__ import annotations

import pytest

from astroscale_fl.deploy import flower_app, local, superlink, supernode
from astroscale_fl.deploy.cli import certs_main, node_data_main
from astroscale_fl.deploy.cli import status_main as centre_status_main
from astroscale_fl.deploy.node_cli import launcher_main
from astroscale_fl.deploy.node_cli import status_main as node_status_main
from astroscale_fl.export.predict import main as predict_main
from astroscale_fl.ingest.cli import main as ingest_main
from astroscale_fl.learning.compare import main as compare_main
from astroscale_fl.preprocessing.cli import main as preprocess_main
from astroscale_fl.serve.cli import main as serve_main

CASES = {
    # name: (entry point, arguments, words the line must hold)
    "serve_log_level_loud": (serve_main, ["--log-level", "loud"], ["astroscale-fl serve", "--log-level", "invalid choice: 'loud'"]),
    "serve_port_text": (serve_main, ["--port", "eighty"], ["astroscale-fl serve", "--port", "invalid int value"]),
    "serve_unknown_flag": (serve_main, ["--workers", "4"], ["unrecognized arguments: --workers 4"]),
    "predict_unknown_flag": (predict_main, ["--bogus"], ["astroscale-fl predict", "unrecognized arguments: --bogus"]),
    "ingest_no_source": (ingest_main, [], ["astroscale-fl ingest", "--source"]),
    "node_status_no_data_dir": (node_status_main, [], ["astroscale-fl node status", "--data-dir"]),
    "node_launcher_metrics_port_text": (launcher_main, ["--data-dir", ".", "--metrics-port", "x"], ["--metrics-port", "invalid int"]),
    # the deployment commands (issue 22) and the other commands, e.g. a flag given without its value
    "deploy_supernode_superlink_without_value": (supernode.main, ["--superlink"], ["astroscale-fl deploy supernode", "--superlink"]),
    "deploy_superlink_certs_without_value": (superlink.main, ["--certs"], ["astroscale-fl deploy superlink", "--certs"]),
    "deploy_local_nodes_text": (local.main, ["--nodes", "two"], ["astroscale-fl deploy local", "--nodes"]),
    "deploy_certs_no_dir": (certs_main, [], ["deploy certs"]),
    "app_no_dir": (flower_app.main, [], ["astroscale-fl app", "DIR"]),
    "node_data_no_nodes": (node_data_main, [], ["astroscale-fl node-data", "--nodes"]),
    "status_timeout_text": (centre_status_main, ["--timeout", "soon"], ["astroscale-fl status", "--timeout"]),
    "preprocess_no_input": (preprocess_main, [], ["astroscale-fl preprocess", "--input"]),
    "compare_no_dir": (compare_main, [], ["astroscale-fl compare"]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_usage_mistake_is_one_line(case, capsys):
    entry, argv, words = CASES[case]
    with pytest.raises(SystemExit) as raised:
        entry(argv)
    captured = capsys.readouterr()
    assert raised.value.code == 2 and not captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "usage:" not in captured.err, captured.err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("entry", [serve_main, predict_main, ingest_main], ids=["serve", "predict", "ingest"])
def test_help_still_prints_the_usage(entry, capsys):
    with pytest.raises(SystemExit) as raised:
        entry(["--help"])
    assert raised.value.code == 0 and capsys.readouterr().out.startswith("usage: ")
