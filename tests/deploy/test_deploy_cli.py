"""`astroscale-fl deploy ...` and `astroscale-fl app` without a federation: arguments, bad input, the
Flower app they write, the warm node's supervision (real child processes), where caches go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from astroscale_fl.data.node_dirs import node_state_dir
from astroscale_fl.deploy import flower_app, superlink, supernode
from astroscale_fl.errors import ConfigError
from tests.conftest import CLI, ROOT


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_app_writes_a_flower_app_that_flower_accepts(tmp_path):
    from flwr.cli.config_utils import load_and_validate

    out = _cli("app", "my-app", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'flwr run my-app --stream --federation-config "num-supernodes=5"' in out.stdout
    assert list((tmp_path / "my-app").iterdir()) == [tmp_path / "my-app" / "pyproject.toml"]
    config, warnings = load_and_validate(tmp_path / "my-app" / "pyproject.toml")  # imports the components too
    assert warnings == []
    assert config["tool"]["flwr"]["app"]["components"] == {"serverapp": "server.app:app", "clientapp": "clients.app:app"}
    assert config["project"]["dependencies"] == []  # nothing for a SuperLink to install
    assert config["tool"]["flwr"]["app"]["config"] == {"overrides": "", "output-dir": ""}
    assert "federations" not in config["tool"]["flwr"]  # flwr run would rewrite the file to move it out
    assert _cli("app", "my-app", "--nodes", "3", cwd=tmp_path).returncode == 0  # its own file: rewritten
    assert 'num-supernodes=3"' in (tmp_path / "my-app" / "pyproject.toml").read_text()


def test_app_refuses_to_overwrite_a_foreign_pyproject_or_write_under_a_file(tmp_path):
    foreign = tmp_path / "project" / "pyproject.toml"
    foreign.parent.mkdir()
    foreign.write_text("[project]\nname = 'mine'\n")
    out = _cli("app", "project", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "pyproject.toml exists and was not written by `astroscale-fl app`" in out.stderr
    assert foreign.read_text() == "[project]\nname = 'mine'\n"
    (tmp_path / "file").write_text("x")
    out = _cli("app", "file/app", cwd=tmp_path)
    assert out.returncode == 2 and "is a file, not a directory" in out.stderr and out.stderr.count("\n") == 1
    with pytest.raises(ConfigError, match="is a file"):
        flower_app.write_app(tmp_path / "file", 5)


def test_superlink_command_line_and_refusals(tmp_path):
    args = superlink.parser().parse_args(["--certs", str(tmp_path), "--port", "9100"])
    with pytest.raises(ConfigError, match=r"server.pem not found \(`astroscale-fl deploy certs DIR`"):
        superlink.superlink_argv(args)
    for name in superlink.SERVER_FILES:
        (tmp_path / name).write_text("x")
    argv = superlink.superlink_argv(args)
    assert argv[0].endswith("flower-superlink") and argv[argv.index("--port") + 1] == "9100"
    assert {"--enable-supernode-auth", "--disable-runtime-dependency-installation", "--ssl-certfile"} <= set(argv)
    insecure = superlink.superlink_argv(superlink.parser().parse_args(["--insecure", "--no-node-auth", "--install-deps"]))
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure
    assert "--disable-runtime-dependency-installation" not in insecure
    out = _cli("deploy", "superlink", "--port", "9100", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr == "error: --certs DIR is required (or --insecure for a throwaway test)\n"


def test_supernode_defaults_to_warm_with_fast_polls_and_cold_is_plain(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"")
    (tmp_path / "ca.crt").write_text("x")
    base = ["--superlink", "127.0.0.1:9092", "--data-dir", str(tmp_path), "--ca", str(tmp_path / "ca.crt")]
    warm = supernode.parser().parse_args(base)
    assert warm.warm and supernode._checked(warm) == tmp_path.resolve()
    argv = supernode.supernode_argv(warm, tmp_path)
    assert argv[1:6] == ["-m", "astroscale_fl.cli", "node", "supernode", "--poll-interval"]
    assert argv[argv.index("--node-config") + 1] == f'data-dir="{tmp_path.resolve()}"'
    cold = supernode.parser().parse_args([*base, "--cold", "--node-config", "require-dp=true"])
    argv = supernode.supernode_argv(cold, tmp_path)
    assert argv[0].endswith("flower-supernode") and argv[argv.index("--node-config") + 1].endswith(" require-dp=true")
    assert supernode.supernode_argv(supernode.parser().parse_args([*base, "--cold", "--fast-poll"]), tmp_path)[1] == "-m"
    assert supernode.supernode_argv(supernode.parser().parse_args([*base, "--no-fast-poll"]), tmp_path)[0].endswith(
        "flower-supernode")
    for extra, message in ((["--cold", "--metrics-port", "9101"], "--metrics-port needs the warm runtime"),
                           (["--poll-interval", "9"], "--poll-interval: expected seconds"),
                           (["--key", str(tmp_path / "nope")], "node key not found"),
                           (["--metrics-port", "70000"], "--metrics-port: expected 0..65535")):
        with pytest.raises(ConfigError, match=message):
            supernode._checked(supernode.parser().parse_args([*base, *extra]))
    (tmp_path / "train.parquet").unlink()
    out = _cli("deploy", "supernode", *base, cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "train.parquet not found" in out.stderr
    assert not node_state_dir(tmp_path).exists()  # refused before anything was written


def test_warm_node_restarts_its_launcher_and_stops_both_on_sigterm(tmp_path):
    """The supervision loop with real child processes standing in for the SuperNode and the launcher."""
    starts = tmp_path / "starts"
    script = textwrap.dedent(f"""
        import signal, sys, time
        from astroscale_fl.deploy.supernode import WarmNode
        node = WarmNode([sys.executable, "-c", "import time; time.sleep(60)"],
                        [sys.executable, "-c", "open({str(starts)!r}, 'a').write('x')"], {{}})
        signal.signal(signal.SIGTERM, lambda *_: setattr(node, "stopping", True))
        sys.exit(node.run())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while (not starts.exists() or len(starts.read_text()) < 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(starts.read_text()) >= 3  # the launcher died and was started again, each time
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    leftovers = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == proc.pid:
                leftovers.append(entry.name)
        except OSError:
            continue
    assert leftovers == []  # the stand-in SuperNode stopped with it


def test_deploy_usage_and_unknown_command(tmp_path):
    out = _cli("deploy", cwd=tmp_path)
    assert out.returncode == 2 and "usage: astroscale-fl deploy {certs,superlink,supernode,local}" in out.stderr
    assert _cli("deploy", "--help", cwd=tmp_path).returncode == 0


def test_caches_live_in_the_user_cache_directory(monkeypatch, tmp_path):
    from astroscale_fl.simulator.cache import cache_dir

    monkeypatch.delenv("ASTROSCALE_FL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "astroscale-fl"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")  # XDG: relative values are ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "astroscale-fl"
    monkeypatch.setenv("ASTROSCALE_FL_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_git_commit_only_from_a_checkout_of_this_project(monkeypatch):
    from astroscale_fl.export import model_dir
    from astroscale_fl.source_tree import checkout_root

    assert checkout_root() == ROOT  # the tests run from this checkout
    assert model_dir.git_commit() is not None
    monkeypatch.setattr(model_dir, "checkout_root", lambda: None)  # an installed package
    assert model_dir.git_commit() is None
