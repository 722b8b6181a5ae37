"""The Ray backend never hangs: a fresh local Ray whatever files other runs left, a one-line error
when a configured cluster does not answer, and SIGTERM / SIGINT end a Ray run promptly."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest

from astroscale_fl.errors import ConfigError
from astroscale_fl.federation import ray_backend
from astroscale_fl.federation.rounds import FederationError
from tests.conftest import CLI, ROOT

# Runs init_ray in a child process (as `train federation.backend=ray` does, inside stop_on_signals),
# prints the GCS address it joined, then keeps Ray busy until a signal arrives.
CHILD = textwrap.dedent("""
    import sys, time
    from astroscale_fl.federation.ray_backend import init_ray, stop_on_signals
    address, timeout, hold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    with stop_on_signals():
        print("connecting", flush=True)
        init_ray({"address": address, "logging_level": "ERROR", "log_to_driver": False}, timeout)
        import ray
        print("joined", ray.get_runtime_context().gcs_address, flush=True)
        deadline = time.monotonic() + hold
        while time.monotonic() < deadline:
            time.sleep(0.1)
        ray.shutdown()
    print("done", flush=True)
""")


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def ray_tmpdir():
    """A short RAY_TMPDIR (Ray's socket paths must stay under 108 bytes) whose ``ray/ray_current_cluster``
    names a dead cluster, as an earlier ``ray start`` leaves it: plain ``ray.init()`` would join that."""
    path = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    (path / "ray").mkdir()
    (path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_free_port()}\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _child(tmp_path, ray_tmpdir, address: str, timeout: float, hold: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, address, str(timeout), str(hold)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize("bad", ["garbage::://", "12345", "host:0", "host:99999", "ray://", ":6379"])
def test_malformed_addresses_are_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match=r"^federation.ray_address: expected HOST:PORT or ray://HOST:PORT .*got"):
        ray_backend.wait_for_ray(bad, 1.0)


def test_addresses_that_parse():
    assert ray_backend.parse_ray_address("ray://head.example.org:10001") == ("head.example.org", 10001)
    assert ray_backend.parse_ray_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert ray_backend.parse_ray_address("[::1]:6379") == ("::1", 6379)


def test_a_dead_address_fails_within_the_connect_timeout():
    started = time.monotonic()
    with pytest.raises(FederationError, match=r"127.0.0.1:\d+: no Ray cluster answered within 1.5 s \(federation.ray_connect_timeout"):
        ray_backend.wait_for_ray(f"127.0.0.1:{_free_port()}", 1.5)
    assert 1.4 < time.monotonic() - started < 4


def test_connect_timeout_is_validated():
    from astroscale_fl import config, run_config

    for bad in ("0", "-1", "inf", "nan"):
        with pytest.raises(ConfigError, match="federation.ray_connect_timeout: expected a positive number of seconds"):
            run_config.validate(config.compose([f"federation.ray_connect_timeout={bad}"]))
    assert run_config.validate(config.compose([])).federation.ray_connect_timeout == 30.0


@pytest.mark.slow
def test_a_port_that_is_not_ray_fails_in_one_line_within_the_timeout(tmp_path, ray_tmpdir):
    with socket.socket() as silent:  # accepts TCP connections and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        proc = _child(tmp_path, ray_tmpdir, f"127.0.0.1:{port}", 4)
        assert proc.stdout.readline() == "connecting\n", proc.stderr.read()[-2000:]
        started = time.monotonic()
        code, out, err = _finish(proc, 60)
        took = time.monotonic() - started
    assert code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: federation.ray_address 127.0.0.1:{port}: no Ray cluster answered "
                     "within 4 s (federation.ray_connect_timeout)"]
    assert took < 4 + 3


@pytest.mark.slow
def test_null_address_starts_a_fresh_local_ray_and_sigterm_stops_it_promptly(tmp_path, ray_tmpdir):
    stale = (ray_tmpdir / "ray" / "ray_current_cluster").read_text().strip()
    proc = _child(tmp_path, ray_tmpdir, "local", 30, hold=600)
    assert proc.stdout.readline() == "connecting\n", proc.stderr.read()[-2000:]
    line = proc.stdout.readline()  # Ray is up and running
    assert line.startswith("joined"), proc.stderr.read()[-2000:]
    assert line.split()[1] != stale  # a fresh local instance, not the cluster the stale file names
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    code, _, err = _finish(proc, 30)
    assert code == 128 + signal.SIGTERM and time.monotonic() - sent < ray_backend.SHUTDOWN_GRACE + 5
    assert f"interrupted (signal {int(signal.SIGTERM)}): stopping Ray" in err


@pytest.mark.slow
def test_sigint_stops_a_run_waiting_for_a_ray_cluster_promptly(tmp_path, ray_tmpdir):
    with socket.socket() as silent:  # a port that accepts and never answers: Ray would wait on it
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        proc = _child(tmp_path, ray_tmpdir, f"127.0.0.1:{silent.getsockname()[1]}", 300, hold=600)
        assert proc.stdout.readline() == "connecting\n", proc.stderr.read()[-2000:]
        time.sleep(1)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        code, _, err = _finish(proc, 30)
    assert code == 128 + signal.SIGINT and time.monotonic() - sent < ray_backend.SHUTDOWN_GRACE + 5, err[-2000:]
    assert f"interrupted (signal {int(signal.SIGINT)}): stopping Ray" in err


@pytest.mark.slow
def test_train_cli_with_a_dead_ray_address_exits_with_one_line(tmp_path, ray_tmpdir):
    port = _free_port()
    started = time.monotonic()
    out = subprocess.run([*CLI, "train", "federation.backend=ray", f"federation.ray_address=127.0.0.1:{port}",
                          "federation.ray_connect_timeout=2", "federation.num_rounds=1", f"hydra.run.dir={tmp_path}/run"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": str(ray_tmpdir)})
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: federation.ray_address 127.0.0.1:{port}: no Ray "
                                                          "cluster answered within 2 s")
    assert time.monotonic() - started < 120
