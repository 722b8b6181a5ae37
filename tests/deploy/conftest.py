"""Fixtures for deployment tests: real flower-superlink / flower-supernode processes on 127.0.0.1.

Every process is started in its own process group (astroscale-fl deploy superlink/supernode) and stopped (SIGTERM,
then SIGKILL) when the fixture ends, also when a test fails.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from astroscale_fl.deploy.local import LocalFederation, free_port, install_cleanup_handlers

# Tiny rounds: ~1,900 stars, a 16-unit MLP, no federated evaluation (one message per node per round).
TINY = ["model.widths=[16]", "task.min_parallax_snr=50", "federation.fraction_evaluate=0", "output.publish=false"]
RUN_TIMEOUT = 240.0


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """SuperLink (TLS + node auth) with 3 node keys and data for 3 nodes; 2 SuperNodes running."""
    install_cleanup_handlers()  # pytest killed by SIGTERM (CI timeout) skips finalizers: stop the processes anyway
    fed = LocalFederation(tmp_path_factory.mktemp("federation"))
    try:
        fed.prepare(3, [*TINY, "federation.num_nodes=3"], num_keys=4)
        fed.start(2)
        yield fed
    finally:
        fed.close()


@pytest.fixture(scope="session")
def warm_fed(tmp_path_factory):
    """SuperLink (TLS + node auth) with 4 registered node keys and data for 3 nodes; nodes 1 and 2 running
    with the warm runtime and metrics. One per session: the privacy deployment tests and the warm-runtime
    tests share it (each run is its own Flower run; what a test changes it undoes or checks per node)."""
    install_cleanup_handlers()
    fed = LocalFederation(tmp_path_factory.mktemp("warm"))
    try:
        fed.prepare(3, [*TINY, "federation.num_nodes=3"], num_keys=4)
        fed.start_superlink()
        for i in (1, 2, 3, 4):
            fed.register(i)
        fed.metrics_ports = {i: free_port() for i in (1, 2)}
        for i in (1, 2):
            fed.start_node(i, warm=True, metrics_port=fed.metrics_ports[i])
        wait_for(lambda: online_nodes(fed) >= {fed.node_ids[1], fed.node_ids[2]}, 60, "nodes 1 and 2 online")
        yield fed
    finally:
        fed.close()


def online_nodes(fed: LocalFederation) -> set[str]:
    """Ids of the SuperNodes the SuperLink lists as online (`flwr supernode ls`)."""
    out = fed.flwr("supernode", "ls", "local", "--format", "json", check=False).stdout
    try:
        nodes = json.loads(out[out.index("{"):])["nodes"]
    except ValueError:
        return set()
    return {str(n.get("node-id")) for n in nodes if n.get("status") == "online"}


def wait_run(proc, timeout: float = RUN_TIMEOUT, fed: LocalFederation | None = None) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except Exception:
        proc.kill()
        raise AssertionError(f"run did not finish within {timeout:.0f} s\n{_logs(fed)}") from None
    assert code == 0, f"flwr run exited {code}\n{_logs(fed)}"


def _logs(fed: LocalFederation | None) -> str:
    if fed is None:
        return ""
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(fed.logs.glob("*.log")))


def scrape(port: int) -> dict[str, float]:
    """Samples of a Prometheus /metrics page (name{labels} -> value)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoint_round(out_dir: Path) -> int:
    path = out_dir / "checkpoint.npz"
    if not path.is_file():
        return 0
    try:
        with np.load(path) as npz:
            return int(json.loads(bytes(npz["__meta__"]).decode())["round"])
    except Exception:  # being replaced right now
        return 0


def weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / "model" / "weights.pt", weights_only=True)


__all__ = ["TINY", "checkpoint_round", "free_port", "online_nodes", "scrape", "wait_for", "wait_run", "weights"]
