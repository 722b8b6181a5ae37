"""The exported model directory: everything predict needs, nothing else.

``model/`` holds

- ``weights.pt``: the torch state dict;
- ``preprocessing.json``: the fitted pipeline (raw inputs -> features, target scaling);
- ``model_card.json``: task, target, ordered inputs with units, model config, metrics,
  strategy and its parameters, rounds, nodes, privacy, package version, git commit, time.

The directory is written into a temporary sibling and renamed when complete.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from astroscale_fl import __version__
from astroscale_fl.atomic import atomic_directory, write_json
from astroscale_fl.errors import DataError
from astroscale_fl.preprocessing import Pipeline

WEIGHTS_FILE = "weights.pt"
PIPELINE_FILE = "preprocessing.json"
CARD_FILE = "model_card.json"


def git_commit() -> str | None:
    """The commit of the source tree the package runs from, when it is a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def build_card(task, cfg, pipeline: Pipeline, metrics: dict[str, Any], strategy_params: dict[str, Any],
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model card: what the model predicts from what, and how it was trained."""
    from omegaconf import OmegaConf

    card = {
        "task": task.name,
        "description": task.description,
        "target": {"name": task.target, "unit": task.target_unit},
        "inputs": [{"name": f.name, "unit": f.unit, "description": f.description, "valid_range": [f.low, f.high]} for f in task.inputs],
        "features": pipeline.features,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "metrics": metrics,
        "strategy": {"name": cfg.strategy.name, "params": strategy_params},
        "partition": cfg.partition.name,
        "rounds": int(cfg.federation.num_rounds),
        "num_nodes": int(cfg.federation.num_nodes),
        "privacy": {"name": cfg.privacy.name},
        "seed": int(cfg.seed),
        "package_version": __version__,
        "git_commit": git_commit(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    card.update(extra or {})
    return card


def export_model(path: str | Path, model: nn.Module, pipeline: Pipeline, card: dict[str, Any]) -> Path:
    """Write the model directory atomically; return its path."""
    with atomic_directory(path) as tmp:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save(state, tmp / WEIGHTS_FILE)
        write_json(tmp / PIPELINE_FILE, pipeline.state_dict())
        write_json(tmp / CARD_FILE, card)
    return Path(path)


#: The metrics every model card repeats from the run's metrics.json.
CARD_METRICS = ("test_rmse", "test_r2", "r2_ceiling", "test_rows", "train_rows")


def add_r2_ceiling(metrics: dict[str, Any], test) -> None:
    """For simulated data (an ``expected_z`` column), put the simulator's R² ceiling on the test
    rows into ``metrics`` right after ``test_r2``: the best R² any model could reach there."""
    if "expected_z" not in getattr(test, "columns", ()) or len(test) < 2:
        return
    from astroscale_fl.simulator import ceiling_r2

    items = list(metrics.items())
    at = next((i + 1 for i, (k, _) in enumerate(items) if k == "test_r2"), len(items))
    metrics.clear()
    metrics.update([*items[:at], ("r2_ceiling", ceiling_r2(test)), *items[at:]])


def publish(model_dir: Path, target: Path) -> Path:
    """Copy an exported model to ``target`` (e.g. models/<task>/latest), replacing it atomically."""
    import shutil

    with atomic_directory(target) as tmp:
        for item in model_dir.iterdir():
            shutil.copy2(item, tmp / item.name)
    return target


def finish_run(out_dir: Path, task, cfg, pipeline: Pipeline, model: nn.Module, metrics: dict[str, Any], test,
               strategy_params: dict[str, Any] | None = None, card_extra: dict[str, Any] | None = None) -> Path:
    """The end of every training run: export ``model/`` (its card carries the first test row as a
    worked example), write ``metrics.json`` and, with ``output.publish``, publish the export as
    ``<output.models_dir>/<task>/latest``.  Returns the model directory."""
    add_r2_ceiling(metrics, test)
    example = test.iloc[0]
    card = build_card(task, cfg, pipeline, {k: metrics[k] for k in CARD_METRICS if k in metrics}, strategy_params or {}, extra={
        **(card_extra or {}),
        "example": {"inputs": [float(example[n]) for n in task.input_names], "target": float(example[task.target]),
                    "id": str(example["id"])},
    })
    model_dir = export_model(out_dir / "model", model, pipeline, card)
    write_json(out_dir / "metrics.json", metrics)
    if cfg.output.publish:
        publish(model_dir, Path(cfg.output.models_dir) / task.name / "latest")
    return model_dir


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card of an exported model directory."""
    card_path = Path(path) / CARD_FILE
    if not card_path.is_file():
        raise DataError(f"not a model directory: {path} (no {CARD_FILE}; train one with `astroscale-fl train`)")
    try:
        return json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{card_path}: invalid JSON ({exc})") from None


def load_exported(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Pipeline, dict[str, Any]]:
    """Rebuild (model, pipeline, card) from a model directory."""
    from omegaconf import OmegaConf

    from astroscale_fl.models import build_model

    card = read_card(path)
    pipeline = Pipeline.from_state(json.loads((Path(path) / PIPELINE_FILE).read_text()))
    model = build_model(OmegaConf.create(card["model"]), len(pipeline.features), seed=0)
    state = torch.load(Path(path) / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), pipeline, card
