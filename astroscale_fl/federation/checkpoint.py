"""Per-round checkpoints of a federated run, written atomically (temp file + rename).

``<run dir>/checkpoint.npz`` holds, after every completed round:

- ``model/<name>``: the global model's arrays;
- ``strategy/<name>``: ``strategy.state_dict()`` (FedAdam moments, SCAFFOLD's ``c``, ...);
- ``best/<name>``: the best round's model so far (``federation.select=best``), when it is not the last;
- ``__meta__``: JSON (as uint8) with the round number, the history rows, the fitted
  preprocessing state, the run config, counters not in the history, and the format version.

Resuming (``federation.resume_from=<run dir or checkpoint.npz>``) restores all of it and
continues with the next round; node sampling and local training are seeded by (seed, round),
so a resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from astroscale_fl.atomic import atomic_path
from astroscale_fl.errors import ConfigError, DataError
from astroscale_fl.federation.history import RoundRecord

CHECKPOINT_FILE = "checkpoint.npz"
FORMAT_VERSION = 1
_META = "__meta__"
_MODEL = "model/"
_STRATEGY = "strategy/"
_BEST = "best/"
#: config sections that must match between a checkpoint and the run resuming it
RESUME_MUST_MATCH = ("task", "model", "strategy", "partition", "privacy", "train", "preprocess", "seed")


@dataclass
class Checkpoint:
    """Everything needed to continue a run after ``round``."""

    round: int
    model: OrderedDict[str, np.ndarray]
    strategy: dict[str, np.ndarray]
    history: list[RoundRecord]
    pipeline: dict[str, Any]
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    best_model: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)  # model selection's best so far


def checkpoint_path(location: str | Path) -> Path:
    """``location`` itself if it is a file, else ``location/checkpoint.npz``."""
    path = Path(location)
    return path if path.suffix == ".npz" else path / CHECKPOINT_FILE


def save(location: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` atomically to ``location`` (a run directory or a .npz path)."""
    path = checkpoint_path(location)
    meta = {
        "format": FORMAT_VERSION,
        "round": int(ckpt.round),
        "history": [asdict(r) for r in ckpt.history],
        "pipeline": ckpt.pipeline,
        "config": ckpt.config,
        "extra": ckpt.extra,
        "model_keys": list(ckpt.model),
        "strategy_keys": list(ckpt.strategy),
        "best_keys": list(ckpt.best_model),
    }
    payload = {_META: np.frombuffer(json.dumps(meta, allow_nan=True).encode(), dtype=np.uint8)}
    payload.update({_MODEL + k: np.asarray(v) for k, v in ckpt.model.items()})
    payload.update({_STRATEGY + k: np.asarray(v) for k, v in ckpt.strategy.items()})
    payload.update({_BEST + k: np.asarray(v) for k, v in ckpt.best_model.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **payload)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
    return path


def load(location: str | Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save`."""
    path = checkpoint_path(location)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path} (runs write {CHECKPOINT_FILE} after each round when federation.checkpoint=true)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(bytes(npz[_META]).decode())
            model = OrderedDict((k, npz[_MODEL + k]) for k in meta["model_keys"])
            strategy = {k: npz[_STRATEGY + k] for k in meta["strategy_keys"]}
            best = OrderedDict((k, npz[_BEST + k]) for k in meta.get("best_keys", []))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a readable checkpoint ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    names = {f.name for f in fields(RoundRecord)}
    history = [RoundRecord(**{k: v for k, v in row.items() if k in names}) for row in meta["history"]]
    return Checkpoint(int(meta["round"]), model, strategy, history, meta["pipeline"], meta["config"], meta.get("extra", {}), best)


def check_compatible(ckpt: Checkpoint, config: dict[str, Any], source: str | Path) -> None:
    """Refuse to resume with a config that changes what the checkpoint was trained with."""
    for key in RESUME_MUST_MATCH:
        if ckpt.config.get(key) != config.get(key):
            raise ConfigError(f"federation.resume_from={source}: {key} differs from the checkpoint's "
                              f"({ckpt.config.get(key)!r} vs {config.get(key)!r}); resume with the same config")
    num_rounds = int(config["federation"]["num_rounds"])
    if ckpt.round > num_rounds:
        raise ConfigError(f"federation.resume_from={source}: checkpoint is at round {ckpt.round}, "
                          f"beyond federation.num_rounds={num_rounds}")
