"""Device selection from config: ``auto`` picks CUDA when available."""

from __future__ import annotations

import torch

from astroscale_fl.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """Map ``auto`` | ``cpu`` | ``cuda`` (or ``cuda:N``) to a torch device that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name}: CUDA is not available on this machine; use device=auto or device=cpu")
        return torch.device(name)
    raise ConfigError(f"device: expected auto, cpu or cuda, got {name!r}")
