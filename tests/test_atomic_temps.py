"""Issue 23 (faults): a writer killed with SIGKILL mid-write leaves a temporary that the next
write of the same name removes; a live writer's temporary is never touched."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from astroscale_fl import atomic
from astroscale_fl.atomic import atomic_files, atomic_path, write_text
from astroscale_fl.errors import AstroScaleError
from astroscale_fl.preprocessing.cli import main as preprocess_main
from tests.conftest import ROOT, cli_env

KILLED_WRITER = """
import os, signal, sys
from astroscale_fl.atomic import {helper}
with {helper}(sys.argv[1]) as tmp:
    {write}
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_mid_write(target: Path, helper: str, write: str) -> None:
    script = textwrap.dedent(KILLED_WRITER).format(helper=helper, write=write)
    result = subprocess.run([sys.executable, "-c", script, str(target)], cwd=ROOT, env={**cli_env(), "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("name", ["checkpoint.npz", "metrics.json", "history.csv"])
def test_a_dead_writers_temporary_file_goes_on_the_next_write(tmp_path, name):
    final = tmp_path / name
    _killed_mid_write(final, "atomic_path", "tmp.write_bytes(b'half a file')")
    assert len(_temps(tmp_path)) == 1 and not final.exists()  # what a SIGKILL left
    with atomic_path(tmp_path / "other.json") as live:  # this process's own, in flight
        live.write_text("{}")
        write_text(final, "whole")
        assert _temps(tmp_path) == [live.name]  # the dead writer's temp is gone, the live one stays
    assert final.read_text() == "whole" and _temps(tmp_path) == []


def test_a_dead_writers_temporary_directory_goes_on_the_next_write(tmp_path):
    out = tmp_path / "enc"
    _killed_mid_write(out, "atomic_files", "(tmp / 'features.npy').write_bytes(bytes(1 << 20))")
    assert len(_temps(tmp_path)) == 1 and not out.exists()  # a failed write leaves no output folder
    with atomic_files(out) as tmp:
        (tmp / "a.npy").write_bytes(b"x")
    assert _temps(tmp_path) == [] and sorted(p.name for p in out.iterdir()) == ["a.npy"]
    (out / "mine.txt").write_text("kept")  # a file of the user's in an existing output folder stays
    _killed_mid_write(out, "atomic_files", "(tmp / 'b.npy').write_bytes(b'y')")
    with atomic_files(out) as tmp:
        (tmp / "a.npy").write_bytes(b"z")
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "mine.txt"] and (out / "a.npy").read_bytes() == b"z"


def test_preprocess_killed_mid_write_leaves_nothing_a_rerun_does_not_remove(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=40_000), "b": rng.normal(size=40_000)})
    frame["y"] = frame.a - frame.b
    frame.to_parquet(tmp_path / "stars.parquet")
    args = ["--input", str(tmp_path / "stars.parquet"), "--output", str(tmp_path / "enc"), "--no-progress",
            "task.features=[a,b]", "task.target=y", "preprocess.chunk_rows=5000"]
    # the real command, killed by SIGKILL once its encoding pass has written a few batches
    script = textwrap.dedent("""
        import os, signal, sys
        from astroscale_fl.data import tensor_files
        real = tensor_files.NpyAppender.append
        def append(self, rows):
            real(self, rows)
            if self.rows >= 20_000:
                self._wait()
                os.kill(os.getpid(), signal.SIGKILL)
        tensor_files.NpyAppender.append = append
        from astroscale_fl.preprocessing.cli import main
        main(sys.argv[1:])
    """)
    killed = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, env={**cli_env(), "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "enc").exists() and len(_temps(tmp_path)) == 1
    assert preprocess_main(args) == 0  # the rerun, in this process
    assert _temps(tmp_path) == [] and not [p for p in (tmp_path / "enc").iterdir() if "tmp" in p.name]
    assert np.load(tmp_path / "enc" / "features.npy").shape == (40_000, 2)


def test_a_temporary_of_a_live_process_or_another_host_is_kept(tmp_path):
    final = tmp_path / "metrics.json"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        mine = tmp_path / f".metrics.json.{live.pid}@{socket.gethostname()}~abc.tmp"
        elsewhere = tmp_path / ".metrics.json.1@some-other-host~abc.tmp"
        legacy = tmp_path / ".metrics.json.k2j4h5.tmp"  # an old writer's name says nothing of who wrote it
        for path in (mine, elsewhere, legacy):
            path.write_text("in flight")
        write_text(final, "{}")
        assert _temps(tmp_path) == sorted(p.name for p in (mine, elsewhere, legacy))
    finally:
        live.kill()
        live.wait()


@pytest.mark.parametrize("check", ["check_directory_target", "check_writable_folder"])
def test_a_folder_name_too_long_to_look_up_is_one_line(check, tmp_path):
    with pytest.raises(AstroScaleError, match=r"^--out .*: cannot write \(File name too long\)$"):
        getattr(atomic, check)(tmp_path / ("a" * 300) / "x", "--out")
