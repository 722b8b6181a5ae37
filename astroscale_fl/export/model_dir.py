"""The exported model directory: everything predict needs, nothing else.

``model/`` holds

- ``weights.pt``: the torch state dict;
- ``preprocessing.json``: the fitted pipeline (raw inputs -> features, target scaling);
- ``model_card.json``: task, target, ordered inputs with units, model config, metrics,
  strategy and its parameters, rounds, nodes, privacy, package version, git commit, time, and
  ``files``: the SHA-256 and size of ``weights.pt`` and ``preprocessing.json``.

The directory is written into a temporary sibling and renamed when complete. :func:`load_exported`
refuses, with one line naming the file and what was expected, a directory whose files do not
match the card's digests (tampered or truncated), a card without a target or with a malformed
input, model or range, weights that are not a plain tensor state dict (pickled objects are
refused) or do not fit the card's model, and a pipeline that does not load.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import pickle
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from astroscale_fl import __version__
from astroscale_fl.atomic import atomic_directory, write_json
from astroscale_fl.errors import AstroScaleError, DataError, one_line
from astroscale_fl.ingest.cache import file_sha256
from astroscale_fl.learning.models import build_model
from astroscale_fl.preprocessing import Pipeline
from astroscale_fl.simulator import ceiling_r2
from astroscale_fl.source_tree import checkout_root

WEIGHTS_FILE = "weights.pt"
PIPELINE_FILE = "preprocessing.json"
CARD_FILE = "model_card.json"
#: Files whose SHA-256 and size the card records under ``files`` and every loader verifies.
VERIFIED_FILES = (WEIGHTS_FILE, PIPELINE_FILE)


def git_commit() -> str | None:
    """The commit of the checkout the package runs from; ``None`` for an installed package (whose
    version the card records), whatever git repository its environment happens to sit in."""
    root = checkout_root()
    if root is None:
        return None
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
        write_json(tmp / CARD_FILE, {**card, "files": file_digests(tmp)})
    return Path(path)


def file_digests(directory: Path) -> dict[str, dict[str, Any]]:
    """The card's ``files`` section: ``{name: {"sha256": hex, "bytes": size}}`` of :data:`VERIFIED_FILES`."""
    return {name: {"sha256": file_sha256(directory / name), "bytes": (directory / name).stat().st_size} for name in VERIFIED_FILES}


def verify_files(directory: str | Path, card: dict[str, Any]) -> None:
    """Raise :class:`DataError` unless every :data:`VERIFIED_FILES` entry matches the card's digest."""
    directory = Path(directory)
    files = card.get("files")
    if not isinstance(files, dict):
        raise DataError(f"{directory / CARD_FILE}: no `files` section with the SHA-256 of {' and '.join(VERIFIED_FILES)}; "
                        "the directory cannot show it is intact (export it again with this version)")
    for name in VERIFIED_FILES:
        path, expected = directory / name, files.get(name)
        if not (isinstance(expected, dict) and isinstance(expected.get("sha256"), str) and type(expected.get("bytes")) is int):
            raise DataError(f"{directory / CARD_FILE}: files.{name}: expected {{\"sha256\": hex, \"bytes\": size}}, got {_short(expected)}")
        if not path.is_file():
            raise DataError(f"{path}: missing (the model card lists it)")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise DataError(f"{path}: {size} bytes, the model card records {expected['bytes']} (truncated or replaced after export)")
        actual = file_sha256(path)
        if actual != expected["sha256"]:
            raise DataError(f"{path}: SHA-256 {actual[:16]}... differs from the model card's {expected['sha256'][:16]}... "
                            "(modified after export)")


#: The metrics every model card repeats from the run's metrics.json.
CARD_METRICS = ("test_rmse", "test_r2", "r2_ceiling", "test_rows", "train_rows", "selected_round", "selected_val_score",
                "last_round_test_r2", "last_round_test_rmse", "stopped_early_at", "selection")


