"""Fast checks of the deployment pieces (no processes): checkpoints, reply validation, metrics, caches."""

from __future__ import annotations

import math
import urllib.request
from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from astroscale_fl.deploy.local import free_port, run_config_arg
from astroscale_fl.errors import ConfigError
from astroscale_fl.federation import checkpoint
from astroscale_fl.federation.history import RoundRecord
from astroscale_fl.federation.observability import RunMetrics, serve
from astroscale_fl.federation.rounds import check_reply

GLOBAL = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


def _reply(w, b, loss=0.5) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"w": Array(np.asarray(w, np.float32)), "b": Array(np.asarray(b, np.float32))}),
                       "metrics": MetricRecord({"num-examples": 10, "train_loss": loss})})


def test_check_reply_accepts_rejects():
    assert check_reply(_reply(np.ones((2, 2)), np.ones(2)), GLOBAL, None) is None
    assert "non-finite" in check_reply(_reply(np.full((2, 2), np.nan), np.ones(2)), GLOBAL, None)
    assert "non-finite metric" in check_reply(_reply(np.ones((2, 2)), np.ones(2), loss=math.inf), GLOBAL, None)
    assert "update norm" in check_reply(_reply(np.full((2, 2), 10.0), np.ones(2)), GLOBAL, 5.0)
    assert check_reply(_reply(np.full((2, 2), 1.0), np.ones(2)), GLOBAL, 5.0) is None  # norm sqrt(6) < 5
    assert "shape" in check_reply(_reply(np.ones((3, 2)), np.ones(2)), GLOBAL, None)


def test_checkpoint_roundtrip_and_compatibility(tmp_path):
    rows = [RoundRecord(round=1, train_loss=0.3, wall_seconds=2.0, nodes_sampled=2), RoundRecord(round=2)]
    cfg = {"task": {"name": "t"}, "model": {}, "strategy": {"name": "fedadam"}, "partition": {}, "privacy": {}, "train": {},
           "preprocess": {}, "seed": 0, "federation": {"num_rounds": 3}}
    state = {"m": np.arange(4.0), "v": np.ones(4)}
    ckpt = checkpoint.Checkpoint(2, OrderedDict(GLOBAL), state, rows, {"features": ["a"]}, cfg, {"train_rows": 5})
    path = checkpoint.save(tmp_path, ckpt)
    assert path.name == "checkpoint.npz" and not list(tmp_path.glob(".*tmp"))
    back = checkpoint.load(tmp_path)
    assert back.round == 2 and list(back.model) == ["w", "b"] and np.array_equal(back.strategy["m"], state["m"])
    assert back.history[0].train_loss == 0.3 and math.isnan(back.history[1].train_loss)
    assert back.pipeline == {"features": ["a"]} and back.extra["train_rows"] == 5
    checkpoint.check_compatible(back, cfg, tmp_path)
    with pytest.raises(ConfigError, match="strategy differs"):
        checkpoint.check_compatible(back, {**cfg, "strategy": {"name": "fedavg"}}, tmp_path)
    with pytest.raises(ConfigError, match="beyond"):
        checkpoint.check_compatible(back, {**cfg, "federation": {"num_rounds": 1}}, tmp_path)


def test_metrics_names_and_http():
    metrics = RunMetrics()
    port = free_port()
    assert serve(metrics, port, "127.0.0.1")
    metrics.round_started(1)
    metrics.round_finished(RoundRecord(round=1, wall_seconds=1.5, nodes_sampled=3, nodes_replied=2, nodes_failed=1,
                                       bytes_down=100, bytes_up=50, train_loss=0.2, test_r2=0.9), declined=1, rejected=2,
                           epsilon=2.0)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in ("astroscale_fl_rounds_completed_total 1.0", "astroscale_fl_current_round 1.0",
                 "astroscale_fl_nodes_failed_total 1.0", "astroscale_fl_nodes_declined_total 1.0", "astroscale_fl_replies_rejected_total 2.0",
                 "astroscale_fl_download_bytes_total 100.0", "astroscale_fl_upload_bytes_total 50.0",
                 "astroscale_fl_round_duration_seconds_count 1.0", "astroscale_fl_test_r2 0.9",
                 "astroscale_fl_privacy_epsilon_max 2.0"):
        assert line in text, line
    second = RunMetrics()  # a second run in the same process takes the server over
    assert serve(second, port, "127.0.0.1")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "astroscale_fl_rounds_completed_total 0.0" in text



def test_run_config_arg_quotes():
    arg = run_config_arg(["model.widths=[16]", 'task.path="a b"'], "/tmp/out")
    assert arg.startswith('overrides="model.widths=[16] ') and 'output-dir="/tmp/out"' in arg and '\\"' in arg


def test_certs_and_node_keys(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from astroscale_fl.deploy.certs import make_all

    paths = make_all(tmp_path, 2)
    cert = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    cert.verify_directly_issued_by(ca)
    load_ssh_private_key(paths["node-1"].read_bytes(), None)
    load_ssh_public_key(paths["node-2.pub"].read_bytes())
    assert (paths["node-1"].stat().st_mode & 0o777) == 0o600
