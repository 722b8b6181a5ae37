"""End-to-end deployment: SuperLink + SuperNodes with TLS and node authentication on 127.0.0.1.

Run with ``pytest tests/deploy -q -m slow``. The tests share one SuperLink (module fixture) and
run in file order: 2-node run with /metrics, refused node, resume, killed node.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from tests.deploy.conftest import TINY, checkpoint_round, free_port, online_nodes, scrape, wait_for, wait_run, weights

pytestmark = pytest.mark.slow

ROUNDS3 = [*TINY, "federation.num_nodes=2", "federation.num_rounds=3"]


@pytest.fixture(scope="module")
def uninterrupted(federation, tmp_path_factory):
    """A 3-round run on 2 nodes (TLS + node auth), with /metrics scraped while it runs."""
    out = tmp_path_factory.mktemp("run3")
    port = free_port()
    proc = federation.run([*ROUNDS3, f"federation.metrics_port={port}"], out)
    seen: list[float] = []
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            value = scrape(port).get("astroscale_fl_rounds_completed_total")
        except OSError:
            value = None
        if value is not None and (not seen or value != seen[-1]):
            seen.append(value)
        time.sleep(0.3)
    wait_run(proc, fed=federation)
    return out, seen


def test_two_nodes_tls_auth_three_rounds_and_metrics(uninterrupted):
    out, seen = uninterrupted
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 3 and metrics["nodes_failed"] == 0
    assert math.isfinite(metrics["test_r2"])
    assert (out / "history.csv").read_text().count("\n") == 4
    assert (out / "model" / "weights.pt").is_file()
    # scraped during the run: the completed-rounds counter advanced (0 -> ... -> >= 2)
    assert len(seen) >= 2 and seen == sorted(seen), seen
    assert seen[-1] >= 2, seen


def test_status_lists_runs_and_nodes(federation, uninterrupted, capsys, monkeypatch):
    import subprocess
    import sys

    from astroscale_fl.deploy.cli import main as deploy_cli
    from tests.conftest import ROOT

    connect = ["--superlink", f"127.0.0.1:{federation.port}", "--root-certificates", str(federation.certs / "ca.crt")]
    out = subprocess.run([sys.executable, "-m", "astroscale_fl.deploy.cli", "status", *connect, "--json"],
                         capture_output=True, text=True, cwd=ROOT, env=federation.env, timeout=120)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert sum(n["status"] == "online" for n in status["nodes"]) >= 2
    assert any(r["status"].startswith("finished") for r in status["runs"])
    # the tables: the same command in this process (its queries are still `flwr` processes)
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.setenv("PATH", federation.env["PATH"])
    monkeypatch.setenv("FLWR_HOME", federation.env["FLWR_HOME"])
    capsys.readouterr()
    assert deploy_cli(["status", *connect]) == 0
    table = capsys.readouterr().out
    assert "SuperNodes" in table and "Runs" in table


def test_node_without_authorised_key_is_refused(federation):
    # key 4 exists but was never registered with `flwr supernode register`
    proc = federation.start_node(9, data_index=3, key_index=4)
    try:
        code = proc.wait(timeout=60)
    except Exception:
        code = None
    log = federation.log_text("supernode-9")
    assert code not in (None, 0), f"unauthorised SuperNode kept running:\n{log[-1500:]}"
    nodes = federation.flwr("supernode", "ls", "local", "--format", "json").stdout
    assert json.loads(nodes[nodes.index("{"):])["nodes"].__len__() == 2


def test_resume_after_round_two_matches_uninterrupted(federation, uninterrupted, tmp_path):
    reference, _ = uninterrupted
    out = tmp_path / "resumable"
    proc = federation.run([*ROUNDS3, "federation.metrics_port=0"], out)
    try:
        wait_for(lambda: checkpoint_round(out) >= 2 or proc.poll() is not None, 200, "round 2's checkpoint")
    finally:  # stop the server after round 2: `flwr stop` the run
        runs = federation.flwr("ls", "local", "--format", "json").stdout
        for run in json.loads(runs[runs.index("{"):])["runs"]:
            if run.get("status", "").startswith(("running", "starting", "pending")):
                federation.flwr("stop", str(run["run-id"]), "local", check=False)
        proc.wait(timeout=60)
    stopped_at = checkpoint_round(out)
    assert stopped_at >= 2
    if stopped_at == 2:
        assert not (out / "metrics.json").exists()
    proc = federation.run([*ROUNDS3, "federation.metrics_port=0", f"federation.resume_from={out}"], out)
    wait_run(proc, fed=federation)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_round"] == stopped_at and metrics["rounds"] == 3
    ref, got = weights(reference), weights(out)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name], got[name]), name


def test_killed_node_does_not_stall_the_run(federation, tmp_path):
    federation.register(3)
    federation.start_node(3)
    wait_for(lambda: len(online_nodes(federation)) >= 3, 60, "3 nodes online")
    out = tmp_path / "killed"
    proc = federation.run([*TINY, "federation.num_nodes=3", "federation.num_rounds=2", "federation.min_replies=2",
                           "federation.round_timeout=30", "federation.metrics_port=0"], out)
    wait_for(lambda: checkpoint_round(out) >= 1 or proc.poll() is not None, 200, "round 1")
    assert proc.poll() is None, "the run ended before node 3 was killed"
    federation.kill_node(3)  # round 2 waits for its reply until round_timeout, then goes on with the other two
    wait_run(proc, fed=federation)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 2
    assert metrics["nodes_failed"] >= 1