def add_r2_ceiling(metrics: dict[str, Any], test) -> None:
    """For simulated data (an ``expected_z`` column), put the simulator's R² ceiling on the test
    rows into ``metrics`` right after ``test_r2``: the best R² any model could reach there."""
    if "expected_z" not in getattr(test, "columns", ()) or len(test) < 2:
        return
    items = list(metrics.items())
    at = next((i + 1 for i, (k, _) in enumerate(items) if k == "test_r2"), len(items))
    metrics.clear()
    metrics.update([*items[:at], ("r2_ceiling", ceiling_r2(test)), *items[at:]])


def publish(model_dir: Path, target: Path) -> Path:
    """Copy an exported model to ``target`` (e.g. models/<task>/latest), replacing it atomically."""
    with atomic_directory(target) as tmp:
        for item in model_dir.iterdir():
            shutil.copy2(item, tmp / item.name)
    return target


def finish_run(out_dir: Path, task, cfg, pipeline: Pipeline, model: nn.Module, metrics: dict[str, Any], test,
               strategy_params: dict[str, Any] | None = None, card_extra: dict[str, Any] | None = None) -> Path:
    """The end of every training run: export ``model/`` (its card carries test stars as worked examples,
    :func:`example_positions`), write ``metrics.json`` and, with ``output.publish``, publish the export as
    ``<output.models_dir>/<task>/latest``.  Returns the model directory."""
    add_r2_ceiling(metrics, test)
    examples = [worked_example(test, task, position) for position in example_positions(test, task.target)]
    card_metrics = {k: v for k, v in metrics.items() if k in CARD_METRICS or k.startswith("test_by_")}
    card = build_card(task, cfg, pipeline, card_metrics, strategy_params or {}, extra={
        **(card_extra or {}),
        "example": examples[len(examples) // 2],
        "examples": examples,
    })
    model_dir = export_model(out_dir / "model", model, pipeline, card)
    write_json(out_dir / "metrics.json", metrics)
    if cfg.output.publish:
        publish(model_dir, Path(cfg.output.models_dir) / task.name / "latest")
    return model_dir


#: Target quantiles of the test stars a model card shows as worked examples (``examples``; the middle
#: one, nearest the median, is also ``example``): ordinary and extreme stars rather than whichever came first.
EXAMPLE_QUANTILES = (0.1, 0.3, 0.5, 0.7, 0.9)


def example_positions(test, target: str, quantiles=EXAMPLE_QUANTILES) -> list[int]:
    """Positions of the test rows whose target is nearest each quantile of the test targets (the first
    such row on ties)."""
    values = test[target].to_numpy(dtype=float)
    return [int(np.nanargmin(np.abs(values - np.nanquantile(values, q)))) for q in quantiles]


def catalog_id(value: Any) -> str:
    """An id as the catalogue writes it: ``70761``, not the ``70761.0`` a float column or row makes of it."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def worked_example(test, task, position: int) -> dict[str, Any]:
    """One test star for the card: its id, inputs in card order and true target."""
    return {"id": catalog_id(test["id"].iloc[position]), "inputs": [float(test[n].iloc[position]) for n in task.input_names],
            "target": float(test[task.target].iloc[position])}


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, type(None))) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def read_json_file(path: Path) -> Any:
    """A JSON file's content, or :class:`DataError` naming the file and what is wrong."""
    if not path.is_file():
        raise DataError(f"{path}: missing")
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: invalid JSON ({type(exc).__name__}: {one_line(str(exc))[:120]})") from None


def read_card(path: str | Path) -> dict[str, Any]:
    """The model card of an exported model directory (a JSON object; not yet checked)."""
    card_path = Path(path) / CARD_FILE
    if not card_path.is_file():
        raise DataError(f"not a model directory: {path} (no {CARD_FILE}; train one with `astroscale-fl train`)")
    card = read_json_file(card_path)
    if not isinstance(card, dict):
        raise DataError(f"{card_path}: expected a JSON object, got {type(card).__name__}")
    return card


def _number_or_null(x: Any) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x))


