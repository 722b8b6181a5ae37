"""Warm ClientApp runtime, node metrics and the node's privacy floor, with real processes on 127.0.0.1.

One SuperLink (TLS + node auth), the session's ``warm_fed`` (tests/deploy/conftest.py, shared with the
privacy deployment tests); tests run in file order:
warm run (metrics, status, permissions) -> privacy floor -> killed launcher -> cold run, same weights.
Warm nodes run the fast-poll SuperNode (`astroscale-fl node supernode`) and the launcher's app
cache; the cold ones plain `flower-supernode` and `flwr-clientapp`.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from astroscale_fl.deploy.local import LocalFederation
from astroscale_fl.deploy.node_status import read_status
from tests.conftest import ROOT
from tests.deploy.conftest import TINY, online_nodes, scrape, wait_for, wait_run, weights

pytestmark = pytest.mark.slow

PLAIN = [*TINY, "federation.num_nodes=2", "federation.num_rounds=2", "federation.fraction_evaluate=1", "federation.metrics_port=0"]
SLOW_MACHINE = 480.0  # seconds for a run: CI machines are shared


def node_dir(fed: LocalFederation, i: int) -> Path:
    return fed.nodes_dir / f"node-{i}"


def group_commands(fed: LocalFederation, i: int) -> list[str]:
    """Command lines of node ``i``'s processes (its `deploy supernode` leads their process group)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == fed.nodes[i].pid:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def launcher_pid(fed: LocalFederation, i: int) -> int:
    return int(json.loads((node_dir(fed, i) / ".astroscale" / "launcher.json").read_text())["pid"])


