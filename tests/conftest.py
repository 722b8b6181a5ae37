"""Shared fixtures: small real data from the packaged Hipparcos catalog."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: The package CLI, run by this interpreter.
CLI = [sys.executable, "-m", "astroscale_fl.cli"]


@pytest.fixture(scope="session")
def hipparcos():
    from astroscale_fl.data.sources.hipparcos import read_hipparcos

    return read_hipparcos()


@pytest.fixture(scope="session")
def absmag_frame():
    """The hipparcos_absmag task frame (30,574 stars with Plx/e_Plx >= 10)."""
    from omegaconf import OmegaConf

    from astroscale_fl.data.tasks import get_task

    return get_task("hipparcos_absmag").load(OmegaConf.create({"path": None, "min_parallax_snr": 10.0}))


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory, absmag_frame):
    """One briefly trained MLP exported once per session for the predict, serve and integrity tests:
    (model directory, in-memory model, pipeline). Read-only: a test that breaks it works on a copy."""
    return train_and_export(tmp_path_factory.mktemp("exported"), absmag_frame)


def cli_env() -> dict[str, str]:
    """Environment for CLI subprocesses: the venv's bin first, quiet Ray."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_DEDUP_LOGS", "1")
    return env


def train_and_export(directory: Path, frame, rows: int = 3000, epochs: int = 2):
    """A briefly trained MLP (hipparcos_absmag, widths [32, 16]) exported to ``directory``.

    Returns (model directory, in-memory model, pipeline).
    """
    import torch

    from astroscale_fl import config, run_config
    from astroscale_fl.data.tasks import get_task
    from astroscale_fl.export.model_dir import build_card, export_model
    from astroscale_fl.learning.models import build_model
    from astroscale_fl.learning.training import make_optimizer, shuffled_batches, train_local
    from astroscale_fl.preprocessing import Pipeline

    cfg = run_config.validate(config.compose(["model.widths=[32,16]"]))
    task = get_task("hipparcos_absmag")
    train = frame.iloc[:rows]
    pipeline = Pipeline.build(task).fit(train)
    x = torch.from_numpy(pipeline.transform_features(train))
    y = torch.from_numpy(pipeline.transform_target(train))
    model = build_model(cfg.model, x.shape[1], seed=0)
    train_local(model, make_optimizer(model.parameters(), "adam", 1e-3), x, y,
                shuffled_batches(len(y), 64, epochs, torch.Generator().manual_seed(0)))
    card = build_card(task, cfg, pipeline, {"test_r2": 0.0}, {"server_lr": 1.0})
    return export_model(directory / "model", model, pipeline, card), model, pipeline