def check_card(card: dict[str, Any], card_path: Path) -> None:
    """Raise :class:`DataError` for the first card field a loader cannot use (target, inputs, model)."""
    target = card.get("target")
    if not (isinstance(target, dict) and isinstance(target.get("name"), str) and target["name"]):
        raise DataError(f"{card_path}: target: expected {{\"name\": ..., \"unit\": ...}}, got {_short(target)}")
    inputs = card.get("inputs")
    if not (isinstance(inputs, list) and inputs):
        raise DataError(f"{card_path}: inputs: expected a non-empty list of {{\"name\", \"unit\", \"valid_range\"}}, got {_short(inputs)}")
    for i, field in enumerate(inputs):
        name = field.get("name") if isinstance(field, dict) else None
        if not (isinstance(name, str) and name):
            raise DataError(f"{card_path}: inputs[{i}]: expected an object with a name, got {_short(field)}")
        bounds = field.get("valid_range")
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(map(_number_or_null, bounds))):
            raise DataError(f"{card_path}: inputs[{i}] ({name}): valid_range: expected [low, high] (numbers, null for an open end), got {_short(bounds)}")
        if None not in bounds and bounds[0] > bounds[1]:
            raise DataError(f"{card_path}: inputs[{i}] ({name}): valid_range: low {bounds[0]} is above high {bounds[1]}")
    names = [f["name"] for f in inputs]
    if len(set(names)) != len(names):
        raise DataError(f"{card_path}: inputs: duplicate names in {names}")
    model = card.get("model")
    if not (isinstance(model, dict) and isinstance(model.get("name"), str)):
        raise DataError(f"{card_path}: model: expected an object with a name (mlp or linear), got {_short(model)}")


def _load_pipeline(path: Path) -> Pipeline:
    state = read_json_file(path)
    try:
        return Pipeline.from_state(state)
    except AstroScaleError as exc:
        raise DataError(f"{path}: {one_line(str(exc))}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DataError(f"{path}: not a fitted preprocessing pipeline ({type(exc).__name__}: {one_line(str(exc))[:120]})") from None


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """A plain ``{name: tensor}`` state dict; pickled objects and anything else are refused."""
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols; the error line says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        reasons = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
        raise DataError(f"{path}: refused: holds objects other than tensors ({(reasons or ['unpickling refused'])[0][:160]})") from None
    except Exception as exc:  # torch reports garbage as RuntimeError, EOFError, ValueError, ...
        raise DataError(f"{path}: not a torch state dict ({type(exc).__name__}: {one_line(str(exc))[:120]})") from None
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise DataError(f"{path}: expected a state dict of named tensors, got {type(state).__name__}")
    return state


def _fit_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Check names, shapes, dtypes and finiteness against ``model`` (on the meta device), then assign."""
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise DataError(f"{path}: tensors do not fit the card's model (missing {missing[:4]}, unexpected {unexpected[:4]})")
    for name, want in expected.items():
        got = state[name]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise DataError(f"{path}: {name} is {got.dtype} {list(got.shape)}, the card's model needs {want.dtype} {list(want.shape)}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise DataError(f"{path}: {name} holds {int((~torch.isfinite(got)).sum())} non-finite values")
    model.load_state_dict(state, assign=True)


def load_exported(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Pipeline, dict[str, Any]]:
    """Rebuild (model, pipeline, card) from a model directory, verified; one-line :class:`DataError` otherwise."""
    from omegaconf import OmegaConf

    path = Path(path)
    card = read_card(path)
    check_card(card, path / CARD_FILE)
    verify_files(path, card)
    pipeline = _load_pipeline(path / PIPELINE_FILE)
    names = [f["name"] for f in card["inputs"]]
    if pipeline.inputs != names or pipeline.target.target != card["target"]["name"]:
        raise DataError(f"{path / PIPELINE_FILE}: inputs {pipeline.inputs} -> {pipeline.target.target} differ from the card's "
                        f"{names} -> {card['target']['name']}")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated until the weights are assigned
            model = build_model(OmegaConf.create(card["model"]), len(pipeline.features), seed=0)
    except Exception as exc:  # ConfigError from the model (learning.model_spec.check_mlp), or OmegaConf refusing the section
        raise DataError(f"{path / CARD_FILE}: model: {one_line(str(exc))[:160]}") from None
    _fit_weights(model, _load_state(path / WEIGHTS_FILE), path / WEIGHTS_FILE)
    return model.to(device).eval(), pipeline, card
