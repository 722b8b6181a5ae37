"""Shared fixtures: small real data from the packaged Hipparcos catalog."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def hipparcos():
    from astroscale_fl.sources.hipparcos import read_hipparcos

    return read_hipparcos()


@pytest.fixture(scope="session")
def absmag_frame():
    """The hipparcos_absmag task frame (30,574 stars with Plx/e_Plx >= 10)."""
    from omegaconf import OmegaConf

    from astroscale_fl.tasks import get_task

    return get_task("hipparcos_absmag").load(OmegaConf.create({"path": None, "min_parallax_snr": 10.0}))


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: the venv's bin first, quiet Ray."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_DEDUP_LOGS", "1")
    return env