@pytest.fixture(scope="module")
def warm_run(warm_fed, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm-run")
    wait_run(warm_fed.run(PLAIN, out), timeout=SLOW_MACHINE, fed=warm_fed)
    return out


def test_warm_run_one_message_per_round_and_node_metrics(warm_fed, warm_run):
    history = list(csv.DictReader((warm_run / "history.csv").open()))
    assert len(history) == 2 and all(r["eval_r2"] for r in history)  # eval of both rounds' models
    for i in (1, 2):
        kinds = [(m["kind"], m["round"]) for m in read_status(node_dir(warm_fed, i))["messages"]]
        assert kinds[-3:] == [("train", 1), ("train", 2), ("evaluate", 2)], kinds  # one message per round + final eval
        samples = scrape(warm_fed.metrics_ports[i])
        assert samples["astroscale_node_rounds_trained_total"] >= 2
        assert samples["astroscale_node_rows"] > 100
        assert samples["astroscale_node_last_train_seconds"] > 0
        assert samples["astroscale_node_clientapps_started_total"] >= 4  # query, 2 x train, evaluate: all forked warm
        assert samples["astroscale_node_declines_total"] == 0
    assert "flower-superexec" not in warm_fed.log_text("supernode-1")
    assert any("astroscale_fl.cli node supernode --poll-interval" in c for c in group_commands(warm_fed, 1))  # fast polls
    assert "reused by every message" in warm_fed.log_text("supernode-1")  # the launcher imported the FAB's ClientApp
    out = subprocess.run([sys.executable, "-m", "astroscale_fl.cli", "node", "status", "--data-dir", str(node_dir(warm_fed, 1)),
                          "--json"], capture_output=True, text=True, cwd=ROOT, env=warm_fed.env, timeout=60)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["launcher"]["pid"] == launcher_pid(warm_fed, 1) and status["rounds_trained"] >= 2
    table = subprocess.run([sys.executable, "-m", "astroscale_fl.cli", "node", "status", "--data-dir", str(node_dir(warm_fed, 1))],
                           capture_output=True, text=True, cwd=ROOT, env=warm_fed.env, timeout=60)
    assert "rounds trained" in table.stdout and "warm launcher     pid" in table.stdout


def _listening(pid: int) -> list[tuple[str, int]]:
    """(address hex, port) of the TCP sockets process ``pid`` listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                addr, port = cols[1].rsplit(":", 1)
                found.append((addr, int(port, 16)))
    return found


def test_warm_process_is_reachable_only_from_the_node(warm_fed, warm_run):
    pid = launcher_pid(warm_fed, 1)
    assert _listening(pid) == [("0100007F", warm_fed.metrics_ports[1])]  # only its metrics, on 127.0.0.1
    state = node_dir(warm_fed, 1) / ".astroscale"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("superexec.secret", "launcher.json", "node-status.json"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    # a local process without the SuperExec secret gets no task token from the SuperNode's Runtime API
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
    from flwr.supercore.retry.retry_invoker import RetryInvoker

    from astroscale_fl.deploy.launcher import runtime_client

    address = json.loads((state / "launcher.json").read_text())["runtime_api_address"]
    no_retry = RetryInvoker(lambda: iter([0.0]), (), max_tries=1, max_time=None)
    for secret in (None, b"not-the-secret"):
        client = runtime_client(address, secret=secret, retry_invoker=no_retry)
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client.AcquireTask(AcquireTaskRequest(supported_task_types=["flwr-clientapp"]))
        client.close()
        assert refused.value.response.status_code in (401, 403)


def test_node_privacy_floor_declines_weaker_rounds(warm_fed, tmp_path):
    warm_fed.start_node(3, warm=True, node_config="require-dp=true max-rounds=50")
    try:
        out = tmp_path / "floor"
        wait_run(warm_fed.run([*PLAIN, "federation.num_nodes=3"], out), timeout=SLOW_MACHINE, fed=warm_fed)
    finally:
        warm_fed.kill_node(3, signal.SIGTERM)  # a clean leave: the next runs do not wait for it
    history = list(csv.DictReader((out / "history.csv").open()))
    assert [int(r["nodes_declined"]) for r in history] == [1, 1]
    assert [int(r["nodes_replied"]) for r in history] == [2, 2]
    assert all(r["eval_r2"] for r in history)
    status = read_status(node_dir(warm_fed, 3))
    assert status["declines"] == 2 and "require-dp" in status["last_decline"]
    assert status.get("rounds_trained", 0) == 0
    assert sum(m["kind"] == "evaluate" for m in status["messages"]) == 2  # declined round: evaluated on its own


def test_node_with_trusted_entities_refuses_an_unsigned_app(warm_fed, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    trusted = tmp_path / "trusted.yaml"
    trusted.write_text(f'archive-signer: "{key}"\n')
    handled = len(read_status(node_dir(warm_fed, 3)).get("messages", []))
    warm_fed.start_node(3, key_index=4, warm=False, trusted_entities=str(trusted))  # a node id of its own
    try:
        out = tmp_path / "unsigned"
        wait_run(warm_fed.run([*PLAIN, "federation.num_nodes=3", "federation.num_rounds=1"], out), timeout=SLOW_MACHINE, fed=warm_fed)
    finally:
        warm_fed.kill_node(3, signal.SIGTERM)
    logs = f"{warm_fed.log_text('supernode-3')[-3000:]}\n{(out / 'history.csv').read_text()}"
    assert "could not be verified" in warm_fed.log_text("supernode-3"), logs
    assert json.loads((out / "metrics.json").read_text())["nodes_failed"] == 1, logs
    assert len(read_status(node_dir(warm_fed, 3)).get("messages", [])) == handled  # our ClientApp never ran there


@pytest.fixture
def ledgers_restored(warm_fed):
    """The nodes' ledger files, put back as they were after the test: the session's other DP tests
    (which share warm_fed, in any order) must not find the budgets spent by this one."""
    from astroscale_fl.privacy import LEDGER_FILENAME

    files = [node_dir(warm_fed, i) / ".astroscale" / LEDGER_FILENAME for i in (1, 2, 3)]
    before = {f: f.read_bytes() if f.exists() else None for f in files}
    yield
    for f, content in before.items():
        if content is None:
            f.unlink(missing_ok=True)
        else:
            f.write_bytes(content)


def test_killed_launcher_fails_the_round_and_keeps_the_ledger(warm_fed, tmp_path, ledgers_restored):
    from astroscale_fl.privacy import LEDGER_FILENAME, PrivacyLedger

    ledger_file = node_dir(warm_fed, 2) / ".astroscale" / LEDGER_FILENAME
    steps = lambda: PrivacyLedger.load(ledger_file).steps if ledger_file.exists() else 0  # noqa: E731
    before = steps()
    out = tmp_path / "killed"
    dp = ["privacy=dp_sgd", "privacy.target_epsilon=null", "privacy.noise_multiplier=1.0", "train.local_epochs=30",
          "train.batch_size=32", "federation.round_timeout=30", "federation.min_replies=1"]
    proc = warm_fed.run([*PLAIN, "federation.num_rounds=3", *dp], out)

    seen: list[dict] = []

    def training_after_spend():  # node 2 is inside round >= 2, after that round's write-ahead spend
        busy = read_status(node_dir(warm_fed, 2)).get("in_progress") or {}
        if (busy.get("kind") == "train" and busy.get("round", 0) >= 2 and ledger_file.exists()
                and ledger_file.stat().st_mtime > busy["since"]):
            seen.append(busy)
            return True
        return False

    wait_for(lambda: training_after_spend() or proc.poll() is not None, SLOW_MACHINE, "node 2 training round 2", interval=0.02)
    if proc.poll() is not None:
        raise AssertionError(f"run ended before node 2 trained round 2\n{warm_fed.log_text('run-' + str(len(list(warm_fed.logs.glob('run-*.log')))))[-3000:]}")
    spent_at_kill, killed_round = steps(), seen[-1]["round"]
    os.kill(launcher_pid(warm_fed, 2), signal.SIGKILL)  # the warm process; its ClientApp child dies with it
    wait_run(proc, timeout=SLOW_MACHINE, fed=warm_fed)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"] == 3 and metrics["nodes_failed"] >= 1
    history = list(csv.DictReader((out / "history.csv").open()))
    assert int(history[killed_round - 1]["nodes_failed"]) >= 1
    messages = read_status(node_dir(warm_fed, 2))["messages"]
    assert not any(m["kind"] == "train" and m["round"] == killed_round and not m.get("failed") for m in messages[-4:])
    # the killed round's spend was written before training and stands; the ledger file is whole
    assert steps() >= spent_at_kill > before
    wait_for(lambda: launcher_pid(warm_fed, 2) != 0 and _alive(launcher_pid(warm_fed, 2)), 120, "launcher restarted")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def test_cold_nodes_give_the_warm_runs_weights(warm_fed, warm_run, tmp_path):
    warm_fed.kill_nodes([1, 2], signal.SIGTERM)
    # same data directories; node 2 with key 3: after its killed launcher the old node id may still be
    # active at the SuperLink until its heartbeat expires (two nodes: reply order does not change a sum)
    warm_fed.start_node(1, warm=False)
    warm_fed.start_node(2, data_index=2, key_index=3, warm=False)
    wait_for(lambda: any("flower-supernode" in c for c in group_commands(warm_fed, 1)), 60, "plain flower-supernode")
    both = {warm_fed.node_ids[1], warm_fed.node_ids[3]}
    wait_for(lambda: online_nodes(warm_fed) >= both, 120, "the cold nodes online")  # a run started sooner may miss one
    assert not any("node supernode" in c for c in group_commands(warm_fed, 1) + group_commands(warm_fed, 2))
    out = tmp_path / "cold"
    wait_run(warm_fed.run(PLAIN, out), timeout=SLOW_MACHINE, fed=warm_fed)
    warm, cold = weights(warm_run), weights(out)
    assert warm.keys() == cold.keys()
    for name in warm:
        assert torch.equal(warm[name], cold[name]), name
    assert json.loads((out / "metrics.json").read_text())["test_r2"] == json.loads((warm_run / "metrics.json").read_text())["test_r2"]
