"""The wheel, installed into a fresh venv and run from an empty folder, deploys and runs as a Flower app,
and writes nothing inside its installation.

The venv reuses this environment's dependencies (torch, flwr, ...) through a ``.pth`` line (no
download, no second torch); the wheel goes in with ``pip install --no-deps --no-index``, and the
Flower console scripts get launchers bound to the new interpreter (as pip writes them), so every
process Flower starts imports the installed package, never this checkout.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow
FLOWER_SCRIPTS = ("flwr", "flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp",
                  "flwr-clientapp", "flwr-simulation")


def _free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: (size, mtime in ns)."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _make_venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site_dir = next((venv / "lib").glob("python3.*/site-packages"))
    shared = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (site_dir / "_shared_deps.pth").write_text("\n".join(shared) + "\n")  # after the venv's own site-packages
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300, env=_clean_env())
    for ep in importlib.metadata.distribution("flwr").entry_points:
        if ep.group == "console_scripts" and ep.name in FLOWER_SCRIPTS:
            module, _, attr = ep.value.partition(":")
            script = venv / "bin" / ep.name
            script.write_text(f"#!{python}\nimport sys\nfrom {module} import {attr}\nsys.exit({attr}())\n")
            script.chmod(0o755)
    return venv


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OUT_DIR", "FLWR_HOME", "VIRTUAL_ENV")
           and not k.startswith("FLWR_")}
    return {**env, **extra}


def _local_superlinks(flwr_home: Path) -> list[int]:
    """PIDs of the local SuperLinks `flwr run` started with this FLWR_HOME (their --log-file lies in it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "flower-superlink" in cmd and str(flwr_home) in cmd:
            pids.append(int(proc.name))
    return pids


def test_wheel_deploys_and_runs_as_a_flower_app_from_an_empty_folder(tmp_path):
    started = time.monotonic()
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("astroscale_fl-*.whl"))
    venv = _make_venv(tmp_path, wheel)
    site_dir = next((venv / "lib").glob("python3.*/site-packages"))
    before = _snapshot(site_dir)
    print(f"\nwheel built and installed in {time.monotonic() - started:.1f} s")

    work = tmp_path / "empty"
    work.mkdir()
    flwr_home = tmp_path / "flwr-home"
    env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", HOME=str(tmp_path / "home"),
                     XDG_CACHE_HOME=str(tmp_path / "cache"), FLWR_HOME=str(flwr_home),
                     FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(_free_port()), FLWR_LOCAL_CONTROL_API_PORT=str(_free_port()))
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import astroscale_fl, server.app; print(astroscale_fl.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.startswith(str(site_dir)), where.stdout + where.stderr  # the wheel's code, not this checkout's

    # 1. a whole deployment (TLS, node auth, warm SuperNodes) from the empty folder
    t0 = time.monotonic()
    deploy = subprocess.run([str(venv / "bin" / "astroscale-fl"), "deploy", "local", "--nodes", "2", "federation.num_rounds=2"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=900)
    print(f"deploy local --nodes 2 federation.num_rounds=2: exit {deploy.returncode}, {time.monotonic() - t0:.1f} s")
    assert deploy.returncode == 0, (deploy.stdout + deploy.stderr)[-3000:]
    (out_dir,) = (work / "outputs").glob("deploy-*")
    assert len(json.loads((out_dir / "metrics.json").read_text())) > 0 and (out_dir / "model").is_dir()

    # 2. `flwr run` on the folder `astroscale-fl app` wrote: a local simulation, in this environment
    app = subprocess.run([str(venv / "bin" / "astroscale-fl"), "app", "app"], cwd=work, env=env, capture_output=True,
                         text=True, timeout=120)
    assert app.returncode == 0, app.stderr
    assert 'FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 flwr run app --stream --federation-config "num-supernodes=5"' in app.stdout
    t0 = time.monotonic()
    try:
        run = subprocess.run([str(venv / "bin" / "flwr"), "run", "app", "--stream", "--federation-config", "num-supernodes=5",
                              "--run-config", 'overrides="federation.num_rounds=2" output-dir="flwr-run"'],
                             cwd=work, env={**env, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"},
                             capture_output=True, text=True, timeout=900)
        took = time.monotonic() - t0
        home_bytes = sum(p.stat().st_size for p in flwr_home.rglob("*") if p.is_file())
        print(f"flwr run app (5 simulated SuperNodes, 2 rounds): exit {run.returncode}, {took:.1f} s; "
              f"FLWR_HOME {home_bytes / 1e6:.2f} MB")
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    finally:
        for pid in _local_superlinks(flwr_home):  # the SuperLink `flwr run` left running, as the README says to stop it
            os.kill(pid, signal.SIGTERM)
    assert len(json.loads((work / "flwr-run" / "metrics.json").read_text())) > 0
    assert not (flwr_home / "runtime-envs").exists() or not any((flwr_home / "runtime-envs").iterdir())  # nothing installed
    assert home_bytes < 50e6

    # 3. nothing written inside the installation, nor into the checkout
    assert _snapshot(site_dir) == before
    shutil.rmtree(venv, ignore_errors=True)
